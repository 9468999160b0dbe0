"""Every metric cvload reports, defined once: the summary, CSV, console, dashboard and objectives all read these.

Per-request metrics (``REQUEST_METRICS``) are computed from a ``RequestRecord``; latency names and meanings
follow the CosyVoice team's benchmark client (docs/protocol.md) so numbers compare: the second-chunk latency is
the *gap* between the first and second chunk, not a time from the start. Run-level metrics (``RUN_METRICS``) are computed from a
run's ``RunTotals`` (counts, audio, wall time, the engine's concurrency); adding one is one entry there. A ``Tally``
folds each finished request into those totals and the request metrics' values (the session for summary.json, the
live window for the dashboard), so no view keeps the records; ``summarize`` does the same over records at hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from cvload.results.records import (
    AUDIO_FLAGS,
    ERR_BARGED_IN,
    ERR_CANCELLED,
    ERROR_KINDS,
    PROXY_BODY_LIMIT,
    RequestRecord,
)

PERCENTILES = (50, 90, 95, 99)
STAT_KEYS = ("p50", "p90", "p95", "p99", "mean", "max", "min", "count")


@dataclass(frozen=True)
class RequestMetric:
    """A value per request (None where it does not apply, e.g. no second chunk)."""

    name: str  # key in records.jsonl and summary.json
    alias: str  # short name used in objectives (``first_chunk.p95<300ms``) and on screen
    unit: str  # "ms", "s" or "" (a ratio)
    title: str
    of: Callable[[RequestRecord], float | None]
    only_ok: bool = True  # computed over successful requests only
    # An incomplete request (cvload.results.records.ERR_INCOMPLETE) counts with its lower bound: latencies it had at
    # least, so percentiles cannot come out low by leaving the slowest requests out.
    bounded: bool = False
    # A barged-in request (``--barge-in``) counts too: its listener heard it up to here (first chunk), though
    # it never completed.
    heard: bool = False


def _first(r: RequestRecord) -> float | None:
    if r.chunk_offsets:
        return r.chunk_offsets[0] * 1000.0
    return r.end_offset * 1000.0 if r.incomplete and r.end_offset is not None else None  # at least this


def _second_gap(r: RequestRecord) -> float | None:
    return (r.chunk_offsets[1] - r.chunk_offsets[0]) * 1000.0 if len(r.chunk_offsets) > 1 else None


def _total(r: RequestRecord) -> float | None:
    return r.end_offset * 1000.0 if r.end_offset is not None else None


def _rtf(r: RequestRecord) -> float | None:
    audio = r.audio_s
    return r.end_offset / audio if r.end_offset is not None and audio > 0 else None


def _first_corrected(r: RequestRecord) -> float | None:
    """First chunk measured from the *intended* send time: open-loop latency without coordinated omission."""
    first = _first(r)
    if r.intended is None or first is None:
        return None
    return (r.sent - r.intended) * 1000.0 + first


def _total_corrected(r: RequestRecord) -> float | None:
    if r.intended is None or r.end_offset is None:
        return None
    return (r.sent - r.intended + r.end_offset) * 1000.0


EPSILON_S = 1e-6  # arrivals this close to the moment their audio is due count as on time (float noise)


@dataclass(frozen=True)
class Playback:
    """What a listener hears of a request: a player that starts once it holds more than ``prebuffer_s`` of audio
    (or at the last chunk, if it never does) and plays at 1x, pausing when the audio runs out. ``start``: when it
    starts, s after ``sent``; ``stalls``: (audio position s, seconds waited there) for each pause."""

    start: float
    stalls: tuple[tuple[float, float], ...]

    def heard_at(self, position_s: float) -> float:
        """When the sample at ``position_s`` of the audio is played, s after ``sent``."""
        return self.start + position_s + sum(wait for at, wait in self.stalls if at <= position_s + EPSILON_S)


def playback(r: RequestRecord, prebuffer_s: float | None = None) -> Playback | None:
    """The request played by the player of ``--prebuffer`` (``r.prebuffer_s`` unless given); None without audio."""
    if not r.chunk_offsets or not r.chunk_samples or not r.sample_rate:
        return None
    prebuffer = r.prebuffer_s if prebuffer_s is None else prebuffer_s
    rate = r.sample_rate
    offsets, samples = r.chunk_offsets, r.chunk_samples[: len(r.chunk_offsets)]
    first, held = len(samples) - 1, 0
    for k, n in enumerate(samples):
        held += n
        if held / rate > prebuffer + EPSILON_S:
            first = k
            break
    start = offsets[first]
    stalls: list[tuple[float, float]] = []
    position = sum(samples[: first + 1]) / rate  # audio that has arrived when it starts
    play_until = start + position
    for arrival, n in zip(offsets[first + 1:], samples[first + 1:]):
        if arrival > play_until + EPSILON_S:
            stalls.append((position, arrival - play_until))
            play_until = arrival
        play_until += n / rate
        position += n / rate
    return Playback(start, tuple(stalls))


def playback_stalls(r: RequestRecord) -> tuple[int, float]:
    """Waits a listener would hear with the run's player (``--prebuffer``; 0: it starts at the first chunk)."""
    played = playback(r)
    if played is None:
        return 0, 0.0
    return len(played.stalls), sum(wait for _, wait in played.stalls)


def required_prebuffer_s(r: RequestRecord) -> float | None:
    """The smallest prebuffer that plays the request without a stall: exact, from its chunk schedule.

    Chunk k (``A_k`` s of audio before it) is due when a player that started at T has played ``A_k``: it stalls
    nowhere iff ``T >= D = max_k(arrival_k - A_k)``. A player with prebuffer P starts at the first chunk after
    which it holds more than P, so the smallest P is the audio before the first chunk that arrives at or after D.
    """
    if not r.chunk_offsets or not r.sample_rate:
        return None
    rate = r.sample_rate
    before, due = [], 0
    for n in r.chunk_samples[: len(r.chunk_offsets)]:
        before.append(due / rate)
        due += n
    latest = max(arrival - held for arrival, held in zip(r.chunk_offsets, before))
    for arrival, held in zip(r.chunk_offsets, before):
        if arrival + EPSILON_S >= latest:
            return held
    return before[-1]


def _required_prebuffer_ms(r: RequestRecord) -> float | None:
    value = required_prebuffer_s(r)
    return None if value is None else value * 1000.0


def _leading_silence(r: RequestRecord) -> float | None:
    return None if r.speech_start_s is None else r.speech_start_s * 1000.0


def _first_audible(r: RequestRecord) -> float | None:
    """From the send to the first sample of speech as the run's player plays it: the chunk arrivals, the silence
    before the speech (a voice-activity detector found where it starts) and any stall before it."""
    if r.speech_start_s is None:
        return None
    played = playback(r)
    return None if played is None else played.heard_at(r.speech_start_s) * 1000.0


REQUEST_METRICS: tuple[RequestMetric, ...] = (
    RequestMetric("first_chunk_latency_ms", "first_chunk", "ms", "First chunk", _first, bounded=True, heard=True),
    RequestMetric("second_chunk_latency_ms", "second_chunk", "ms", "Second chunk (gap after first)", _second_gap),
    RequestMetric("total_latency_ms", "total", "ms", "Total latency", _total, bounded=True),
    RequestMetric("rtf", "rtf", "", "RTF (latency / audio)", _rtf),
    RequestMetric("audio_s", "audio", "s", "Audio seconds", lambda r: r.audio_s),
    RequestMetric("stall_count", "stalls", "", "Playback stalls", lambda r: float(playback_stalls(r)[0])),
    RequestMetric("stall_s", "stall_time", "s", "Playback stall time", lambda r: playback_stalls(r)[1]),
    RequestMetric("required_prebuffer_ms", "required_prebuffer", "ms", "Prebuffer needed for no stall",
                  _required_prebuffer_ms),
    RequestMetric("first_audible_latency_ms", "first_audible", "ms", "First audible (speech heard)", _first_audible),
    RequestMetric("leading_silence_ms", "leading_silence", "ms", "Leading silence", _leading_silence),
    RequestMetric("content_error_rate", "content_error", "share", "Content error (WER/CER)",
                  lambda r: r.content_error, only_ok=False),
    RequestMetric("first_chunk_latency_corrected_ms", "first_chunk_corrected", "ms",
                  "First chunk from intended send", _first_corrected, bounded=True, heard=True),
    RequestMetric("total_latency_corrected_ms", "total_corrected", "ms", "Total from intended send",
                  _total_corrected, bounded=True),
)
BY_NAME = {m.name: m for m in REQUEST_METRICS}
BY_ALIAS = {m.alias: m for m in REQUEST_METRICS}


def record_json(record: RequestRecord) -> dict[str, Any]:
    """The raw record plus its per-request metric values: one line of records.jsonl."""
    data = asdict(record)
    if data["level"] is None:
        del data["level"]  # only sweeps tag records with their level
    if data["abandon_offset"] is None:
        del data["abandon_offset"]  # only --barge-in abandons requests
    if data["content_check"] is None:
        del data["content_check"]  # only --check-content (and `cvload check`) samples requests
    data["ok"] = record.ok
    data["audio_s"] = round(record.audio_s, 6)
    data["sent_s"] = round(record.sent - record.run_start, 6)
    for metric in REQUEST_METRICS:
        value = metric.of(record)
        data[metric.name] = None if value is None else round(value, 6)
    return data


def stats(values: Sequence[float] | npt.NDArray[np.float64]) -> dict[str, float | None]:
    """Exact percentiles (numpy linear interpolation, as the upstream client), mean, max, min, count."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {k: (0 if k == "count" else None) for k in STAT_KEYS}
    p = np.percentile(arr, PERCENTILES)
    out: dict[str, float | None] = {f"p{q}": float(v) for q, v in zip(PERCENTILES, p)}
    out.update(mean=float(arr.mean()), max=float(arr.max()), min=float(arr.min()), count=int(arr.size))
    return out


def counted(record: RequestRecord, metric: RequestMetric) -> float | None:
    """The request's value of ``metric`` as the statistics count it (None where it does not count): ok requests
    only where the metric says so, plus an incomplete request's lower bound for the metrics bounded by it."""
    if metric.only_ok and not record.ok and not (metric.bounded and record.incomplete) \
            and not (metric.heard and record.error_kind == ERR_BARGED_IN):
        return None
    return metric.of(record)


def values(records: Iterable[RequestRecord], metric: RequestMetric) -> list[float]:
    return [v for v in (counted(r, metric) for r in records) if v is not None]


def rtf_histogram(rtfs: Sequence[float] | npt.NDArray[np.float64], edges: Sequence[float] | None = None) -> dict[str, list[float]]:
    """Counts per RTF bin; 1.0 (real time) is always an edge so 'slower than real time' is one sum."""
    edges = list(edges or (0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0))
    counts, _ = np.histogram(np.clip(rtfs, edges[0], edges[-1]), bins=edges) if len(rtfs) else ([0] * (len(edges) - 1), None)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def end_time(record: RequestRecord) -> float:
    """When the request finished (final response or failure), on the monotonic clock of ``sent``."""
    return record.sent + (record.end_offset or 0.0)


def measure_start(records: Iterable[RequestRecord]) -> float | None:
    """When measurement began, derived from records as the engine marks it: the run's start when no request was
    warmup, else the send time of the first measured request (None without records). ``Tally.measure_start``."""
    return Tally.of(records).measure_start()


def wall_time(records: Iterable[RequestRecord] = (), *, start: float | None = None,
              end: float | None = None) -> float:
    """The run's wall time, the denominator of every throughput: from the start of measurement (after warmup) to
    the last finish. ``start``: the engine's own mark where known, else ``measure_start`` of the records; ``end``:
    the last finish of the records unless given (nothing finished yet: now; a live view: its latest finish).
    The summary, live objectives and dashboard snapshots all use this."""
    records = list(records)
    if records:
        return Tally.of(records).wall_time(start, end)
    return 0.0 if start is None or end is None else max(0.0, end - start)


@dataclass
class RunTotals:
    """What every run-level metric is computed from: ``from_records`` for the summary, kept live by the window."""

    measured: int = 0  # neither warmup nor cancelled by the user
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    barged_in: int = 0  # abandoned by their listener (--barge-in): neither ok nor failed
    incomplete: int = 0  # still running when the wait after the window ended (counted in failed too)
    incomplete_min_s: float | None = None  # the least any of them had been waited for: their latency's bound
    warmup: int = 0
    errors: dict[str, int] = field(default_factory=lambda: {k: 0 for k in ERROR_KINDS})
    flags: dict[str, int] = field(default_factory=lambda: {k: 0 for k in AUDIO_FLAGS})
    audio_s: float = 0.0  # audio of the successful measured requests
    rtf_count: int = 0  # successful measured requests with an RTF
    slower_than_realtime: int = 0  # ... of which RTF > 1
    wall_s: float = 0.0  # see ``wall_time``
    concurrency: dict[str, Any] = field(default_factory=dict)  # the engine's InflightTracker.summary
    # Goodput: ``meets`` tells whether a successful request met every per-request objective
    # (cvload.measure.slo.request_check); ``good`` counts those. Without ``meets`` the run has no goodput.
    meets: Callable[[RequestRecord], bool] | None = None
    good: int = 0
    proxy_limited: int = 0  # failures on a stream a proxy reset at its request-body limit (PROXY_BODY_LIMIT)

    @classmethod
    def from_records(cls, records: Iterable[RequestRecord], *, wall_s: float,
                     concurrency: dict[str, Any] | None = None,
                     meets: Callable[[RequestRecord], bool] | None = None) -> RunTotals:
        totals = cls(wall_s=wall_s, concurrency=dict(concurrency or {}), meets=meets)
        for r in records:
            totals.add(r)
        return totals

    def add(self, r: RequestRecord) -> None:
        """Count one finished request. Warmup requests and those cut off by the user are not measurements."""
        if r.warmup:
            self.warmup += 1
            return
        if r.error_kind == ERR_CANCELLED:
            self.cancelled += 1
            return
        if r.error_kind == ERR_BARGED_IN:
            self.barged_in += 1
            return
        self.measured += 1
        if r.incomplete:
            self.incomplete += 1
            waited = r.end_offset or 0.0
            self.incomplete_min_s = waited if self.incomplete_min_s is None else min(self.incomplete_min_s, waited)
        if r.error_kind:
            self.errors[r.error_kind] = self.errors.get(r.error_kind, 0) + 1
            if r.error is not None and PROXY_BODY_LIMIT in r.error:
                self.proxy_limited += 1
        for flag in r.flags:
            self.flags[flag] = self.flags.get(flag, 0) + 1
        if not r.ok:
            self.failed += 1
            return
        self.ok += 1
        if self.meets is not None and self.meets(r):
            self.good += 1
        self.audio_s += r.audio_s
        rtf = BY_NAME["rtf"].of(r)
        if rtf is not None:
            self.rtf_count += 1
            self.slower_than_realtime += rtf > 1.0


MISSING: Any = object()  # a value the run did not measure (no engine result): left out of summary and CSV


@dataclass(frozen=True)
class RunMetric:
    """One value per run, at ``name`` (a dotted path) in summary.json; objectives name it as written."""

    name: str
    unit: str  # "share" (a fraction 0..1, objectives take %), "s", "req/s", "audio s/s", "" (a count or ratio)
    title: str
    of: Callable[[RunTotals], Any]  # MISSING where the run has no such value
    csv: bool = True  # a row of summary.csv
    objective: bool = True  # may be named in an objective
    headline: str | None = None  # console: a phrase of the title line (format: the value, then every value)
    footer: str | None = None  # console: a phrase under the table, shown when the value is not None


def _per_s(amount: float, wall_s: float) -> float:
    return amount / wall_s if wall_s > 0 else 0.0


def _engine(key: str) -> Callable[[RunTotals], Any]:
    return lambda t: t.concurrency.get(key, MISSING)


def _error_count(kind: str) -> Callable[[RunTotals], int]:
    return lambda t: t.errors.get(kind, 0)


def _flag_count(flag: str) -> Callable[[RunTotals], int]:
    return lambda t: t.flags.get(flag, 0)


RUN_METRICS: tuple[RunMetric, ...] = (
    RunMetric("wall_s", "s", "Wall time (measured)", lambda t: t.wall_s, csv=False, objective=False),
    RunMetric("requests.total", "", "Measured requests", lambda t: t.measured),
    RunMetric("requests.ok", "", "Successful requests", lambda t: t.ok,
              headline="{} ok, {requests_failed} failed ({error_rate:.1%})"),
    RunMetric("requests.failed", "", "Failed requests", lambda t: t.failed),
    RunMetric("requests.cancelled", "", "Cancelled by the user", lambda t: t.cancelled, objective=False),
    RunMetric("requests.barged_in", "", "Abandoned by their listener (--barge-in)", lambda t: t.barged_in),
    RunMetric("requests.warmup", "", "Warmup requests", lambda t: t.warmup, objective=False),
    RunMetric("requests.incomplete", "", "Incomplete (still running after the window)", lambda t: t.incomplete),
    RunMetric("incomplete_min_s", "s", "Incomplete requests' latency, at least", lambda t: t.incomplete_min_s,
              csv=False, objective=False, footer="{requests_incomplete} incomplete, >= {:.1f} s"),
    RunMetric("error_rate", "share", "Error rate", lambda t: t.failed / t.measured if t.measured else 0.0),
    *(RunMetric(f"errors.{kind}", "", f"Errors: {kind}", _error_count(kind), csv=False) for kind in ERROR_KINDS),
    *(RunMetric(f"audio_flags.{flag}", "", f"Audio flag: {flag}", _flag_count(flag), csv=False)
      for flag in AUDIO_FLAGS),
    RunMetric("slower_than_realtime_share", "share", "Slower than real time",
              lambda t: t.slower_than_realtime / t.rtf_count if t.rtf_count else 0.0, csv=False),
    RunMetric("throughput.requests_per_s", "req/s", "Throughput", lambda t: _per_s(t.ok, t.wall_s),
              headline="{:.2f} req/s"),
    RunMetric("throughput.audio_s_per_s", "audio s/s", "Audio throughput", lambda t: _per_s(t.audio_s, t.wall_s),
              headline="{:.2f} audio s/s"),
    # Requests per second that met every per-request objective (only where per-request objectives were given).
    RunMetric("goodput.requests_per_s", "req/s", "Goodput",
              lambda t: _per_s(t.good, t.wall_s) if t.meets is not None else MISSING,
              headline="goodput {:.2f} req/s"),
    RunMetric("goodput.share", "share", "Share of requests meeting every per-request objective",
              lambda t: (t.good / t.measured if t.measured else 0.0) if t.meets is not None else MISSING),
    RunMetric("audio_s_total", "s", "Audio produced", lambda t: t.audio_s, csv=False),
    # The upstream client's "RTF": the whole run's wall time over all audio produced.
    RunMetric("run_wall_rtf", "", "Run wall RTF", lambda t: t.wall_s / t.audio_s if t.audio_s > 0 else None,
              footer="run wall RTF (upstream 'RTF') {:.3f}"),
    RunMetric("concurrency.requested", "", "Concurrency requested", _engine("requested"),
              footer="concurrency {:g} requested, {concurrency_achieved_mean:.2f} achieved "
                     "(max {concurrency_achieved_max})"),
    RunMetric("concurrency.achieved_mean", "", "Concurrency achieved (steady state)", _engine("achieved_mean")),
    RunMetric("concurrency.achieved_max", "", "Concurrency achieved, max", _engine("achieved_max")),
    RunMetric("concurrency.achieved_mean_overall", "", "Concurrency achieved (whole run)",
              _engine("achieved_mean_overall"), objective=False),
)
RUN_BY_NAME = {m.name: m for m in RUN_METRICS}


def run_values(totals: RunTotals) -> dict[str, Any]:
    """Every run metric's value, nested by its dotted name as in summary.json (groups kept even when empty)."""
    out: dict[str, Any] = {}
    for metric in RUN_METRICS:
        *groups, key = metric.name.split(".")
        node = out
        for group in groups:
            node = node.setdefault(group, {})
        value = metric.of(totals)
        if value is not MISSING:
            node[key] = value
    return out


def lookup(summary: dict[str, Any], name: str) -> Any:
    """The value at a dotted name in a summary, MISSING where it has none."""
    node: Any = summary
    for key in name.split("."):
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


class FloatColumn:
    """An append-only float array: 8 bytes a value (a list of floats costs 32), zero-copy views for numpy."""

    def __init__(self) -> None:
        self._data = np.empty(256, dtype=float)
        self.size = 0

    def append(self, value: float) -> None:
        if self.size == self._data.size:
            self._data = np.resize(self._data, self.size * 2)
        self._data[self.size] = value
        self.size += 1

    def clear(self) -> None:
        self.size = 0

    def view(self) -> npt.NDArray[np.float64]:
        return self._data[: self.size]


class Tally:
    """What a summary is computed from, folded as requests finish: the ``RunTotals``, each request metric's
    counted values (8 bytes each) and the bounds of the measurement window, never the records themselves, so
    hours of load keep memory flat (the records are on disk, in records.jsonl).

    ``meets``: the per-request objectives (cvload.measure.slo.request_check), for goodput.
    """

    def __init__(self, meets: Callable[[RequestRecord], bool] | None = None) -> None:
        self.totals = RunTotals(meets=meets)
        self.values = {m.name: FloatColumn() for m in REQUEST_METRICS}
        self.count = 0  # every record added, warmup and cancelled included
        self.run_start: float | None = None
        self.last_end: float | None = None  # the latest finish (``end_time``)
        self._first_measured: float | None = None  # the earliest send of a request that was not warmup
        self._any_warmup = False

    @classmethod
    def of(cls, records: Iterable[RequestRecord], meets: Callable[[RequestRecord], bool] | None = None) -> Tally:
        tally = cls(meets)
        for r in records:
            tally.add(r)
        return tally

    def add(self, r: RequestRecord, row: dict[str, float] | None = None) -> dict[str, float]:
        """Fold one finished request; returns its counted metric values (empty when it is not a measurement).
        ``row``: those values where another tally already computed them."""
        self.count += 1
        if self.run_start is None:
            self.run_start = r.run_start
        end = end_time(r)
        self.last_end = end if self.last_end is None else max(self.last_end, end)
        if r.warmup:
            self._any_warmup = True
        elif self._first_measured is None or r.sent < self._first_measured:
            self._first_measured = r.sent
        self.totals.add(r)
        if r.warmup or r.error_kind == ERR_CANCELLED:
            return {}
        if row is None:
            row = {m.name: v for m in REQUEST_METRICS if (v := counted(r, m)) is not None}
        for name, value in row.items():
            self.values[name].append(value)
        return row

    def measure_start(self) -> float | None:
        """``measure_start`` of the records added."""
        if not self.count:
            return None
        if not self._any_warmup or self._first_measured is None:
            return self.run_start
        return self._first_measured

    def wall_time(self, start: float | None = None, end: float | None = None) -> float:
        """``wall_time`` of the records added (``start``/``end`` override as there)."""
        return wall_time(start=self.measure_start() if start is None else start,
                         end=self.last_end if end is None else end)

    def summary(self, *, wall_s: float, concurrency: dict[str, Any] | None = None) -> dict[str, Any]:
        """The measured part of summary.json (see ``summarize``)."""
        totals = replace(self.totals, wall_s=wall_s, concurrency=dict(concurrency or {}))
        out = run_values(totals)
        out["metrics"] = {name: stats(column.view()) for name, column in self.values.items()}
        out["rtf_histogram"] = rtf_histogram(self.values["rtf"].view())
        if totals.proxy_limited:
            out["warnings"] = [f"{totals.proxy_limited} requests failed on gRPC streams reset after more than 1 MB "
                               f"was sent on them: {PROXY_BODY_LIMIT}"]
        return out


def summarize(records: Iterable[RequestRecord], *, wall_s: float, concurrency: dict[str, Any] | None = None,
              meets: Callable[[RequestRecord], bool] | None = None) -> dict[str, Any]:
    """The measured part of summary.json: every run metric, each request metric's statistics, the RTF histogram.

    Computed over the measured records (not warmup, not cancelled by the user). ``meets``: the per-request
    objectives (cvload.measure.slo.request_check), for goodput. A run folds its records into a ``Tally`` as they finish
    instead of keeping them; this is the same computation over records at hand.
    """
    return Tally.of(records, meets).summary(wall_s=wall_s, concurrency=concurrency)
