"""The smoke stage: one real request through the front model, the way clients will call it, with a latency line.

Streaming goes over a gRPC bidirectional stream with ``enable_empty_final_response`` (the end of a request is
the response flagged ``triton_final_response``); offline is one gRPC ModelInfer. The model config is read
first, so a mode mismatch is reported as such instead of as a hang or an HTTP 501.
"""

from __future__ import annotations

import queue
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvload.errors import ServerError, UsageError

SAMPLE_RATE_OUT = 24000
SAMPLE_RATE_PROMPT = 16000


@dataclass
class SmokeResult:
    address: str
    model: str
    mode: str
    first_chunk_s: float | None
    total_s: float
    chunks: int
    audio_s: float

    def line(self) -> str:
        rtf = self.total_s / self.audio_s if self.audio_s else float("nan")
        first = f"first chunk {self.first_chunk_s * 1000:.0f} ms, " if self.first_chunk_s is not None else ""
        return (f"{self.model} {self.mode} via grpc {self.address}: {first}{self.chunks} chunk(s), "
                f"{self.audio_s:.2f} s of audio in {self.total_s * 1000:.0f} ms (RTF {rtf:.3f})")


def load_prompt(path: Path) -> np.ndarray:
    """A prompt WAV as 16 kHz mono float32 (resampled linearly if needed)."""
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"[smoke] prompt_wav {path}: cannot read it as audio ({exc})",
                         hint="give a 16 kHz mono WAV file, or set [triton] use_spk2info_cache") from None
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE_PROMPT:
        n = int(len(mono) * SAMPLE_RATE_PROMPT / rate)
        mono = np.interp(np.linspace(0, len(mono) - 1, n), np.arange(len(mono)), mono).astype(np.float32)
    return mono.astype(np.float32)


def synthetic_prompt(seconds: float = 1.5) -> np.ndarray:
    """A voiced, never-silent prompt for the emulator (which does not listen to it)."""
    t = np.arange(int(seconds * SAMPLE_RATE_PROMPT)) / SAMPLE_RATE_PROMPT
    return (0.1 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def _inputs(grpcclient: Any, text: str, prompt: np.ndarray | None, prompt_text: str | None) -> list[Any]:
    def tensor(name: str, data: np.ndarray, dtype: str) -> Any:
        t = grpcclient.InferInput(name, list(data.shape), dtype)
        t.set_data_from_numpy(data)
        return t

    inputs = [tensor("target_text", np.array([[text.encode()]], dtype=object), "BYTES")]
    if prompt is not None:
        inputs += [
            tensor("reference_wav", prompt.reshape(1, -1), "FP32"),
            tensor("reference_wav_len", np.array([[len(prompt)]], dtype=np.int32), "INT32"),
            tensor("reference_text", np.array([[(prompt_text or "").encode()]], dtype=object), "BYTES"),
        ]
    return inputs


def smoke_request(address: str, model: str, mode: str, *, text: str, prompt: np.ndarray | None,
                  prompt_text: str | None, timeout: float) -> SmokeResult:
    """Send one synthesis request and time it; raise a CvloadError the user can act on if it fails."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(address)
    try:
        try:
            config = client.get_model_config(model, as_json=True, client_timeout=10)["config"]
        except InferenceServerException as exc:
            raise ServerError(f"smoke: cannot read model {model!r} config at {address}: {exc.message()}",
                              hint="cvload bootstrap doctor") from None
        decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        if decoupled != (mode == "streaming"):
            raise ServerError(f"smoke: model {model} at {address} is {'decoupled' if decoupled else 'offline'} "
                              f"but the deployment's mode is {mode}",
                              hint="the model repository does not match the config: run `cvload bootstrap up` again")
        inputs = _inputs(grpcclient, text, prompt, prompt_text)
        outputs = [grpcclient.InferRequestedOutput("waveform")]
        request_id = f"cvload-smoke-{uuid.uuid4().hex[:12]}"
        if mode == "offline":
            sent = time.monotonic()
            try:
                result = client.infer(model, inputs, outputs=outputs, request_id=request_id,
                                      client_timeout=timeout)
            except InferenceServerException as exc:
                raise ServerError(f"smoke: the request failed: {exc.message()}",
                                  hint="cvload bootstrap logs server") from None
            total = time.monotonic() - sent
            audio = result.as_numpy("waveform")
            samples = 0 if audio is None else int(audio.size)
            return SmokeResult(address, model, mode, None, total, 1, samples / SAMPLE_RATE_OUT)
        return _stream(client, grpcclient, model, inputs, outputs, request_id, address, timeout)
    finally:
        client.close()


def _stream(client: Any, grpcclient: Any, model: str, inputs: list[Any], outputs: list[Any], request_id: str,
            address: str, timeout: float) -> SmokeResult:
    events: queue.Queue[tuple[float, object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((time.monotonic(), result, error)))
    try:
        sent = time.monotonic()
        client.async_stream_infer(model, inputs, outputs=outputs, request_id=request_id,
                                  enable_empty_final_response=True)
        first: float | None = None
        chunks = samples = 0
        while True:
            remaining = timeout - (time.monotonic() - sent)
            try:
                t, result, error = events.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise ServerError(f"smoke: no final response within {timeout:.0f} s ({chunks} chunk(s) so far)",
                                  hint="a decoupled stream that stalls: check the server log "
                                       "(cvload bootstrap logs server) and [smoke] timeout") from None
            if error is not None:
                raise ServerError(f"smoke: the server answered an error: {error}",
                                  hint="cvload bootstrap logs server")
            response = result.get_response()  # type: ignore[attr-defined]
            audio = result.as_numpy("waveform") if response.outputs else None  # type: ignore[attr-defined]
            if audio is not None and audio.size:
                chunks += 1
                samples += int(audio.size)
                if first is None:
                    first = t - sent
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                total = t - sent
                break
    finally:
        client.stop_stream(cancel_requests=True)
    if chunks == 0:
        raise ServerError(f"smoke: the stream from {address} ended without audio", hint="cvload bootstrap logs server")
    return SmokeResult(address, model, "streaming", first, total, chunks, samples / SAMPLE_RATE_OUT)

