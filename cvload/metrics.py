"""Every metric cvload reports, defined once: the summary, CSV, dashboard and objectives all read these.

Per-request metrics are computed from a ``RequestRecord``; latency names and meanings follow the CosyVoice
team's benchmark client (docs/protocol.md) so numbers compare: the second-chunk latency is the *gap* between
the first and second chunk, not a time from the start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cvload.records import AUDIO_FLAGS, ERR_CANCELLED, ERROR_KINDS, RequestRecord

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


def _first(r: RequestRecord) -> float | None:
    return r.chunk_offsets[0] * 1000.0 if r.chunk_offsets else None


def _second_gap(r: RequestRecord) -> float | None:
    return (r.chunk_offsets[1] - r.chunk_offsets[0]) * 1000.0 if len(r.chunk_offsets) > 1 else None


def _total(r: RequestRecord) -> float | None:
    return r.end_offset * 1000.0 if r.end_offset is not None else None


def _rtf(r: RequestRecord) -> float | None:
    audio = r.audio_s
    return r.end_offset / audio if r.end_offset is not None and audio > 0 else None


def _first_corrected(r: RequestRecord) -> float | None:
    """First chunk measured from the *intended* send time: open-loop latency without coordinated omission."""
    if r.intended is None or not r.chunk_offsets:
        return None
    return (r.sent - r.intended + r.chunk_offsets[0]) * 1000.0


def _total_corrected(r: RequestRecord) -> float | None:
    if r.intended is None or r.end_offset is None:
        return None
    return (r.sent - r.intended + r.end_offset) * 1000.0


def playback_stalls(r: RequestRecord) -> tuple[int, float]:
    """Waits a listener would hear: playback starts at the first chunk at 1x and pauses when audio runs out."""
    if not r.chunk_offsets:
        return 0, 0.0
    count, waited = 0, 0.0
    play_until = r.chunk_offsets[0] + r.chunk_samples[0] / r.sample_rate
    for arrival, samples in zip(r.chunk_offsets[1:], r.chunk_samples[1:]):
        if arrival > play_until + 1e-6:
            count += 1
            waited += arrival - play_until
            play_until = arrival
        play_until += samples / r.sample_rate
    return count, waited


REQUEST_METRICS: tuple[RequestMetric, ...] = (
    RequestMetric("first_chunk_latency_ms", "first_chunk", "ms", "First chunk", _first),
    RequestMetric("second_chunk_latency_ms", "second_chunk", "ms", "Second chunk (gap after first)", _second_gap),
    RequestMetric("total_latency_ms", "total", "ms", "Total latency", _total),
    RequestMetric("rtf", "rtf", "", "RTF (latency / audio)", _rtf),
    RequestMetric("audio_s", "audio", "s", "Audio seconds", lambda r: r.audio_s),
    RequestMetric("stall_count", "stalls", "", "Playback stalls", lambda r: float(playback_stalls(r)[0])),
    RequestMetric("stall_s", "stall_time", "s", "Playback stall time", lambda r: playback_stalls(r)[1]),
    RequestMetric("first_chunk_latency_corrected_ms", "first_chunk_corrected", "ms",
                  "First chunk from intended send", _first_corrected),
    RequestMetric("total_latency_corrected_ms", "total_corrected", "ms", "Total from intended send",
                  _total_corrected),
)
BY_NAME = {m.name: m for m in REQUEST_METRICS}
BY_ALIAS = {m.alias: m for m in REQUEST_METRICS}


def record_json(record: RequestRecord) -> dict[str, Any]:
    """The raw record plus its per-request metric values: one line of records.jsonl."""
    data = asdict(record)
    data["ok"] = record.ok
    data["audio_s"] = round(record.audio_s, 6)
    data["sent_s"] = round(record.sent - record.run_start, 6)
    for metric in REQUEST_METRICS:
        value = metric.of(record)
        data[metric.name] = None if value is None else round(value, 6)
    return data


def stats(values: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """Exact percentiles (numpy linear interpolation, as the upstream client), mean, max, min, count."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {k: (0 if k == "count" else None) for k in STAT_KEYS}
    p = np.percentile(arr, PERCENTILES)
    out: dict[str, float | None] = {f"p{q}": float(v) for q, v in zip(PERCENTILES, p)}
    out.update(mean=float(arr.mean()), max=float(arr.max()), min=float(arr.min()), count=int(arr.size))
    return out


def values(records: Iterable[RequestRecord], metric: RequestMetric) -> list[float]:
    out = []
    for r in records:
        if metric.only_ok and not r.ok:
            continue
        v = metric.of(r)
        if v is not None:
            out.append(v)
    return out


def rtf_histogram(rtfs: Sequence[float], edges: Sequence[float] | None = None) -> dict[str, list[float]]:
    """Counts per RTF bin; 1.0 (real time) is always an edge so 'slower than real time' is one sum."""
    edges = list(edges or (0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0))
    counts, _ = np.histogram(np.clip(rtfs, edges[0], edges[-1]), bins=edges) if len(rtfs) else ([0] * (len(edges) - 1), None)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def summarize(records: Sequence[RequestRecord], *, wall_s: float) -> dict:
    """Run-level aggregates over the measured (non-warmup) records; the ``metrics`` part of summary.json."""
    # Warmup requests and those cut off by the user stopping the run are not measurements.
    measured = [r for r in records if not r.warmup and r.error_kind != ERR_CANCELLED]
    cancelled = sum(1 for r in records if r.error_kind == ERR_CANCELLED)
    ok = [r for r in measured if r.ok]
    failed = len(measured) - len(ok)
    errors = {k: 0 for k in ERROR_KINDS}
    flags = {k: 0 for k in AUDIO_FLAGS}
    for r in measured:
        if r.error_kind:
            errors[r.error_kind] = errors.get(r.error_kind, 0) + 1
        for f in r.flags:
            flags[f] = flags.get(f, 0) + 1
    metrics = {m.name: stats(values(measured, m)) for m in REQUEST_METRICS}
    rtfs = values(measured, BY_NAME["rtf"])
    audio_total = sum(r.audio_s for r in ok)
    slower = sum(1 for v in rtfs if v > 1.0)
    return {
        "requests": {"total": len(measured), "ok": len(ok), "failed": failed, "cancelled": cancelled,
                     "warmup": sum(1 for r in records if r.warmup)},
        "error_rate": failed / len(measured) if measured else 0.0,
        "errors": errors,
        "audio_flags": flags,
        "metrics": metrics,
        "rtf_histogram": rtf_histogram(rtfs),
        "slower_than_realtime_share": slower / len(rtfs) if rtfs else 0.0,
        "throughput": {
            "requests_per_s": len(ok) / wall_s if wall_s > 0 else 0.0,
            "audio_s_per_s": audio_total / wall_s if wall_s > 0 else 0.0,
        },
        "audio_s_total": audio_total,
        # The upstream client's "RTF": the whole run's wall time over all audio produced.
        "run_wall_rtf": wall_s / audio_total if audio_total > 0 else None,
    }
