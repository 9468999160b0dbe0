"""CosyVoice2 front-model emulator for Triton's Python backend.

Speaks the tensors of the real `cosyvoice2` model (reference_wav, reference_wav_len, reference_text, target_text
-> waveform at 24 kHz) in decoupled (streaming) or offline mode, with the timing of a latency profile passed as
JSON in the model config's ``profile`` parameter. Self-contained: it runs inside the Python-backend stub, where
only numpy and triton_python_backend_utils can be imported.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import zlib

import numpy as np
import triton_python_backend_utils as pb_utils

SAMPLE_RATE = 24000
TOKENS_PER_S = 25
SAMPLES_PER_TOKEN = SAMPLE_RATE // TOKENS_PER_S
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9\u00c0-\u024f']+")
_PAUSE = re.compile(r"[,.;:!?\u3001\u3002\uff0c\uff1b\uff1a\uff01\uff1f]")


def speech_seconds(text: str) -> float:
    """Duration real speech of ``text`` would have: ~4.5 CJK characters or ~2.7 words per second."""
    cjk = len(_CJK.findall(text))
    words = len(_WORD.findall(_CJK.sub(" ", text)))
    pauses = len(_PAUSE.findall(text))
    return 0.25 + cjk * 0.22 + words * 0.37 + pauses * 0.18


class ToneVoice:
    """A speech-like, never-silent signal: a gliding harmonic voice with a syllable-rate envelope."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.f0 = float(rng.uniform(110, 210))
        self.rate = float(rng.uniform(3.5, 5.0))  # syllables per second
        self.phase = 0.0
        self.pos = 0
        self.rng = rng

    def render(self, n: int) -> np.ndarray:
        t = (self.pos + np.arange(n)) / SAMPLE_RATE
        f0 = self.f0 * (1.0 + 0.12 * np.sin(2 * np.pi * 0.7 * t) + 0.05 * np.sin(2 * np.pi * self.rate * t))
        phase = self.phase + 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        self.phase = float(phase[-1]) if n else self.phase
        self.pos += n
        voice = np.zeros(n)
        for k, amp in ((1, 1.0), (2, 0.6), (3, 0.45), (4, 0.3), (5, 0.2), (7, 0.1)):
            voice += amp * np.sin(k * phase)
        envelope = 0.35 + 0.65 * np.abs(np.sin(np.pi * self.rate * t))
        noise = self.rng.normal(0.0, 0.02, n)
        return (0.12 * voice * envelope + noise).astype(np.float32)


class RecordedVoice:
    """Real speech from espeak-ng, resampled to 24 kHz and handed out in chunks."""

    def __init__(self, text: str) -> None:
        out = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True, timeout=30).stdout
        # espeak-ng writes a 22050 Hz 16-bit mono WAV; skip the 44-byte header.
        pcm = np.frombuffer(out[44 : len(out) - (len(out) - 44) % 2], dtype="<i2").astype(np.float32) / 32768.0
        n_out = int(len(pcm) * SAMPLE_RATE / 22050)
        self.audio = np.interp(np.linspace(0, len(pcm) - 1, n_out), np.arange(len(pcm)), pcm).astype(np.float32)
        self.pos = 0

    def render(self, n: int) -> np.ndarray:
        chunk = self.audio[self.pos : self.pos + n]
        self.pos += n
        if len(chunk) < n:  # pad with a quiet tail rather than silence
            chunk = np.concatenate([chunk, np.full(n - len(chunk), 1e-3, np.float32)])
        return chunk


class Vocoder:
    """The one shared token2wav worker: chunk jobs from all requests are served first come, first served."""

    def __init__(self, lock_path: str | None) -> None:
        self.jobs: queue.Queue[tuple[float, threading.Event]] = queue.Queue()
        self.lock_path = lock_path
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            cost, done = self.jobs.get()
            if self.lock_path:  # offline instances live in separate processes: share one worker by file lock
                with open(self.lock_path, "a") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                    _sleep(cost)
                    fcntl.flock(fh, fcntl.LOCK_UN)
            else:
                _sleep(cost)
            done.set()

    def run(self, cost: float) -> None:
        if cost <= 0:
            return
        done = threading.Event()
        self.jobs.put((cost, done))
        done.wait()


def _sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class RequestError(Exception):
    """A bad request, answered with an error response; the server stays up."""


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.profile = json.loads(params.get("profile", "{}"))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.trace_path = params.get("trace_path") or None
        lock = params.get("vocoder_lock") or None
        self.vocoder = Vocoder(None if self.decoupled else lock)
        self.rng = random.Random(self.profile.get("seed", 0) or None)
        self.lock = threading.Lock()
        self.active = 0
        self.arrivals = 0
        self.in_flight: set[str] = set()
        self.trace_lock = threading.Lock()

    # ---- request parsing -------------------------------------------------------------------------------------
    def _text(self, request: pb_utils.InferenceRequest, name: str) -> str | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        array = tensor.as_numpy()
        if array.size != 1:
            raise RequestError(f"{name} must hold exactly one string (shape [1, 1]), got shape {list(array.shape)}")
        value = array.reshape(-1)[0]
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)

    def _parse(self, request: pb_utils.InferenceRequest) -> dict:
        target = self._text(request, "target_text")
        if target is None:
            raise RequestError("missing required input 'target_text'")
        if not target.strip():
            raise RequestError("target_text is empty: nothing to synthesize")
        ref_text = self._text(request, "reference_text")
        wav = pb_utils.get_input_tensor_by_name(request, "reference_wav")
        ref_seconds = 0.0
        if wav is not None:
            samples = wav.as_numpy().reshape(-1)
            n = samples.size
            wav_len = pb_utils.get_input_tensor_by_name(request, "reference_wav_len")
            if wav_len is not None:
                n = int(wav_len.as_numpy().reshape(-1)[0])
                if not 0 < n <= samples.size:
                    raise RequestError(
                        f"reference_wav_len {n} is outside 1..{samples.size} (the samples sent in reference_wav)"
                    )
            if not np.isfinite(samples[:n]).all():
                raise RequestError("reference_wav holds NaN or Inf samples")
            if ref_text is None:
                raise RequestError("reference_wav given without reference_text (zero-shot needs both)")
            ref_seconds = n / 16000.0
        elif ref_text is not None:
            raise RequestError("reference_text given without reference_wav (zero-shot needs both)")
        return {"target": target, "ref_seconds": ref_seconds}

    # ---- timing --------------------------------------------------------------------------------------------
    def _jitter(self, seconds: float) -> float:
        sigma = self.profile.get("jitter", 0.0)
        return seconds * math.exp(self.rng.gauss(0.0, sigma)) if sigma and seconds > 0 else seconds

    def _token_time(self, tokens: int) -> float:
        rate = self.profile.get("llm_tokens_per_s", 0.0)
        if rate <= 0:
            return 0.0
        slowdown = 1.0 + self.profile.get("llm_batch_slowdown", 0.0) * max(0, self.active - 1)
        return self._jitter(tokens * slowdown / rate)

    def _vocoder_cost(self, tokens: int) -> float:
        p = self.profile
        return self._jitter(p.get("vocoder_base_s", 0.0) + p.get("vocoder_per_token_s", 0.0) * tokens)

    def _chunks(self, total_tokens: int) -> list[int]:
        p = self.profile
        hop, chunks, left = float(p.get("first_hop_tokens", 25)), [], total_tokens
        while left > 0:
            n = min(left, max(1, int(hop)))
            chunks.append(n)
            left -= n
            hop = min(hop * p.get("hop_growth", 2.0), p.get("max_hop_tokens", 400))
        return chunks

    # ---- serving ---------------------------------------------------------------------------------------------
    def _voice(self, text: str, request_id: str):
        if self.profile.get("voice") == "espeak" and shutil.which("espeak-ng"):
            return RecordedVoice(text)
        return ToneVoice(zlib.crc32(text.encode()) ^ zlib.crc32(request_id.encode()))

    def _admit(self, request_id: str) -> str | None:
        """Count the arrival and apply the crash/duplicate rules; returns an error message or None."""
        with self.lock:
            self.arrivals += 1
            crash_after = self.profile.get("crash_after", 0)
            if crash_after and self.arrivals >= crash_after:
                os.kill(os.getppid(), signal.SIGKILL)  # the server dies mid-run, as a crashed GPU server does
            if request_id and request_id in self.in_flight:
                return f"request id {request_id!r} is already in flight: request ids must be unique"
            if request_id:
                self.in_flight.add(request_id)
            self.active += 1
        if self.rng.random() < self.profile.get("error_rate", 0.0):
            return "emulated server error (profile error_rate)"
        return None

    def _release(self, request_id: str) -> None:
        with self.lock:
            self.active -= 1
            self.in_flight.discard(request_id)

    def _synthesize(self, parsed: dict, request_id: str, arrival: float, emit) -> list[float]:
        """Produce the chunks of one request, calling ``emit(audio)`` at each chunk's time; returns send offsets."""
        p = self.profile
        total_tokens = max(1, round(speech_seconds(parsed["target"]) * TOKENS_PER_S))
        voice = self._voice(parsed["target"], request_id)
        if isinstance(voice, RecordedVoice):
            total_tokens = max(1, math.ceil(len(voice.audio) / SAMPLES_PER_TOKEN))
        chunks = self._chunks(total_tokens)
        stall_at = self.rng.randrange(len(chunks)) if self.rng.random() < p.get("stall_prob", 0.0) else -1
        sends: list[float] = []
        fixed_first = p.get("fixed_first_s")
        llm_clock = arrival + self._jitter(p.get("llm_prefill_s", 0.0))
        produced = 0
        for i, n in enumerate(chunks):
            if i == stall_at:
                _sleep(p.get("stall_s", 0.0))
                llm_clock += p.get("stall_s", 0.0)
            produced += n
            audio = voice.render(n * SAMPLES_PER_TOKEN)  # before the wait: rendering must not delay the send
            if fixed_first is not None:
                _sleep_until(arrival + fixed_first + i * (p.get("fixed_interval_s") or 0.0))
            else:
                lookahead = 0 if produced == total_tokens else p.get("lookahead_tokens", 3)
                llm_clock += self._token_time(n + (lookahead if i == 0 else 0))
                _sleep_until(llm_clock)
                self.vocoder.run(self._vocoder_cost(n))
            sends.append(time.monotonic() - arrival)
            emit(audio)
        return sends

    def _trace(self, request_id: str, arrival: float, sends: list[float], error: str | None) -> None:
        if not self.trace_path:
            return
        line = json.dumps(
            {"model": self.model_name, "id": request_id, "arrival": arrival, "sends": sends, "error": error}
        )
        with self.trace_lock, open(self.trace_path, "a") as fh:
            fh.write(line + "\n")

    def _serve_stream(self, request: pb_utils.InferenceRequest, arrival: float) -> None:
        sender = request.get_response_sender()
        request_id = request.request_id()
        error = self._admit(request_id)
        sends: list[float] = []
        try:
            if error is None:
                parsed = self._parse(request)

                def emit(audio: np.ndarray) -> None:
                    out = pb_utils.Tensor("waveform", audio.reshape(1, -1))
                    sender.send(pb_utils.InferenceResponse(output_tensors=[out]))

                sends = self._synthesize(parsed, request_id, arrival, emit)
        except RequestError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug in the emulator must not hang the client
            error = f"emulator failure: {exc!r}"
        finally:
            self._release(request_id)
        if error is not None:
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(error)),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
        else:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        self._trace(request_id, arrival, sends, error)

    def _serve_offline(self, request: pb_utils.InferenceRequest, arrival: float) -> pb_utils.InferenceResponse:
        request_id = request.request_id()
        error = self._admit(request_id)
        parts: list[np.ndarray] = []
        sends: list[float] = []
        try:
            if error is None:
                sends = self._synthesize(self._parse(request), request_id, arrival, parts.append)
        except RequestError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001
            error = f"emulator failure: {exc!r}"
        finally:
            self._release(request_id)
        self._trace(request_id, arrival, sends[-1:], error)
        if error is not None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(error))
        audio = np.concatenate(parts).reshape(1, -1)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("waveform", audio)])

    def execute(self, requests: list) -> list | None:
        arrival = time.monotonic()
        if self.decoupled:
            for request in requests:
                threading.Thread(target=self._serve_stream, args=(request, arrival), daemon=True).start()
            return None
        # Serve a dynamic batch's requests side by side, as the real BLS model does with its instances.
        responses: list = [None] * len(requests)

        def serve(i: int) -> None:
            responses[i] = self._serve_offline(requests[i], arrival)

        threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return responses

    def finalize(self) -> None:
        pass
