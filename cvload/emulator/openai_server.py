"""An OpenAI-style speech server (``POST /v1/audio/speech``) with the CosyVoice emulator's timing, for real.

It is a real HTTP server (aiohttp.web) in its own process, never in the measuring process's event loop. The
timing, voice and faults are the Triton emulator model's own code (``cvload.emulator.single_model``): the same
profiles (``fixed`` sends the first chunk exactly ``fixed_first_s`` after arrival, then one every
``fixed_interval_s``; ``l20``; ``faulty``), run on one thread per request as the model runs them.

``response_format`` ``pcm``: raw int16 mono at 24 kHz, one HTTP chunk (chunked transfer) per emulated chunk,
written when the profile says it is ready. ``wav``: one whole RIFF file with a length, sent when the last
chunk is ready. ``max_conc`` > 0 refuses requests over that many in flight with HTTP 429, as a server at its
concurrency cap does; a token (environment variable ``CVLOAD_EMULATOR_API_KEY`` of the server process) makes
every request need ``Authorization: Bearer <token>``. Errors are OpenAI's ``{"error": {"message", "type",
"param", "code"}}``. ``GET /health`` answers 200 once the server listens.

``OpenAIServer`` starts and stops it as a child process (``python -m cvload.emulator.openai_server``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvload.emulator.profiles import PRESETS, Profile
from cvload.emulator.server_process import ChildServer
from cvload.emulator.single_model import SAMPLE_RATE, CancelWatch, SharedState, TritonPythonModel, Vocoder
from cvload.settings.address import claimed, hostport

TOKEN_ENV = "CVLOAD_EMULATOR_API_KEY"
ROUTES = ("/v1/audio/speech", "/audio/speech")
FORMATS = ("pcm", "wav")


class Synthesizer(TritonPythonModel):
    """The Triton emulator model's scheduling (profile timing, the one shared vocoder, stalls, error rate,
    trace) without Triton: the state ``initialize`` would set up from a model config, set from a profile."""

    def __init__(self, name: str, profile: Profile, trace_path: str | None = None) -> None:
        self.model_name = name
        self.profile = json.loads(profile.to_json())
        self.crash_after = int(self.profile.pop("crash_after", 0) or 0)  # this server dies, not its parent
        self.decoupled = True
        self.trace_path = trace_path
        self.vocoder = Vocoder(None, self.profile.get("vocoder_priority", "fifo"))
        self.state = SharedState(None)
        self.rng = random.Random(self.profile.get("seed", 0) or None)
        self.lock = threading.Lock()
        self.active = 0
        self.trace_lock = threading.Lock()
        self._start_speech()

    def run(self, text: str, request_id: str, arrival: float, emit: Any,
            watch: CancelWatch | None = None) -> str | None:
        """Synthesize on this thread, ``emit(int16 bytes)`` at each chunk's time; the error message or None.
        ``watch``: the client's disconnect (generation stops unless the profile ignores it)."""
        error, _ = self._admit_safely(request_id)
        sends: list[float] = []
        spans: list[Any] = []
        if error is None:
            try:
                sends, spans = self._synthesize({"target": text, "watch": watch}, request_id, arrival,
                                                lambda audio: emit(pcm16(audio)))
            except Exception as exc:  # noqa: BLE001 - a bug in the emulator must not hang the client
                error = f"emulator failure: {exc!r}"
            finally:
                self._release(request_id)
        self._trace(request_id, arrival, sends, spans, error, watch)
        return error


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_header(data_bytes: int, rate: int = SAMPLE_RATE) -> bytes:
    """A 44-byte RIFF header for mono 16-bit PCM."""
    return (b"RIFF" + (36 + data_bytes).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
            + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
            + (rate * 2).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
            + b"data" + data_bytes.to_bytes(4, "little"))


def _error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> Any:
    from aiohttp import web

    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}},
                             status=status)


class SpeechApp:
    """The routes and their state: one model name, the synthesizer, the in-flight count and the cap."""

    def __init__(self, model: str, profile: Profile, *, max_conc: int = 0, token: str | None = None,
                 trace_path: str | None = None, odd_splits: bool = False) -> None:
        self.model = model
        self.odd_splits = odd_splits
        self.synth = Synthesizer(model, profile, trace_path)
        self.max_conc = max_conc
        self.token = token
        self.in_flight = 0
        self.arrivals = 0
        self.ids = itertools.count()

    def build(self) -> Any:
        from aiohttp import web

        app = web.Application()
        for route in ROUTES:
            app.router.add_post(route, self.speech)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        return app

    async def health(self, _request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"status": "ok"})

    async def models(self, _request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def _check(self, request: Any, body: Any) -> Any:
        """The error response for a request that is refused before synthesis, else None."""
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            given = "Authorization" in request.headers
            return _error(401, "incorrect API key provided" if given else "missing bearer token (Authorization "
                          "header)", "invalid_request_error", code="invalid_api_key")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "invalid_request_error")
        if body.get("model") != self.model:
            return _error(400, f"model {body.get('model')!r} is not served here (models: {self.model})",
                          "invalid_request_error", "model", "model_not_found")
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "input must be a non-empty string", "invalid_request_error", "input")
        if body.get("response_format", "mp3") not in FORMATS:
            return _error(400, f"response_format {body.get('response_format')!r} is not supported here (pcm, wav)",
                          "invalid_request_error", "response_format")
        voice = body.get("voice")
        if voice is not None and not isinstance(voice, str):
            return _error(400, "voice must be a string", "invalid_request_error", "voice")
        return None

    async def speech(self, request: Any) -> Any:
        from aiohttp import web

        arrival = time.monotonic()
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return _error(400, f"the body is not JSON: {exc}", "invalid_request_error")
        refusal = self._check(request, body)
        if refusal is not None:
            return refusal
        if self.max_conc and self.in_flight >= self.max_conc:
            return _error(429, f"server at its concurrency cap ({self.max_conc} requests in flight)",
                          "rate_limit_error", code="max_conc")
        self.arrivals += 1
        if self.synth.crash_after and self.arrivals >= self.synth.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)  # the server dies mid-run, as a crashed GPU server does
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        outcome: list[str | None] = []

        watch = self._disconnect_watch(request)

        def work() -> None:
            error: str | None = "emulator failure"
            try:
                error = self.synth.run(body["input"], f"openai-{next(self.ids)}", arrival,
                                       lambda data: loop.call_soon_threadsafe(queue.put_nowait, data), watch)
            finally:
                outcome.append(error)
                loop.call_soon_threadsafe(queue.put_nowait, None)

        self.in_flight += 1
        try:
            threading.Thread(target=work, daemon=True).start()
            if body.get("response_format", "mp3") == "wav":
                parts = []
                while (part := await queue.get()) is not None:
                    parts.append(part)
                if outcome[0] is not None:
                    return _error(500, outcome[0], "server_error")
                audio = b"".join(parts)
                return web.Response(body=wav_header(len(audio)) + audio, content_type="audio/wav")
            first = await queue.get()
            if first is None:  # failed (or no audio) before the first chunk: a proper error status
                return _error(500, outcome[0] or "no audio", "server_error")
            response = web.StreamResponse(headers={"Content-Type": "audio/pcm",
                                                   "X-Sample-Rate": str(SAMPLE_RATE)})
            response.enable_chunked_encoding()
            await response.prepare(request)
            data: bytes | None = first
            while data is not None:
                try:
                    if self.odd_splits:  # two HTTP chunks, cut inside a sample, as network chunks come
                        await response.write(data[:len(data) // 2 | 1])
                        data = data[len(data) // 2 | 1:]
                    await response.write(data)
                except ConnectionError:  # the client went away: the synthesis thread sees it through its watch
                    return response
                data = await queue.get()
            if outcome[0] is not None:  # failed mid-stream: the status is sent, so break the body off
                request.transport.close()
                return response
            await response.write_eof()
            return response
        finally:
            self.in_flight -= 1


    def _disconnect_watch(self, request: Any) -> CancelWatch:
        """The client's disconnect as a web server sees it: the request's connection closed (polled from the
        synthesis thread between stages; ``ignore_cancel`` generates to the end anyway)."""

        def gone() -> bool:
            transport = request.transport
            return transport is None or transport.is_closing()

        return CancelWatch(gone, bool(self.synth.profile.get("ignore_cancel", False)))


def serve(host: str, port: int, app: SpeechApp) -> None:
    """Serve until SIGTERM/SIGINT."""
    from aiohttp import web

    async def main() -> None:
        runner = web.AppRunner(app.build(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        print(f"cvload openai emulator listening on http://{hostport(host, port)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvload.emulator.openai_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="cosyvoice2")
    parser.add_argument("--profile-json", default=None, help="a Profile as JSON (default: fixed)")
    parser.add_argument("--max-conc", type=int, default=0)
    parser.add_argument("--trace", default=None, help="append one JSON line per request (the model's trace)")
    parser.add_argument("--odd-splits", action="store_true", help="pcm: send each chunk as two HTTP chunks "
                        "cut inside a sample (clients must carry the odd byte over)")
    args = parser.parse_args(argv)
    profile = Profile(**json.loads(args.profile_json)) if args.profile_json else PRESETS["fixed"]
    serve(args.host, args.port, SpeechApp(args.model, profile, max_conc=args.max_conc,
                                          token=os.environ.get(TOKEN_ENV) or None, trace_path=args.trace,
                                          odd_splits=args.odd_splits))
    return 0


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class OpenAIServer(ChildServer):
    """The server as a child process on a free (or given) port; a context manager, like ``TritonServer``.

    ``url`` is its base (``http://127.0.0.1:PORT``); the speech route is ``url + /v1/audio/speech``. The trace
    (one JSON line per request, the Triton emulator's fields) goes to ``workdir/<model>.trace.jsonl``.
    """

    profile: Profile = PRESETS["fixed"]
    model: str = "cosyvoice2"
    host: str = "127.0.0.1"
    port: int | None = None
    max_conc: int = 0
    token: str | None = None
    odd_splits: bool = False  # pcm: each chunk as two HTTP chunks cut inside a sample
    texts: tuple[str, ...] = ()  # spoken into the speech cache before the start (the built-in set always is)

    @property
    def url(self) -> str:
        return f"http://{hostport(self.host, claimed(self.port))}"

    @property
    def trace_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / f"{self.model}.trace.jsonl"

    def endpoints(self) -> dict[str, str]:
        return {"speech": self.url + ROUTES[0], "log": str(self.log_path)}

    def start(self) -> OpenAIServer:
        from cvload.emulator.voices import warm_speech
        from cvload.triton.launcher import claim_ports

        warm_speech([self.profile], self.texts)  # before the server: synthesis never costs emulated time
        with claim_ports(self, ("port",)):
            self._prepare_workdir("cvload-openai-", "openai_server.log")
            env = self.child_env()
            env.pop(TOKEN_ENV, None)
            if self.token:
                env[TOKEN_ENV] = self.token  # not on the command line, where ps shows it
            cmd = [sys.executable, "-m", "cvload.emulator.openai_server", "--host", self.host, "--port",
                   str(self.port), "--model", self.model, "--profile-json", self.profile.to_json(),
                   "--max-conc", str(self.max_conc), "--trace", str(self.trace_path)]
            if self.odd_splits:
                cmd.append("--odd-splits")
            self._launch(cmd, env, lambda: _health(self.url), "the OpenAI-style emulator")
        return self

if __name__ == "__main__":
    sys.exit(main())
