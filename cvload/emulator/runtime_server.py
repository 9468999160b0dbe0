"""CosyVoice's Python runtime, emulated by real servers: the gRPC service and the FastAPI app, on their own ports.

The real runtime (``runtime/python/grpc/server.py``, ``runtime/python/fastapi/server.py``, port 50000) calls
the model without ``stream=True``: each answer is one whole sentence of raw int16 PCM with no header and no
rate. This module serves the same protocols with the same stack (grpcio with
``ThreadPoolExecutor(max_workers=max_conc)`` and ``maximum_concurrent_rpcs=max_conc``, so a call past the cap
is refused with RESOURCE_EXHAUSTED; FastAPI under uvicorn, which answers 503 past ``max_conc`` here where the
real one has no cap) and times each sentence by the emulator's latency profiles: ``fixed`` sends the first
sentence exactly ``fixed_first_s`` after the request arrived and one more every ``fixed_interval_s``; the other
profiles run each sentence through the pretend LLM and the one shared vocoder, whole.

``RuntimeServer`` starts it in a child process (``python -m cvload.emulator.runtime_server``), so the server
never shares an interpreter with the process that measures it, and stops it with ``cvload.subprocesses.end``.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' parameter annotations (Form, File) as
# objects, and they are imported inside ``fastapi_app``, where the module's globals cannot see them.
import argparse
import contextlib
import io
import json
import math
import os
import random
import signal
import sys
import threading
import time
import wave
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from cvload.emulator import speech
from cvload.emulator.profiles import Profile
from cvload.emulator.server_process import ChildServer
from cvload.emulator.single_model import (
    SAMPLE_RATE,
    CancelWatch,
    ToneVoice,
    Vocoder,
    speech_seconds,
    speech_tokens,
)
from cvload.emulator.speech import sentences
from cvload.errors import ServerError
from cvload.settings.address import claimed, hostport

DEFAULT_MAX_CONC = 4  # the runtime's own default (--max_conc 4)
DEFAULT_SAMPLE_RATE = 24000  # CosyVoice2/3; 22050 emulates CosyVoice-300M
KINDS = ("sft", "zero_shot", "cross_lingual", "instruct", "instruct2")


class RequestError(Exception):
    """A request the server refuses (bad or missing field): INVALID_ARGUMENT over gRPC, 422 over HTTP."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Synthesizer:
    """The pretend model both servers call: admission (faults, crash), then one int16 sentence at a time at the
    profile's times. Thread-safe; every request runs in its own server thread."""

    def __init__(self, profile: Profile, sample_rate: int = DEFAULT_SAMPLE_RATE, trace_path: str | None = None) -> None:
        self.profile = profile
        self.sample_rate = sample_rate
        self.trace_path = trace_path  # one JSON line per watched request (see ``_trace``)
        self.trace_lock = threading.Lock()
        self.traced = 0
        self.vocoder = Vocoder(None, profile.vocoder_priority)
        self.rng = random.Random(profile.seed or None)
        self.lock = threading.Lock()
        self.active = 0
        self.arrivals = 0
        self.speech = speech.SpeechCache(profile.speech_cache or None)
        self.garble_rng = random.Random(f"garble-{profile.seed}")
        self.recent: list[list[np.ndarray]] = []  # the last requests' sentences, for garble's "swap"

    def admit(self) -> None:
        """Count the arrival; crash the server at ``crash_after``; fail ``error_rate`` of the requests."""
        with self.lock:
            self.arrivals += 1
            arrivals = self.arrivals
            fail = self.rng.random() < self.profile.error_rate
        if self.profile.crash_after and arrivals >= self.profile.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)  # the server dies mid-run, as a crashed GPU server does
        if fail:
            raise RuntimeError("emulated server error (profile error_rate)")

    def _jitter(self, seconds: float) -> float:
        sigma = self.profile.jitter
        return seconds * math.exp(self.rng.gauss(0.0, sigma)) if sigma and seconds > 0 else seconds

    def audio(self, sentence: str, voice: ToneVoice) -> bytes:
        n = max(1, round(speech_seconds(sentence) * self.sample_rate))
        return pcm16(voice.render(n))

    def spoken(self, parts: list[str], others: int) -> list[np.ndarray] | None:
        """Each sentence's speech at the server's rate, garbled when more than ``garble_above`` requests are in
        flight (``others`` besides this one; the share (n - N) / n, by the seed); None while a sentence is not
        cached yet (the request gets the tone; its speech is synthesised off the response path)."""
        found = [self.speech.lookup(s, max(1, round(speech_seconds(s) * SAMPLE_RATE))) for s in parts]
        clean = [a for a in found if a is not None]
        if len(clean) < len(found):
            return None
        audio = list(clean)
        above, n = self.profile.garble_above, others + 1
        with self.lock:
            if above is not None and n > above and self.garble_rng.random() < (n - above) / n:
                mode, rng = self.garble_rng.choice(speech.GARBLE_MODES), random.Random(self.garble_rng.random())
                swap = next((r for r in reversed(self.recent) if r is not clean), None)
                mode = "noise" if mode == "swap" and swap is None else mode
                audio = [speech.garble(a, mode, rng, swap[i % len(swap)] if swap else None)
                         for i, a in enumerate(clean)]
            self.recent = [*self.recent[-7:], clean]
        if self.sample_rate != SAMPLE_RATE:
            audio = [_fit(speech.resample(a, SAMPLE_RATE, self.sample_rate),
                          max(1, round(speech_seconds(s) * self.sample_rate))) for a, s in zip(audio, parts)]
        return audio

    def leading(self) -> np.ndarray:
        """``leading_silence_s`` of quiet (never digital zero) before the first sentence."""
        quiet = np.full(round(self.profile.leading_silence_s * self.sample_rate), speech.FLOOR, np.float32)
        quiet[1::2] = -speech.FLOOR
        return quiet

    def watch(self, gone: Callable[[], bool]) -> CancelWatch:
        """The client's cancellation (``gone()`` answers True once it went away), honoured unless the profile
        says ``ignore_cancel``."""
        watch = CancelWatch(gone, self.profile.ignore_cancel)
        watch.sample_rate = self.sample_rate
        return watch

    def _trace(self, arrival: float, sends: list[float], watch: CancelWatch | None) -> None:
        """The Triton emulator's trace fields (``id`` its own: the runtime's requests carry none), with the
        cancellation's (``CancelWatch.trace``), for the request that just ended."""
        if not self.trace_path or watch is None:
            return
        watch.cancelled()  # one more look: a response closed on disconnect ends here without having polled
        with self.lock:
            self.traced += 1
            number = self.traced
        line = json.dumps({**watch.trace(arrival), "model": "runtime", "id": f"runtime-{number}", "pid": os.getpid(),
                           "arrival": arrival, "sends": sends, "vocoder": [], "error": None})
        with self.trace_lock, open(self.trace_path, "a") as fh:
            fh.write(line + "\n")

    def run(self, text: str, arrival: float, watch: CancelWatch | None = None) -> Iterator[bytes]:
        """The request's sentences as raw int16 PCM, each returned at its time (the caller sends it at once);
        with ``watch``, it ends early once the client went away (unless the profile ignores that)."""
        p = self.profile
        parts = sentences(text)
        voice = ToneVoice(zlib.crc32(text.encode()))  # the same text always sounds the same
        with self.lock:
            self.active += 1
            others = self.active - 1
            stall_at = self.rng.randrange(len(parts)) if self.rng.random() < p.stall_prob else -1
        said = self.spoken(parts, others) if p.voice == "speech" else None
        sends: list[float] = []
        try:
            shift = 0.0
            clock = arrival + self._jitter(p.llm_prefill_s + p.llm_prefill_per_active_s * others)
            for i, sentence in enumerate(parts):
                if watch is not None and watch.stop():
                    return
                if i == stall_at:
                    if _wait(time.monotonic() + p.stall_s, watch):
                        return
                    shift += p.stall_s
                    clock += p.stall_s
                # before the wait: making audio must not delay the send
                pcm = self.audio(sentence, voice) if said is None else pcm16(said[i])
                if i == 0 and p.leading_silence_s > 0:
                    pcm = pcm16(self.leading()) + pcm
                if p.fixed_first_s is not None:
                    if _wait(arrival + shift + p.fixed_first_s + i * (p.fixed_interval_s or 0.0), watch):
                        return
                else:
                    tokens = speech_tokens(sentence)
                    clock = max(clock, time.monotonic()) + self._token_time(tokens)
                    if _wait(clock, watch):
                        return
                    cost = self._jitter(p.vocoder_base_s + p.vocoder_per_token_s * tokens)
                    if self.vocoder.run(cost, arrival, watch) is None and watch is not None and watch.stop():
                        return
                    clock = time.monotonic()
                sends.append(time.monotonic() - arrival)
                if watch is not None:
                    watch.made(len(pcm) // 2)
                yield pcm
        finally:
            with self.lock:
                self.active -= 1
            self._trace(arrival, sends, watch)

    def _token_time(self, tokens: int) -> float:
        rate = self.profile.llm_tokens_per_s
        if rate <= 0:
            return 0.0
        slowdown = 1.0 + self.profile.llm_batch_slowdown * max(0, self.active - 1)
        return self._jitter(tokens * slowdown / rate)


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    """``audio`` cut or padded (quietly) to exactly ``n`` samples (resampling may be one off)."""
    if audio.size >= n:
        return audio[:n]
    return np.concatenate([audio, np.full(n - audio.size, speech.FLOOR, np.float32)])


def _wait(deadline: float, watch: CancelWatch | None) -> bool:
    """Sleep until ``deadline``; True when ``watch`` says the client went away first (and that counts)."""
    if watch is None:
        _sleep_until(deadline)
        return False
    return watch.sleep_until(deadline)


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _drain(pieces: Iterator[bytes]) -> None:
    """Make the rest of an abandoned response (``ignore_cancel``), once its worker thread let go of it."""
    while True:
        try:
            next(pieces)
        except StopIteration:
            return
        except ValueError:  # still executing in the thread the response was waiting on
            time.sleep(0.005)


def split_bytes(pieces: Iterator[bytes], size: int) -> Generator[bytes, None, None]:
    """Each piece cut into ``size``-byte parts (0: whole): an odd size makes writes that split samples."""
    for piece in pieces:
        if size <= 0:
            yield piece
            continue
        for start in range(0, len(piece), size):
            yield piece[start:start + size]


def check_text(name: str, value: str) -> str:
    if not value.strip():
        raise RequestError(name, f"{name} is empty")
    return value


def check_prompt_pcm(name: str, pcm: bytes) -> None:
    if not pcm:
        raise RequestError(name, f"{name} is empty: this request kind needs the prompt's audio")
    if len(pcm) % 2:
        raise RequestError(name, f"{name} has {len(pcm)} bytes: not whole int16 samples")


def read_prompt_wav(data: bytes) -> None:
    """Check an uploaded prompt the way the real server's WAV loader would fail on it."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            if w.getnframes() == 0:
                raise RequestError("prompt_wav", "prompt_wav holds no audio")
    except (wave.Error, EOFError) as exc:
        raise RequestError("prompt_wav", f"prompt_wav is not a readable WAV file: {exc}") from None


# ---- gRPC --------------------------------------------------------------------------------------------------
def grpc_server(synth: Synthesizer, host: str, port: int, max_conc: int) -> Any:
    """The runtime's gRPC server on ``host:port``, started."""
    from concurrent import futures

    import grpc

    from cvload.cosyvoice_runtime import cosyvoice_pb2 as pb
    from cvload.cosyvoice_runtime import cosyvoice_pb2_grpc as pb_grpc

    class Servicer(pb_grpc.CosyVoiceServicer):
        def Inference(self, request: Any, context: Any) -> Iterator[Any]:  # noqa: N802 - the proto's name
            arrival = time.monotonic()
            kind = request.WhichOneof("RequestPayload")
            if kind is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty Request: set one of its request messages")
            payload = getattr(request, kind)
            try:
                text = check_text("tts_text", payload.tts_text)
                if kind in ("zero_shot_request", "cross_lingual_request"):
                    check_prompt_pcm("prompt_audio", payload.prompt_audio)
                if kind in ("sft_request", "instruct_request"):
                    check_text("spk_id", payload.spk_id)
            except RequestError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            synth.admit()  # raises for error_rate: grpcio answers UNKNOWN, as for a failing model
            for pcm in synth.run(text, arrival, synth.watch(lambda: not context.is_active())):
                yield pb.Response(tts_audio=pcm)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_conc), maximum_concurrent_rpcs=max_conc,
                         options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    pb_grpc.add_CosyVoiceServicer_to_server(Servicer(), server)
    if server.add_insecure_port(hostport(host, port)) == 0:
        raise ServerError(f"cannot listen for gRPC on {hostport(host, port)}")
    server.start()
    return server


# ---- FastAPI -----------------------------------------------------------------------------------------------
def fastapi_app(synth: Synthesizer, max_conc: int, split: int = 0) -> Any:
    """The runtime's FastAPI app: ``/inference_<kind>`` for GET and POST with form fields, raw int16 out."""
    import anyio
    from fastapi import FastAPI, File, Form, UploadFile
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="CosyVoice runtime (cvload emulator)")
    gate = threading.Semaphore(max_conc)

    def refused(exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": [{"type": "value_error", "loc": ["body", exc.field], "msg": str(exc)}]},
                            status_code=422)

    def respond(text: str, prompt: bytes | None = None) -> Any:
        arrival = time.monotonic()
        try:
            check_text("tts_text", text)
            if prompt is not None:
                read_prompt_wav(prompt)
        except RequestError as exc:
            return refused(exc)
        if not gate.acquire(blocking=False):
            return JSONResponse({"detail": f"server at its concurrency cap (max_conc {max_conc})"}, status_code=503)
        try:
            synth.admit()
        except RuntimeError as exc:
            gate.release()
            return JSONResponse({"detail": str(exc)}, status_code=500)
        gone = threading.Event()  # the client went away (the response was cancelled): the model stops
        sentences_out = split_bytes(synth.run(text, arrival, synth.watch(gone.is_set)), split)

        async def body() -> Any:
            # Sentences are made in a worker thread (the model's timing sleeps); the gate and the model's count
            # are released however the response ends, a client that went away included. A disconnect cancels
            # the wait for the thread at once (abandon_on_cancel), and the model sees it through ``gone``.
            done = object()
            try:
                while True:
                    pcm = await anyio.to_thread.run_sync(next, sentences_out, done, abandon_on_cancel=True)
                    if pcm is done:
                        break
                    yield pcm
            finally:
                gone.set()
                if synth.profile.ignore_cancel:  # the bug emulated: the rest is made for nobody
                    threading.Thread(target=_drain, args=(sentences_out,), daemon=True).start()
                else:
                    with contextlib.suppress(ValueError):  # still running in its thread: it ends itself (``gone``)
                        sentences_out.close()
                gate.release()

        return StreamingResponse(body())  # no media type: the real server sends none

    def add(kind: str, handler: Callable[..., Any]) -> None:
        for method in ("GET", "POST"):  # the real server has both: its own client sends GET with a form body
            app.add_api_route(f"/inference_{kind}", handler, methods=[method],
                              operation_id=f"inference_{kind}_{method.lower()}")

    Text = Annotated[str, Form()]
    Wav = Annotated[UploadFile, File()]

    async def inference_sft(tts_text: Text, spk_id: Text) -> Any:
        return respond(tts_text)

    async def inference_zero_shot(tts_text: Text, prompt_text: Text, prompt_wav: Wav) -> Any:
        return respond(tts_text, await prompt_wav.read())

    async def inference_cross_lingual(tts_text: Text, prompt_wav: Wav) -> Any:
        return respond(tts_text, await prompt_wav.read())

    async def inference_instruct(tts_text: Text, spk_id: Text, instruct_text: Text) -> Any:
        return respond(tts_text)

    async def inference_instruct2(tts_text: Text, instruct_text: Text, prompt_wav: Wav) -> Any:
        return respond(tts_text, await prompt_wav.read())

    for kind, handler in (("sft", inference_sft), ("zero_shot", inference_zero_shot),
                          ("cross_lingual", inference_cross_lingual), ("instruct", inference_instruct),
                          ("instruct2", inference_instruct2)):
        add(kind, handler)
    return app


def serve(args: argparse.Namespace) -> int:
    """The child process: the gRPC server in its threads, uvicorn in the main thread until SIGTERM/SIGINT."""
    import uvicorn

    profile = Profile(**json.loads(args.profile_json))
    synth = Synthesizer(profile, args.sample_rate, args.trace)
    grpc = grpc_server(synth, args.host, args.grpc_port, args.max_conc)
    config = uvicorn.Config(fastapi_app(synth, args.max_conc, args.split_bytes), host=args.host,
                            port=args.http_port, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=1)
    try:
        uvicorn.Server(config).run()  # handles SIGTERM and SIGINT: stops accepting, ends open responses
    finally:
        grpc.stop(grace=1.0).wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvload.emulator.runtime_server",
                                     description="CosyVoice's Python runtime, emulated (gRPC and FastAPI)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--max-conc", type=int, default=DEFAULT_MAX_CONC)
    parser.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE)
    parser.add_argument("--trace", default=None, help="append one JSON line per request (the model's trace)")
    parser.add_argument("--split-bytes", type=int, default=0, help="HTTP: send each sentence in parts of N bytes (odd N splits samples between HTTP chunks)")
    parser.add_argument("--profile-json", default=Profile(name="fixed", fixed_first_s=0.2,
                                                          fixed_interval_s=0.1).to_json())
    return serve(parser.parse_args(argv))


# ---- the parent's handle -----------------------------------------------------------------------------------
@dataclass
class RuntimeServer(ChildServer):
    """The emulated runtime in a child process, on free (or given) loopback ports; a context manager.

    ``start()`` returns once both ports accept connections (or fails quoting the log); ``stop()`` sends SIGTERM,
    then SIGKILL to its group after ``stop_timeout``. The log goes to ``workdir`` (a temporary folder if none,
    removed after a clean stop).
    """

    profile: Profile
    host: str = "127.0.0.1"
    grpc_port: int | None = None
    http_port: int | None = None
    max_conc: int = DEFAULT_MAX_CONC
    sample_rate: int = DEFAULT_SAMPLE_RATE
    split_bytes: int = 0
    texts: tuple[str, ...] = ()  # spoken (sentence by sentence) into the cache before the start, with the built-in set

    @property
    def grpc_url(self) -> str:
        return hostport(self.host, claimed(self.grpc_port))

    @property
    def http_url(self) -> str:
        return hostport(self.host, claimed(self.http_port))

    metrics_url = None  # the runtime has no metrics endpoint

    @property
    def trace_path(self) -> Path:
        """One JSON line per request as it ends (the Triton emulator's fields, with the cancellation's)."""
        assert self.workdir is not None
        return self.workdir / "runtime.trace.jsonl"

    def endpoints(self) -> dict[str, str]:
        return {"grpc": self.grpc_url, "http": f"http://{self.http_url}", "log": str(self.log_path)}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "cvload.emulator.runtime_server", "--host", self.host,
                "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
                "--max-conc", str(self.max_conc), "--sample-rate", str(self.sample_rate),
                "--split-bytes", str(self.split_bytes), "--profile-json", self.profile.to_json(),
                "--trace", str(self.trace_path)]

    def start(self) -> "RuntimeServer":
        from cvload.emulator.voices import warm_speech
        from cvload.triton.launcher import accepts, claim_ports

        if self.max_conc < 1:
            raise ServerError(f"--max-conc must be at least 1, got {self.max_conc}")
        warm_speech([self.profile], self.texts, per_sentence=True)  # never at the cost of emulated time

        def listening() -> bool:
            return accepts(self.host, claimed(self.grpc_port), 0.5) and accepts(self.host, claimed(self.http_port), 0.5)

        with claim_ports(self, ("grpc_port", "http_port")):
            self._prepare_workdir("cvload-runtime-", "runtime_server.log")
            self._launch(self.command(), self.child_env(), listening, "the emulated CosyVoice runtime")
        return self

if __name__ == "__main__":
    sys.exit(main())
