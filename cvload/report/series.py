"""What the figures draw, computed with numpy from results folders and thinned to the pixels a figure has: a
100,000-request run becomes a few hundred points per curve, so the report's size and drawing time do not grow
with the run.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvload.errors import CvloadError
from cvload.measure.barge_in_summary import FILE as BARGE_IN_FILE
from cvload.measure.metrics import MISSING, lookup
from cvload.results.folder import RecordColumns, RunResults, SweepLevel, SweepResults
from cvload.results.records import ERR_BARGED_IN, ERROR_KINDS

CDF_POINTS = 600  # a CDF is drawn through this many quantiles at most
TIME_BINS = 300  # a time series gets at most this many bins (a figure is ~900 px wide)
MIN_BIN_S = 1.0


@dataclass(frozen=True)
class ObjectiveLine:
    """An objective drawn on a figure: ``value`` in the figure's unit, ``quantile`` (0..1) for a percentile;
    ``passed`` None where several runs share the line (each run's verdict is in the objectives table)."""

    text: str
    value: float
    quantile: float | None
    passed: bool | None


def objective_lines(summary: dict[str, Any], metric: str) -> list[ObjectiveLine]:
    """The run's objectives on one per-request metric (summary name), or on the statistics at a dotted summary
    path (``barge_in.release_ms``), from its ``slo`` verdicts."""
    from cvload.measure.slo import parse_objective

    out = []
    for verdict in summary.get("slo") or []:
        try:
            obj = parse_objective(verdict["objective"])
        except (CvloadError, KeyError, TypeError):
            continue  # an objective this version cannot read: left off the figure, still in the table
        prefix = f"{metric}." if "." in metric else f"metrics.{metric}."
        if not obj.metric.startswith(prefix):
            continue
        stat = obj.metric[len(prefix):]
        quantile = float(stat[1:]) / 100 if stat.startswith("p") else 1.0 if stat == "max" else None
        out.append(ObjectiveLine(obj.text, obj.threshold * obj.factor, quantile, verdict.get("verdict") == "pass"))
    return out


def cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (sorted values) and y (share of requests at or below x), at most CDF_POINTS points."""
    values = np.sort(values)
    n = values.size
    if n == 0:
        return values, values
    if n <= CDF_POINTS:
        return values, np.arange(1, n + 1) / n
    y = np.linspace(0.0, 1.0, CDF_POINTS)
    return np.quantile(values, y), y


def spread_max(arrays: list[np.ndarray], q: float = 99.5, floor: float = 0.0) -> float:
    """A histogram's upper edge: the q-th percentile over every run, so one outlier does not squash the rest."""
    tops = [float(np.percentile(a, q)) for a in arrays if a.size]
    return max([floor, *tops]) * 1.05 if tops else max(floor, 1.0)


def share_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of requests per bin; values past the last edge count in the last bin (drawn as "or more")."""
    if values.size == 0:
        return np.zeros(edges.size - 1)
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return counts / values.size


@dataclass
class TimeSeries:
    """A run over time, in bins of ``bin_s`` seconds of finish time since the run started."""

    bin_s: float
    t: np.ndarray  # bin centres, s
    first_p50: np.ndarray  # ms, NaN where no request finished ok in the bin
    first_p95: np.ndarray
    throughput: np.ndarray  # successful requests finished per second
    errors: dict[str, np.ndarray]  # failed requests per bin, by error kind (and "audio" for audio flags)
    stalls: np.ndarray  # playback stalls of the requests finished in the bin
    gpu_t: np.ndarray  # telemetry: s since run start
    gpu_util: np.ndarray  # 0..1


def duration(run: RunResults) -> float:
    """Seconds from the run's start to the last measured request's finish."""
    c = run.columns
    ends = c.end_s[c.measured]
    return float(ends.max()) if ends.size else 0.0


def bin_width(duration_s: float) -> float:
    """A round bin width giving at most TIME_BINS bins, and at least ten where bins of a second would be fewer."""
    nice = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]
    target = max(duration_s / TIME_BINS, min(MIN_BIN_S, duration_s / 10))
    n = max([0, *(i for i, w in enumerate(nice) if w <= target)])
    while n + 1 < len(nice) and duration_s / nice[n] > TIME_BINS:
        n += 1
    return float(nice[n])


_TIME_SERIES: weakref.WeakKeyDictionary[RunResults, TimeSeries] = weakref.WeakKeyDictionary()


def time_series(run: RunResults, width: float) -> TimeSeries:
    """The run in bins of ``width`` s (computed once per run and width: several figures draw it)."""
    cached = _TIME_SERIES.get(run)
    if cached is None or cached.bin_s != width:
        cached = _TIME_SERIES[run] = _time_series(run, width)
    return cached


def _time_series(run: RunResults, width: float) -> TimeSeries:
    c: RecordColumns = run.columns
    measured = c.measured
    nbins = max(1, math.ceil(duration(run) / width))
    index = np.minimum((c.end_s / width).astype(int), nbins - 1)
    t = (np.arange(nbins) + 0.5) * width

    ok = measured & c.ok
    first = c.metrics["first_chunk_latency_ms"]
    good = ok & ~np.isnan(first)
    order = np.argsort(index[good], kind="stable")
    idx, vals = index[good][order], first[good][order]
    p50 = np.full(nbins, np.nan)
    p95 = np.full(nbins, np.nan)
    if idx.size:
        bins, starts = np.unique(idx, return_index=True)
        for b, chunk in zip(bins, np.split(vals, starts[1:])):
            p50[b], p95[b] = np.percentile(chunk, (50, 95))
    throughput = np.bincount(index[ok], minlength=nbins)[:nbins] / width

    failed = measured & ~c.ok
    errors = {}
    kinds = {k for k in c.error_kind[failed] if k is not None}
    for kind in [*(k for k in ERROR_KINDS if k in kinds), *sorted(kinds - set(ERROR_KINDS))]:
        mask = failed & (c.error_kind == kind)
        if mask.any():
            errors[kind] = np.bincount(index[mask], minlength=nbins)[:nbins].astype(float)
    flagged = failed & np.array([k is None for k in c.error_kind], dtype=bool)
    if flagged.any():
        errors["audio check"] = np.bincount(index[flagged], minlength=nbins)[:nbins].astype(float)
    stall_counts = np.nan_to_num(c.metrics["stall_count"])
    stalls = np.bincount(index[ok], weights=stall_counts[ok], minlength=nbins)[:nbins]

    gpu_t, gpu_util = gpu_series(run)
    return TimeSeries(width, t, p50, p95, throughput, errors, stalls, gpu_t, gpu_util)


def gpu_series(run: RunResults) -> tuple[np.ndarray, np.ndarray]:
    """GPU utilization (all GPUs as one, 0..1) from telemetry.jsonl, on the records' time axis."""
    start = run.columns.run_start
    points = [(s["t"], s["gpu"]["util"]) for s in run.telemetry
              if isinstance(s.get("gpu"), dict) and isinstance(s["gpu"].get("util"), int | float)
              and isinstance(s.get("t"), int | float)]
    if not points or start is None:
        return np.zeros(0), np.zeros(0)
    arr = np.array(points, dtype=float)
    arr[:, 0] -= start
    if arr.shape[0] > TIME_BINS * 2:  # thin by averaging neighbours: a sample a pixel is plenty
        step = math.ceil(arr.shape[0] / (TIME_BINS * 2))
        cut = arr.shape[0] // step * step
        arr = arr[:cut].reshape(-1, step, 2).mean(axis=1)
    return arr[:, 0], arr[:, 1]


STAGES = ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms")


def stage_times(run: RunResults) -> list[tuple[str, dict[str, float]]]:
    """Per model of server_stats.json: mean time per request in each stage, ms (pipeline order as written)."""
    stats = run.server_stats or {}
    out = []
    for model in stats.get("models") or []:
        if not isinstance(model, dict) or not model.get("count"):
            continue
        times = {s: float(model.get(s) or 0.0) for s in STAGES}
        out.append((str(model.get("model", "?")), times))
    return out


# ---- sweeps ---------------------------------------------------------------------------------------------------
GOODPUT_KEYS = ("goodput.requests_per_s", "goodput_requests_per_s", "goodput")


def level_value(level: SweepLevel, name: str) -> float | None:
    """A level's value at a summary path: from its run's summary.json, else from sweep.json's level summary
    (which may write ``first_chunk_latency_ms.p95`` nested or flat)."""
    sources = [level.run.summary] if level.run is not None else []
    sources.append(level.summary)
    for source in sources:
        for candidate in (name, name.removeprefix("metrics."), name.replace("metrics.", "", 1).replace(".", "_")):
            value = lookup(source, candidate)
            if value is MISSING:
                value = source.get(candidate, MISSING)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    return None


def goodput(level: SweepLevel) -> float | None:
    for key in GOODPUT_KEYS:
        value = level_value(level, key)
        if value is not None:
            return value
    return None


def by_load(sweep: SweepResults) -> list[SweepLevel]:
    """The levels in order of load (a sweep measures them in another order when it bisects)."""
    return sorted(sweep.levels, key=lambda level: level.value)


def capacity_value(sweep: SweepResults) -> float | None:
    value = sweep.capacity.get("value")
    return float(value) if isinstance(value, int | float) else None


def knee_value(sweep: SweepResults) -> float | None:
    knee = sweep.knee
    if isinstance(knee, dict):
        knee = knee.get("value")
    return float(knee) if isinstance(knee, int | float) and not isinstance(knee, bool) else None


def sweep_objectives(sweep: SweepResults, metric: str) -> list[ObjectiveLine]:
    """The objectives of the sweep's levels on one metric (every level is judged on the same ones; the verdicts
    differ by level, so the lines carry none)."""
    for level in sweep.levels:
        summary = level.run.summary if level.run is not None else level.summary
        lines = objective_lines(summary, metric)
        if lines:
            return [dataclasses.replace(line, passed=None) for line in lines]
    return []


# ---- barge-in (--barge-in) ----------------------------------------------------------------------------------------
def release_times(run: RunResults) -> tuple[np.ndarray, str]:
    """The abandoned requests' release times (ms) from barge_in.jsonl and where they come from: the server's
    trace (Triton's request trace or the emulator's own) where the summary's release is the server's, else the
    client (abandon -> its call closed). Empty without barge-in."""
    rows = _jsonl(run.path / BARGE_IN_FILE)
    section = run.summary.get("barge_in") or {}
    if rows and section.get("release_source", "server") == "server" and any("server_release_ms" in r for r in rows):
        source = section.get("server_release_source") or "server"
        return (np.array([r["server_release_ms"] for r in rows if "server_release_ms" in r], dtype=float),
                source.replace("_", " "))
    return np.array([r["client_release_ms"] for r in rows], dtype=float), "client"


def survivors_first_chunk(run: RunResults) -> np.ndarray:
    """First-chunk latency (ms) of the measured requests that were not abandoned."""
    c = run.columns
    keep = c.measured & c.ok & (c.error_kind != ERR_BARGED_IN)
    column = c.metrics["first_chunk_latency_ms"][keep]
    return column[~np.isnan(column)]


def baseline_of(run: RunResults) -> RunResults | None:
    """The paired run without barge-in (``--barge-in-baseline`` writes it to ``baseline/`` inside the run)."""
    folder = run.path / "baseline"
    summary = _json(folder / "summary.json")
    return RunResults(folder, summary) if isinstance(summary, dict) else None


def _jsonl(path: Any) -> list[dict[str, Any]]:
    import json

    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _json(path: Any) -> Any:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
