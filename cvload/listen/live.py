"""Live content checks (``--check-content [SHARE]``): a sample of finished requests transcribed by an ASR backend
in helper processes, scored against their text, while the load goes on.

Never in the measuring process and never at the cost of a timestamp: the engine hands a finished request's audio
here (after its chunks were stamped and checked), the recogniser runs in helper processes (the same pipe-fed
process kind as the audio decoders, cvload.measure.audio_checks.Decoders, niced), and the record goes to the listeners
(results file, summary, dashboard) when its transcript is back. What is checked is bounded so the backlog cannot
grow without end: a share of requests (``25%``) or a budget of audio seconds per second (``8s/s``), and never more
than ``BACKLOG_S`` of audio waiting; a request past those bounds is passed on unchecked (counted as skipped).

Each sampled request's record says what became of it (``content_check``: checked, failed, or why it was skipped),
so the summary's ``content`` counters are folded from records (``ContentTally``): a sweep level counts its own
requests, and a fleet of load processes (``--processes N``, each with its own checker and its share of the
budget, workers and backlog) is counted like one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from cvload.errors import UsageError
from cvload.listen.content import DEFAULT_MAX_ERROR, error_rate, language_of
from cvload.results.records import FLAG_CONTENT_MISMATCH, RequestRecord


class ContentSettings(Protocol):
    """What the checker reads of a run's settings (a ``cvload.settings.config.RunConfig``; named by shape here, so this
    module and the config, which parses --check-content with ``Sampling``, do not import each other)."""

    @property
    def check_content(self) -> str | None: ...

    @property
    def asr(self) -> str: ...

    @property
    def max_content_error(self) -> float | None: ...

    @property
    def check_workers(self) -> int: ...

    @property
    def language(self) -> str | None: ...

BACKLOG_S = 300.0  # audio seconds waiting for a recogniser, at most (~30 MB of float32 at 24 kHz)
BACKLOG_REQUESTS = 48  # ... and requests (below the engine's own limit on records being finished)
CHECKED, FAILED = "checked", "failed"  # a record's content_check when its transcript came back (or failed)
# Why a sampled request went on unchecked (its record's content_check; the summary's ``skipped_because``).
SKIP_REASONS = {
    "backlog": "the recognisers' backlog was full (BACKLOG_REQUESTS requests or BACKLOG_S of audio, shared out "
               "among load processes)",
    "budget": "the --check-content budget of audio seconds per second was spent",
    "language": "no recogniser for its language (--asr)",
    "late": "its transcript was not back when the wait after the run ended (or, in a sweep, when its level was "
            "judged)",
}
CHECK_OUTCOMES = (CHECKED, FAILED, *SKIP_REASONS)
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
        from cvload.listen.asr import make_recognizer

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
    """What only the checker knows: its backlog, its recognisers' speed and their last error. What became of the
    requests (checked, failed, mismatches, skipped) is counted once, from their records (``ContentTally``)."""

    pending: int = 0
    pending_audio_s: float = 0.0
    audio_s: float = 0.0  # checked audio
    cpu_s: float = 0.0  # the recognisers' CPU for it
    last_error: str | None = None

    def to_json(self, spec: str, sampling: Sampling, max_error: float, workers: int) -> dict[str, Any]:
        return {"asr": spec, "sampling": sampling.describe(), "max_error": max_error, "workers": workers,
                "backlog": self.pending,
                "backlog_audio_s": round(self.pending_audio_s, 3),
                "audio_s_per_cpu_s": round(self.audio_s / self.cpu_s, 3) if self.cpu_s > 0 else None,
                "audio_s": round(self.audio_s, 3), "cpu_s": round(self.cpu_s, 3), "last_error": self.last_error}


def merge_live(parts: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The live word of several checkers (a fleet's load processes, each ``CheckerStats.to_json``) as one:
    backlogs and workers added, the recognisers' speed over all of them, the latest error of any."""
    if not parts:
        return None
    out = dict(parts[0])
    for key in ("backlog", "workers"):
        out[key] = sum(int(p.get(key) or 0) for p in parts)
    for key in ("backlog_audio_s", "audio_s", "cpu_s"):
        out[key] = round(sum(float(p.get(key) or 0.0) for p in parts), 3)
    out["audio_s_per_cpu_s"] = round(out["audio_s"] / out["cpu_s"], 3) if out["cpu_s"] > 0 else None
    out["last_error"] = next((p["last_error"] for p in parts if p.get("last_error")), None)
    out["processes"] = len(parts)
    return out


@dataclass
class ContentTally:
    """The content counters of a run or of a sweep level, folded from its measured records' ``content_check``
    (warm-up requests are never counted). ``backlog``: a level's (requests, audio s) waiting for a recogniser
    when its window closed; None: the checker's backlog now."""

    checked: int = 0
    failed: int = 0
    mismatches: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    backlog: tuple[int, float] | None = None

    def add(self, record: RequestRecord) -> None:
        outcome = record.content_check
        if outcome is None or record.warmup:
            return
        if outcome == CHECKED:
            self.checked += 1
            self.mismatches += FLAG_CONTENT_MISMATCH in record.flags
        elif outcome == FAILED:
            self.failed += 1
        elif outcome in self.skipped:
            self.skipped[outcome] += 1

    @classmethod
    def of(cls, records: Iterable[RequestRecord], backlog: tuple[int, float] | None = None) -> ContentTally:
        tally = cls(backlog=backlog)
        for record in records:
            tally.add(record)
        return tally

    def section(self, live: dict[str, Any]) -> dict[str, Any]:
        """The summary's ``content`` section: the checker's settings and speed (``live``) with these counts."""
        out = dict(live)
        out.update(checked=self.checked, failed=self.failed, mismatches=self.mismatches,
                   skipped=sum(self.skipped.values()),
                   skipped_because={reason: n for reason, n in self.skipped.items() if n})
        if self.backlog is not None:
            out["backlog"], out["backlog_audio_s"] = self.backlog[0], round(self.backlog[1], 3)
        return out


class ContentChecker:
    """Transcribes and scores a sample of finished requests in ``workers`` helper processes. ``backlog_s`` and
    ``backlog_requests`` bound what may wait for them (a load process of a fleet gets its share)."""

    def __init__(self, spec: str, sampling: Sampling, *, max_error: float = DEFAULT_MAX_ERROR, workers: int = 1,
                 language: str | None = None, backlog_s: float = BACKLOG_S,
                 backlog_requests: int = BACKLOG_REQUESTS) -> None:
        self.spec = spec
        self.sampling = sampling
        self.max_error = max_error
        self.workers = max(1, workers)
        self.language = language  # None: each item's language from its text's script
        self.backlog_s = backlog_s
        self.backlog_requests = max(1, backlog_requests)
        self.stats = CheckerStats()
        self.languages: tuple[str, ...] = ()
        self._pool: Any = None
        self._tokens = 0.0  # budget sampling: audio seconds that may still be checked
        self._refilled: float | None = None
        self._waiting: dict[asyncio.Future[None], RequestRecord] = {}  # submitted, transcript not back yet

    @classmethod
    def for_run(cls, config: ContentSettings, processes: int = 1) -> ContentChecker:
        """The checker ``config`` asks for (--check-content, --asr, --check-workers, ...); a load process of a
        fleet of ``processes`` (its config already holds its share of the workers and budget) gets its share of
        the backlog."""
        max_error = DEFAULT_MAX_ERROR if config.max_content_error is None else float(config.max_content_error)
        return cls(config.asr, Sampling.parse(config.check_content), max_error=max_error,
                   workers=config.check_workers, language=config.language, backlog_s=BACKLOG_S / processes,
                   backlog_requests=max(1, BACKLOG_REQUESTS // processes))

    async def validate(self) -> None:
        """The recogniser exists, has its files (or its server answers) and speaks --language: a UsageError
        before any load. Cheap: nothing is loaded (a fleet's coordinator only validates)."""
        from cvload.listen.asr import make_recognizer

        recognizer = make_recognizer(self.spec)
        if self.language is not None and self.language not in recognizer.languages:
            raise UsageError(f"--asr {self.spec} does not transcribe language {self.language!r}",
                             hint=f"it does {', '.join(recognizer.languages)}; for Chinese use paraformer:DIR, "
                             "sensevoice:DIR, whisper or openai:URL")
        self.languages = tuple(recognizer.languages)
        await asyncio.get_running_loop().run_in_executor(None, recognizer.check)

    async def start(self) -> None:
        """Validate, start the helper processes and load the recogniser there."""
        from cvload.measure.audio_checks import Decoders

        if not self.languages:
            await self.validate()
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
        """Whether to check this finished request; one in the sample that is passed over is counted as skipped
        and its record says why (``content_check``)."""
        stats = self.stats
        if record.index * GOLDEN % 1.0 >= self.sampling.share:
            return False  # outside the share: not part of the sample at all
        take = stats.pending < self.backlog_requests and stats.pending_audio_s + audio_s <= self.backlog_s
        reason = None if take else "backlog"
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
            else:
                reason = "budget"
        if take and self.language_for(record) not in self.languages:
            stats.last_error = f"--asr {self.spec} does not transcribe {self.language_for(record)!r} texts"
            take, reason = False, "language"  # no recogniser for its language here: said once in last_error
        if not take:
            record.content_check = reason
        return take

    def submit(self, loop: asyncio.AbstractEventLoop, record: RequestRecord,
               audio: Sequence[np.ndarray]) -> asyncio.Future[None]:
        """Transcribe ``record``'s audio; the future is done when the record carries its transcript, error rate
        and (above --max-content-error) the ``content_mismatch`` flag, or when ``release`` gave up on it."""
        assert self._pool is not None
        audio_s = sum(len(a) for a in audio) / record.sample_rate if record.sample_rate else 0.0
        stats = self.stats
        stats.pending += 1
        stats.pending_audio_s += audio_s
        job = self._pool.submit(loop, transcribe_job, self.spec, list(audio), record.sample_rate, record.text,
                                self.language_for(record), self.max_error)
        done: asyncio.Future[None] = loop.create_future()
        self._waiting[done] = record

        def heard(future: asyncio.Future[Any]) -> None:
            stats.pending -= 1
            stats.pending_audio_s = max(0.0, stats.pending_audio_s - audio_s)
            if self._waiting.pop(done, None) is None or done.done():
                return  # released: its record went on unchecked and must not change now
            if future.cancelled():
                pass
            elif future.exception() is not None:
                stats.last_error = f"{type(future.exception()).__name__}: {future.exception()}"[:300]
                record.content_check = FAILED
            else:
                transcript, rate, cpu = future.result()
                record.transcript, record.content_error = transcript, round(rate, 6)
                record.content_check = CHECKED
                stats.audio_s += audio_s
                stats.cpu_s += cpu
                if rate > self.max_error and FLAG_CONTENT_MISMATCH not in record.flags:
                    record.flags.append(FLAG_CONTENT_MISMATCH)
            done.set_result(None)

        job.add_done_callback(heard)
        return done

    def release(self, futures: Iterable[asyncio.Future[None]]) -> None:
        """Give up waiting for these transcripts (the wait after the run ended, or a sweep judging their level):
        their records go on unchecked, as ``late``."""
        for done in futures:
            record = self._waiting.pop(done, None)
            if record is not None:
                record.content_check = "late"
            if not done.done():
                done.set_result(None)

    def release_requests(self, indices: Collection[int]) -> int:
        """``release`` the transcripts still due for these requests (by run index); how many there were."""
        futures = [done for done, record in self._waiting.items() if record.index in indices]
        self.release(futures)
        return len(futures)

    def summary(self) -> dict[str, Any]:
        return self.stats.to_json(self.spec, self.sampling, self.max_error, self.workers)

    def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                self._pool.close()
            self._pool = None
