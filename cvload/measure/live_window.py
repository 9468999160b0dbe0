"""A live statistics window over finished requests, for any view (the dashboard today, anything tomorrow).

The engine calls ``add`` once per finished request; it only appends to a queue, so a listener never costs the
measurement more than an append. All folding (metric values, percentiles, histograms, per-second series) happens
in ``snapshot``, which a view calls on its own timer. Every value comes from ``cvload.measure.metrics``: the run scope
and each second of the series are a ``Tally`` (the summary's own folding: ``REQUEST_METRICS`` values, the
``RunTotals`` that ``RUN_METRICS`` read), percentiles from ``stats``, the RTF histogram from ``rtf_histogram``.
Nothing keeps a record past its fold but the few shown as recent, so memory stays flat over hours. The scopes:

- *run*: every measured request (not warmup, not cancelled), as ``summary.json`` will count them;
- *now*: measured requests that finished in the last ``window_s`` seconds and after the last ``reset``;
- *since reset*: what the histograms show (``reset`` empties them).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from cvload.measure.metrics import (
    FloatColumn,
    Tally,
    end_time,
    rtf_histogram,
    run_values,
    stats,
)
from cvload.results.records import ERR_CANCELLED, FLAG_CONTENT_MISMATCH, RequestRecord

WINDOW_S = 10.0  # "now": the last seconds of finished requests
SERIES_S = 120  # per-second series kept for the time-series charts
HIST_BINS = 12
BIG_RUN = 20000  # past this many values, run-scope percentiles and histograms refresh once a second, not every frame
LATENCY_METRICS = ("first_chunk_latency_ms", "second_chunk_latency_ms", "total_latency_ms")
SPEECH_METRICS = ("first_audible_latency_ms", "content_error_rate", "required_prebuffer_ms")  # the Speech panel


def finished_at(record: RequestRecord) -> float:
    """Seconds after the run started at which the request finished (its place on every time axis)."""
    return end_time(record) - record.run_start


def is_measured(record: RequestRecord) -> bool:
    """The same selection as ``summarize``: warmup and user-cancelled requests are not measurements."""
    return not record.warmup and record.error_kind != ERR_CANCELLED


@dataclass
class Histogram:
    edges: list[float]
    counts: list[int]

    @property
    def total(self) -> int:
        return int(sum(self.counts))


@dataclass
class MetricView:
    """One metric as a panel shows it."""

    name: str
    now: dict[str, float | None]
    run: dict[str, float | None]
    histogram: Histogram
    series: list[float | None]  # p50 per second, oldest first (None: nothing finished that second)


@dataclass
class LiveSnapshot:
    """What a view draws, computed in one go on the view's timer."""

    elapsed: float
    window_s: float
    reset_at: float | None
    metrics: dict[str, MetricView]
    rtf_histogram: Histogram  # since reset, from cvload.measure.metrics.rtf_histogram (1.0 is an edge)
    slower_share_now: float | None
    slower_share_run: float | None
    stalls_run: dict[str, float]  # requests with a stall, stall count, stall seconds
    throughput_series: dict[str, list[float]]  # requests_per_s, audio_s_per_s: one value per whole second
    seconds: list[int]  # the seconds of the series (run-relative)
    counts: dict[str, int]
    errors: dict[str, int]  # error kinds and audio flags over the run (as summary.json)
    latest_errors: list[tuple[float, str, str]]  # (finished at, kind, message), newest last
    recent: list[RequestRecord]  # newest last
    workers_seen: list[int] = field(default_factory=list)
    # Listening (docs/speech.md): run-scope statistics of SPEECH_METRICS, the content mismatches counted and the
    # latest of them as (expected, heard), newest last
    speech: dict[str, dict[str, float | None]] = field(default_factory=dict)
    mismatches: int = 0
    latest_mismatches: list[tuple[str, str]] = field(default_factory=list)
    # --barge-in: abandoned requests so far and how long after the abandon their calls closed (ms; p50, p95);
    # the server's own release comes from its trace, read into the summary when the run ends.
    barge_in: dict[str, float | None] | None = None


class LiveStats:
    """Thread-safe feed (``add``) from the engine; ``snapshot`` folds and aggregates for a view."""

    def __init__(self, *, window_s: float = WINDOW_S, recent: int = 12, latest_errors: int = 6) -> None:
        self.window_s = window_s
        self._pending: deque[RequestRecord] = deque()
        self._lock = threading.Lock()  # snapshot vs reset (both from the view; add never takes it)
        self._tally = Tally()  # the run scope, counted as the summary counts it
        self._barge_close = FloatColumn()  # --barge-in: abandon -> call closed, ms
        self._run = self._tally.values
        self._window: deque[tuple[float, dict[str, float]]] = deque()
        self._since_reset = {name: FloatColumn() for name in (*LATENCY_METRICS, "rtf")}
        self._reset_at: float | None = None
        self._buckets: dict[int, Tally] = {}  # second -> the measured requests finished in it
        self._bucket_p50: dict[int, dict[str, float | None]] = {}
        self._bucket_tput: dict[int, dict[str, float]] = {}
        self._latest_second = -1
        self._recent: deque[RequestRecord] = deque(maxlen=recent)
        self._latest_errors: deque[tuple[float, str, str]] = deque(maxlen=latest_errors)
        self._latest_mismatches: deque[tuple[str, str]] = deque(maxlen=4)
        self._totals = self._tally.totals
        self._done = 0
        self._stalled_requests = 0
        self._workers: set[int] = set()
        self._last_finish = 0.0
        self._cache: dict[tuple[str, str], tuple[int, float, Any]] = {}  # see _throttled

    # ---- feed (engine thread) ----------------------------------------------------------------------------
    def add(self, record: RequestRecord) -> None:
        """Engine listener: O(1), no computation (deque.append is atomic)."""
        self._pending.append(record)

    def extend(self, records: Iterable[RequestRecord]) -> None:
        self._pending.extend(records)

    def reset(self) -> None:
        """Start the live window and histograms afresh; the run scope is untouched."""
        with self._lock:
            self._fold()
            self._reset_at = self._last_finish
            self._window.clear()
            for bucket in self._since_reset.values():
                bucket.clear()
            self._cache = {key: got for key, got in self._cache.items() if key[0] != "hist"}

    # ---- fold (view thread) ------------------------------------------------------------------------------
    def _fold(self) -> None:
        while self._pending:
            self._fold_one(self._pending.popleft())

    def _fold_one(self, r: RequestRecord) -> None:
        t = finished_at(r)
        self._last_finish = max(self._last_finish, t)
        self._done += 1
        row = self._tally.add(r)
        self._recent.append(r)
        if r.worker >= 0:
            self._workers.add(r.worker)
        if FLAG_CONTENT_MISMATCH in r.flags:
            self._latest_mismatches.append((r.text, r.transcript or ""))
        if r.barged_in and r.abandon_offset is not None and r.end_offset is not None:
            self._barge_close.append((r.end_offset - r.abandon_offset) * 1000.0)
        if not r.ok and r.error_kind != ERR_CANCELLED and not r.barged_in:
            self._latest_errors.append((t, r.error_kind or ",".join(r.flags), r.error or ", ".join(r.flags)))
        if not is_measured(r):
            return
        if row.get("stall_count", 0) > 0:
            self._stalled_requests += 1
        self._window.append((t, row))
        for name, bucket in self._since_reset.items():
            if name in row:
                bucket.append(row[name])
        second = int(t)
        self._buckets.setdefault(second, Tally()).add(r, row)
        self._bucket_p50.pop(second, None)  # recompute the p50s of a second that gained records
        self._bucket_tput.pop(second, None)
        self._latest_second = max(self._latest_second, second)
        for old in [s for s in self._buckets if s < second - SERIES_S]:
            del self._buckets[old]
            self._bucket_p50.pop(old, None)
            self._bucket_tput.pop(old, None)

    # ---- aggregate ---------------------------------------------------------------------------------------
    def snapshot(self, elapsed: float | None = None) -> LiveSnapshot:
        """Fold what arrived and aggregate. ``elapsed``: seconds since the run started (default: last finish)."""
        with self._lock:
            self._fold()
            now_t = self._last_finish if elapsed is None else max(elapsed, self._last_finish)
            while self._window and self._window[0][0] < now_t - self.window_s:
                self._window.popleft()
            window_rows = [row for _, row in self._window]
            last_second = int(now_t)
            seconds = list(range(max(0, last_second - SERIES_S + 1), last_second + 1))
            p50s = [self._p50_row(s) for s in seconds]
            metrics = {}
            for name in LATENCY_METRICS + ("rtf",):
                now_vals = [row[name] for row in window_rows if name in row]
                metrics[name] = MetricView(
                    name=name,
                    now=stats(now_vals),
                    run=self._run_stats(name),
                    histogram=(self._throttled(("hist", name), self._since_reset[name],
                                               _histogram) if name != "rtf" else Histogram([], [])),
                    series=[row[name] for row in p50s],
                )
            hist = self._throttled(("hist", "rtf"), self._since_reset["rtf"], rtf_histogram)
            rtf_now = [row["rtf"] for row in window_rows if "rtf" in row]
            tput = [self._throughput(s, complete=s < last_second) for s in seconds]
            return LiveSnapshot(
                elapsed=now_t,
                window_s=self.window_s,
                reset_at=self._reset_at,
                metrics=metrics,
                rtf_histogram=Histogram(hist["edges"], hist["counts"]),
                slower_share_now=_share_above(rtf_now, 1.0),
                slower_share_run=self._throttled(("run", "slower"), self._run["rtf"], lambda v: _share_above(v, 1.0)),
                stalls_run={"requests": float(self._stalled_requests),
                            "count": self._throttled(("run", "stalls"), self._run["stall_count"], _sum),
                            "seconds": self._throttled(("run", "stall_s"), self._run["stall_s"], _sum)},
                throughput_series={k: [t[k] for t in tput] for k in ("requests_per_s", "audio_s_per_s")},
                seconds=seconds,
                counts=self._counts(),
                errors={**self._totals.errors, **self._totals.flags},
                latest_errors=list(self._latest_errors),
                recent=list(self._recent),
                workers_seen=sorted(self._workers),
                speech={name: self._run_stats(name) for name in SPEECH_METRICS},
                mismatches=self._totals.flags.get(FLAG_CONTENT_MISMATCH, 0),
                latest_mismatches=list(self._latest_mismatches),
                barge_in=self._barge_in(),
            )

    def _run_stats(self, name: str) -> dict[str, float | None]:
        result: dict[str, float | None] = self._throttled(("run", name), self._run[name], stats)
        return result

    def _throttled(self, key: tuple[str, str], column: FloatColumn, compute: Callable[[npt.NDArray[np.float64]], Any]) -> Any:
        """``compute`` over a growing column, again when the count changed; past BIG_RUN values at most once a
        second, so a frame's cost stays flat over hours (run-scope stats, histograms since the last reset)."""
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is None or (cached[0] != column.size and (column.size < BIG_RUN or now - cached[1] >= 1.0)):
            cached = (column.size, now, compute(column.view()))
            self._cache[key] = cached
        return cached[2]

    def run_stats(self) -> dict[str, dict[str, float | None]]:
        """Every request metric over the run, as ``summary.json``'s ``metrics`` (for live objectives)."""
        with self._lock:
            self._fold()
            return {name: stats(arr.view()) for name, arr in self._run.items()}

    def summary_like(self, wall_s: float, concurrency: dict[str, Any] | None = None) -> dict[str, Any]:
        """The summary's run values and request statistics from live aggregates (cheap at any run length).

        The same ``RUN_METRICS`` over the same ``RunTotals`` as ``summarize`` (tests pin the agreement).
        """
        metrics = self.run_stats()
        with self._lock:
            totals = replace(self._totals, errors=dict(self._totals.errors), flags=dict(self._totals.flags),
                             wall_s=wall_s, concurrency=dict(concurrency or {}))
        return {**run_values(totals), "metrics": metrics}

    def _barge_in(self) -> dict[str, float | None] | None:
        if not self._barge_close.size:
            return None
        close = stats(self._barge_close.view())
        return {"abandoned": float(self._barge_close.size), "close_p50_ms": close["p50"], "close_p95_ms": close["p95"]}

    def _counts(self) -> dict[str, int]:
        t = self._totals
        return {"done": self._done, "measured": t.measured, "ok": t.ok, "failed": t.failed,
                "cancelled": t.cancelled, "warmup": t.warmup, "barged_in": t.barged_in}

    def _p50_row(self, second: int) -> dict[str, float | None]:
        cached = self._bucket_p50.get(second)
        if cached is None:
            bucket = self._buckets.get(second)
            cached = {n: stats(bucket.values[n].view() if bucket else ())["p50"] for n in (*LATENCY_METRICS, "rtf")}
            if second < self._latest_second:
                self._bucket_p50[second] = cached
        return cached

    def _throughput(self, second: int, *, complete: bool) -> dict[str, float]:
        cached = self._bucket_tput.get(second)
        if cached is None:
            bucket = self._buckets.get(second)
            # the summary's own throughput definition over a one-second wall window
            cached = (run_values(replace(bucket.totals, wall_s=1.0))["throughput"] if bucket else
                      {"requests_per_s": 0.0, "audio_s_per_s": 0.0})
            if complete:
                self._bucket_tput[second] = cached
        return cached


def _sum(values: npt.NDArray[np.float64]) -> float:
    return float(values.sum())


def _share_above(vals: Iterable[float] | npt.NDArray[np.float64], threshold: float) -> float | None:
    arr = np.asarray(list(vals) if not isinstance(vals, np.ndarray) else vals, dtype=float)
    return float((arr > threshold).mean()) if arr.size else None


def _histogram(vals: npt.NDArray[np.float64], bins: int = HIST_BINS) -> Histogram:
    """Equal-width bins from the minimum to the 99th percentile; the last bin also holds the tail above."""
    if not len(vals):
        return Histogram([], [])
    arr = np.asarray(vals, dtype=float)
    lo, hi = float(arr.min()), float(np.percentile(arr, 99))
    if hi <= lo:
        hi = lo + max(1.0, abs(lo) * 0.01)
    edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(np.clip(arr, lo, hi), bins=edges)
    return Histogram([float(e) for e in edges], [int(c) for c in counts])
