"""Audio sanity per request, accumulated chunk by chunk: a fast server producing broken audio must not pass.

The checks catch failures users report on real deployments: a stalled server returning 0.04 s of audio for a
sentence, silence, NaN/Inf from a broken vocoder, and clipping.

They run after a request's final response (``check_request``), never between two reads: float32 chunks cost
~25 us per second of audio, but chunks still in wire form (``Chunk.decoded`` false: HTTP streaming's JSON float
arrays, ~5 ms per second of audio) are decoded on one helper thread, in short slices, so the event loop keeps
stamping other streams' bytes while they are parsed.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvload.records import FLAG_CLIPPING, FLAG_NONFINITE, FLAG_SILENT, FLAG_TOO_SHORT

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9\u00c0-\u024f']+")

SILENCE_RMS = 1e-4  # -80 dBFS over the whole request
CLIP_LEVEL = 0.999
CLIP_SHARE = 0.001  # more than 0.1% of samples at full scale
TOO_SHORT_FACTOR = 0.3  # audio under 30% of what the text needs at a brisk speaking rate


def expected_speech_s(text: str) -> float:
    """Seconds a brisk speaker needs for ``text``: ~4.5 CJK characters or ~2.7 words per second."""
    cjk = len(_CJK.findall(text))
    words = len(_WORD.findall(_CJK.sub(" ", text)))
    return cjk * 0.22 + words * 0.37


class AudioCheck:
    """Running sums over a request's chunks; ``flags()`` at the end."""

    __slots__ = ("samples", "sum_sq", "nonfinite", "clipped")

    def __init__(self) -> None:
        self.samples = 0
        self.sum_sq = 0.0
        self.nonfinite = 0
        self.clipped = 0

    def add(self, audio: np.ndarray) -> None:
        if audio.size == 0:
            return
        finite = np.isfinite(audio)
        if not finite.all():
            self.nonfinite += int(audio.size - finite.sum())
            audio = audio[finite]
        self.samples += int(finite.size)
        self.sum_sq += float(np.dot(audio, audio))
        self.clipped += int(np.count_nonzero(np.abs(audio) >= CLIP_LEVEL))

    def flags(self, text: str, sample_rate: int) -> list[str]:
        out = []
        if self.nonfinite:
            out.append(FLAG_NONFINITE)
        if self.samples == 0 or (self.sum_sq / self.samples) ** 0.5 < SILENCE_RMS:
            out.append(FLAG_SILENT)
        if self.samples and self.clipped / self.samples > CLIP_SHARE:
            out.append(FLAG_CLIPPING)
        if self.samples / sample_rate < TOO_SHORT_FACTOR * expected_speech_s(text):
            out.append(FLAG_TOO_SHORT)
        return out


# While the helper thread parses, the event loop waits at most this long for the interpreter lock (Python's
# default, 5 ms, would show up in every chunk timestamp taken meanwhile).
SWITCH_INTERVAL_S = 0.0005
_executor: ThreadPoolExecutor | None = None


@dataclass
class RequestAudio:
    """What the checks made of one request's chunks."""

    samples: list[int] = field(default_factory=list)  # per chunk
    flags: list[str] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)  # the chunks' samples, only when asked to keep them


def _check(chunks: Sequence[Any], text: str, sample_rate: int, keep_audio: bool) -> RequestAudio:
    check, out = AudioCheck(), RequestAudio()
    for chunk in chunks:
        audio = chunk.audio
        out.samples.append(int(audio.size))
        check.add(audio)
        if keep_audio:
            out.audio.append(audio)
    out.flags = check.flags(text, sample_rate)
    return out


async def check_request(chunks: Sequence[Any], text: str, sample_rate: int, keep_audio: bool) -> RequestAudio:
    """Sample counts, audio flags (and the audio with ``keep_audio``) of a finished request's chunks
    (``cvload.targets.base.Chunk``): in place when they are float32 already, else on the helper thread."""
    if all(chunk.decoded for chunk in chunks):
        return _check(chunks, text, sample_rate, keep_audio)
    global _executor
    if _executor is None:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvload-audio")
    return await asyncio.get_running_loop().run_in_executor(_executor, _check, chunks, text, sample_rate,
                                                            keep_audio)
