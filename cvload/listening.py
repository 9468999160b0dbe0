"""Live content checks (``--check-content [SHARE]``): a sample of finished requests transcribed by an ASR backend
in helper processes, scored against their text, while the load goes on.

Never in the measuring process and never at the cost of a timestamp: the engine hands a finished request's audio
here (after its chunks were stamped and checked), the recogniser runs in helper processes (the same pipe-fed
process kind as the audio decoders, cvload.audio_checks.Decoders, niced), and the record goes to the listeners
(results file, summary, dashboard) when its transcript is back. What is checked is bounded so the backlog cannot
grow without end: a share of requests (``25%``) or a budget of audio seconds per second (``8s/s``), and never more
than ``BACKLOG_S`` of audio waiting; a request past those bounds is passed on unchecked (counted as skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvload.content import DEFAULT_MAX_ERROR, error_rate, language_of
from cvload.errors import UsageError
from cvload.records import FLAG_CONTENT_MISMATCH, RequestRecord

BACKLOG_S = 300.0  # audio seconds waiting for a recogniser, at most (~30 MB of float32 at 24 kHz)
BACKLOG_REQUESTS = 48  # ... and requests (below the engine's own limit on records being finished)
GOLDEN = 0.6180339887498949  # index * golden mod 1: a share of requests spread evenly over the run
_SHARE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(%|s/s)?\s*$")


@dataclass(frozen=True)
class Sampling:
    """Which requests to check: a share of them, or a budget of audio seconds per second of run."""

    share: float = 1.0
    budget_s_per_s: float | None = None

    @classmethod
    def parse(cls, text: str | float | None) -> Sampling:
        if text is None or text == "":
            return cls()
        m = _SHARE.match(str(text))
        if not m:
            raise UsageError(f"--check-content {text!r}: not a share or a budget",
                             hint="e.g. 100% (every request), 25%, 0.25, or 8s/s (8 audio seconds a second)")
        value, unit = float(m.group(1)), m.group(2)
        if unit == "s/s":
            if value <= 0:
                raise UsageError(f"--check-content {text!r}: the budget must be positive")
            return cls(share=1.0, budget_s_per_s=value)
        share = value / 100 if unit == "%" else value
        if not 0 < share <= 1:
            raise UsageError(f"--check-content {text!r}: a share is above 0 and at most 100%")
        return cls(share=share)

    def describe(self) -> str:
        return f"{self.budget_s_per_s:g} audio s/s" if self.budget_s_per_s else f"{self.share:.0%} of requests"


def transcribe_job(spec: str, audio: Sequence[np.ndarray], sample_rate: int, text: str, language: str,
                   max_error: float) -> tuple[str, float, float]:
    """In a helper process: (transcript, error rate, CPU seconds spent). The recogniser is made once a process."""
    started = time.process_time()
    recognizer = _recognizers.get(spec)
    if recognizer is None:
        from cvload.asr import make_recognizer

        recognizer = _recognizers[spec] = make_recognizer(spec)
    joined = np.concatenate(list(audio)) if len(audio) else np.zeros(0, np.float32)
    heard = recognizer.transcribe(joined, sample_rate, language)
    return heard, error_rate(text, heard, language), time.process_time() - started


def warm_job(spec: str) -> float:
    """In a helper process: load the recogniser now (and run it once) so the first checks do not wait for it."""
    started = time.process_time()
    transcribe_job(spec, [np.zeros(16000, np.float32)], 16000, "", "en", 1.0)
    return time.process_time() - started


_recognizers: dict[str, Any] = {}


@dataclass
class CheckerStats:
    """What the dashboard and the summary show of the checker."""

    checked: int = 0
    skipped: int = 0  # finished requests past the share, budget or backlog: passed on unchecked
    failed: int = 0  # the recogniser failed on them (its message in ``last_error``)
    mismatches: int = 0
    pending: int = 0
    pending_audio_s: float = 0.0
    audio_s: float = 0.0  # checked audio
    cpu_s: float = 0.0  # the recognisers' CPU for it
    last_error: str | None = None
    recent: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=5))  # mismatches: expected, heard

    def to_json(self, spec: str, sampling: Sampling, max_error: float, workers: int) -> dict[str, Any]:
        return {"asr": spec, "sampling": sampling.describe(), "max_error": max_error, "workers": workers,
                "checked": self.checked, "skipped": self.skipped, "failed": self.failed,
                "mismatches": self.mismatches, "backlog": self.pending,
                "backlog_audio_s": round(self.pending_audio_s, 3),
                "audio_s_per_cpu_s": round(self.audio_s / self.cpu_s, 3) if self.cpu_s > 0 else None,
                "last_error": self.last_error}


class ContentChecker:
    """Transcribes and scores a sample of finished requests in ``workers`` helper processes."""

    def __init__(self, spec: str, sampling: Sampling, *, max_error: float = DEFAULT_MAX_ERROR, workers: int = 1,
                 language: str | None = None) -> None:
        self.spec = spec
        self.sampling = sampling
        self.max_error = max_error
        self.workers = max(1, workers)
        self.language = language  # None: each item's language from its text's script
        self.stats = CheckerStats()
        self._pool: Any = None
        self._tokens = 0.0  # budget sampling: audio seconds that may still be checked
        self._refilled: float | None = None

    async def start(self) -> None:
        """Check the recogniser (a UsageError before any load), start the helper processes and load it there."""
        from cvload.asr import make_recognizer
        from cvload.audio_checks import Decoders

        recognizer = make_recognizer(self.spec)
        if self.language is not None and self.language not in recognizer.languages:
            raise UsageError(f"--asr {self.spec} does not transcribe language {self.language!r}",
                             hint=f"it does {', '.join(recognizer.languages)}; for Chinese use paraformer:DIR, "
                             "sensevoice:DIR, whisper or openai:URL")
        self.languages = recognizer.languages
        await asyncio.get_running_loop().run_in_executor(None, recognizer.check)
        self._pool = Decoders(self.workers, idle=True)  # checks fall behind before timestamps do
        loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(self._pool.submit(loop, warm_job, self.spec) for _ in range(self.workers)))
        except Exception as exc:
            self.close()
            raise UsageError(f"--asr {self.spec}: the recogniser failed to start in its helper process: {exc}",
                             hint="run `cvload check` on a saved run to see the full error") from None

    def language_for(self, record: RequestRecord) -> str:
        """--language, else the item's own (its input said), else its text's script."""
        return self.language or record.language or language_of(record.text)

    def wants(self, record: RequestRecord, audio_s: float) -> bool:
        """Whether to check this finished request (counts the ones passed over as skipped)."""
        stats = self.stats
        if record.index * GOLDEN % 1.0 >= self.sampling.share:
            return False  # outside the share: not part of the sample at all
        take = stats.pending < BACKLOG_REQUESTS and stats.pending_audio_s + audio_s <= BACKLOG_S
        budget = self.sampling.budget_s_per_s
        if take and budget is not None:
            now = time.monotonic()
            if self._refilled is None:
                self._tokens = budget  # a second's worth to start with
            else:
                self._tokens = min(budget * 4, self._tokens + (now - self._refilled) * budget)
            self._refilled = now
            take = self._tokens >= audio_s or (self._tokens > 0 and stats.pending == 0)
            if take:
                self._tokens -= audio_s
        if not take:
            stats.skipped += 1
        elif self.language_for(record) not in self.languages:
            stats.skipped += 1  # no recogniser for its language here: said once in last_error
            stats.last_error = f"--asr {self.spec} does not transcribe {self.language_for(record)!r} texts"
            take = False
        return take

    def submit(self, loop: asyncio.AbstractEventLoop, record: RequestRecord,
               audio: Sequence[np.ndarray]) -> asyncio.Future[None]:
        """Transcribe ``record``'s audio; the future is done when the record carries its transcript, error rate
        and (above --max-content-error) the ``content_mismatch`` flag."""
        assert self._pool is not None
        audio_s = sum(len(a) for a in audio) / record.sample_rate if record.sample_rate else 0.0
        stats = self.stats
        stats.pending += 1
        stats.pending_audio_s += audio_s
        job = self._pool.submit(loop, transcribe_job, self.spec, list(audio), record.sample_rate, record.text,
                                self.language_for(record), self.max_error)
        done: asyncio.Future[None] = loop.create_future()

        def heard(future: asyncio.Future[Any]) -> None:
            stats.pending -= 1
            stats.pending_audio_s = max(0.0, stats.pending_audio_s - audio_s)
            if future.cancelled():
                pass
            elif future.exception() is not None:
                stats.failed += 1
                stats.last_error = f"{type(future.exception()).__name__}: {future.exception()}"[:300]
            else:
                transcript, rate, cpu = future.result()
                record.transcript, record.content_error = transcript, round(rate, 6)
                stats.checked += 1
                stats.audio_s += audio_s
                stats.cpu_s += cpu
                if rate > self.max_error:
                    stats.mismatches += 1
                    stats.recent.append((record.text, transcript))
                    if FLAG_CONTENT_MISMATCH not in record.flags:
                        record.flags.append(FLAG_CONTENT_MISMATCH)
            if not done.done():
                done.set_result(None)

        job.add_done_callback(heard)
        return done

    def summary(self) -> dict[str, Any]:
        return self.stats.to_json(self.spec, self.sampling, self.max_error, self.workers)

    def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                self._pool.close()
            self._pool = None
