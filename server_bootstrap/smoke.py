"""The smoke stage: one real request through the front model, the way clients will call it, with a latency line.

It sends through cvload's own gRPC targets (``cvload.targets.make_target``, what ``cvload run`` measures with):
streaming over a bidirectional stream whose end is the response flagged ``triton_final_response``, offline as
one ModelInfer. Opening the target reads the model config first, so a mode mismatch is reported as such instead
of as a hang or an HTTP 501. Prompts are read by ``cvload.settings.inputs`` (16 kHz mono, resampled when needed).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvload.errors import CvloadError, ServerError
from cvload.results.records import ERR_TIMEOUT
from cvload.settings import inputs
from cvload.targets import make_target
from cvload.targets.base import SynthesisRequest, TargetError
from cvload.targets.checks import ModeMismatch


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
    """A prompt file as 16 kHz mono float32; a UsageError naming ``[smoke] prompt_wav`` when it is no audio."""
    return inputs.read_prompt(path, where="[smoke] prompt_wav")


def builtin_prompt() -> tuple[np.ndarray, str]:
    """The first prompt of cvload's built-in input set and its transcript."""
    item = next(i for i in inputs.load_items(None) if i.prompt_wav is not None)
    assert item.prompt_text is not None
    assert item.prompt_wav is not None
    return item.prompt_wav, item.prompt_text


def smoke_request(address: str, model: str, mode: str, *, text: str, prompt: np.ndarray | None,
                  prompt_text: str | None, timeout: float) -> SmokeResult:
    """Send one synthesis request and time it; raise a CvloadError the user can act on if it fails."""
    request = SynthesisRequest(request_id=f"cvload-smoke-{uuid.uuid4().hex[:12]}", target_text=text,
                               reference_text=(prompt_text or "") if prompt is not None else None,
                               reference_wav=prompt)
    return asyncio.run(_smoke(address, model, mode, request, timeout))


async def _smoke(address: str, model: str, mode: str, request: SynthesisRequest, timeout: float) -> SmokeResult:
    target = make_target("grpc", mode, address, model, timeout=timeout)
    try:
        await target.open()
    except ModeMismatch as exc:
        raise ServerError(f"smoke: {exc.message}", hint="the model repository does not match the config: run "
                          "`cvload bootstrap up` again") from None
    except CvloadError as exc:
        raise ServerError(f"smoke: {exc.message}", hint="cvload bootstrap doctor") from None
    first: float | None = None
    chunks = samples = 0
    rate = 24000
    try:
        sent = time.monotonic()
        async for chunk in target.synthesize(request):
            if chunk.audio.size:
                chunks += 1
                samples += int(chunk.audio.size)
                rate = chunk.sample_rate
                if first is None:
                    first = chunk.t - sent
        total = time.monotonic() - sent
    except TargetError as exc:
        if exc.kind == ERR_TIMEOUT:
            raise ServerError(f"smoke: no final response within {timeout:.0f} s ({chunks} chunk(s) so far)",
                              hint="a decoupled stream that stalls: check the server log "
                                   "(cvload bootstrap logs server) and [smoke] timeout") from None
        what = "the server answered an error" if mode == "streaming" else "the request failed"
        raise ServerError(f"smoke: {what}: {exc.message}", hint="cvload bootstrap logs server") from None
    finally:
        await target.close()
    if mode == "offline":
        return SmokeResult(address, model, mode, None, total, 1, samples / rate)
    if chunks == 0:
        raise ServerError(f"smoke: the stream from {address} ended without audio", hint="cvload bootstrap logs server")
    return SmokeResult(address, model, mode, first, total, chunks, samples / rate)
