"""The CosyVoice front model's request tensors, built the same way for every protocol.

``target_text`` always; ``reference_wav`` [1, N] FP32 (zero-padded to ``pad_to_samples`` when set),
``reference_wav_len`` INT32 [1, 1] (true length) and ``reference_text`` when the request has a prompt; a
spk-cache request sends neither. Prompts repeat across a run, so their wire forms (raw bytes, JSON text) are
cached per prompt array instead of being rebuilt for every request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from cvload.targets.base import Samples, SynthesisRequest

WAVEFORM = "waveform"


@dataclass(frozen=True)
class Tensor:
    """One input tensor: its wire bytes (little endian; BYTES elements carry a 4-byte length prefix)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes
    text: str | None = None  # BYTES tensors: the string itself (for JSON bodies)


def bytes_tensor(name: str, value: str) -> Tensor:
    data = value.encode("utf-8")
    return Tensor(name, "BYTES", (1, 1), len(data).to_bytes(4, "little") + data, value)


@dataclass
class Prompt:
    """A prompt's samples as sent (padded) and its true length, with wire forms made on first use."""

    samples: Samples  # float32 little endian, contiguous, padded
    length: int
    _raw: bytes | None = field(default=None, repr=False)
    _json: bytes | None = field(default=None, repr=False)

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self.samples.tobytes()
        return self._raw

    @property
    def json(self) -> bytes:
        """The samples as a JSON array (float32 values printed exactly), UTF-8, for the generate endpoint."""
        if self._json is None:
            self._json = json.dumps(self.samples.tolist()).encode()
        return self._json

    def tensors(self) -> tuple[Tensor, Tensor]:
        wav = Tensor("reference_wav", "FP32", (1, int(self.samples.size)), self.raw)
        wav_len = Tensor("reference_wav_len", "INT32", (1, 1), np.array([self.length], "<i4").tobytes())
        return wav, wav_len


class PromptCache:
    """Prepared prompts keyed by the identity of the request's array (kept alive by the cache itself)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: dict[tuple[int, int | None], tuple[Samples, Prompt]] = {}

    def get(self, wav: Samples, pad_to: int | None) -> Prompt:
        key = (id(wav), pad_to)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is wav:
            return entry[1]
        prompt = prepare_prompt(wav, pad_to)
        if len(self._entries) >= self.size:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (wav, prompt)
        return prompt


def prepare_prompt(wav: Samples, pad_to: int | None) -> Prompt:
    samples = np.ascontiguousarray(np.asarray(wav, dtype="<f4").reshape(-1))
    length = int(samples.size)
    if pad_to is not None and pad_to > length:
        padded = np.zeros(pad_to, dtype="<f4")
        padded[:length] = samples
        samples = padded
    return Prompt(samples, length)


def request_tensors(request: SynthesisRequest, cache: PromptCache) -> list[Tensor]:
    """The inputs of one request, in the order the model config lists them."""
    tensors = [bytes_tensor("target_text", request.target_text)]
    if request.reference_wav is not None:
        tensors.extend(cache.get(request.reference_wav, request.pad_to_samples).tensors())
        tensors.append(bytes_tensor("reference_text", request.reference_text or ""))
    elif request.reference_text is not None:
        tensors.append(bytes_tensor("reference_text", request.reference_text))
    return tensors
