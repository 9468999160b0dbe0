"""Did a change make a deployment worse? Two results folders, metric by metric, with verdicts CI can act on.

A metric **regressed** when its change is worse than the threshold (``--threshold``: 5% by default, per metric
overridable, e.g. ``first_chunk.p95=10ms``) AND the bootstrap confidence interval of the change lies entirely on
the worse side of zero: each run's per-request values are resampled with replacement (seeded, so the verdict is
reproducible), the statistic is recomputed on each resample and the difference new - base collected. A large but
noisy change (one slow request moving a p99 of 40) is reported as ``uncertain``, never as a regression, so noise
does not fail a build; a small but certain one is ``ok`` because it stays inside the threshold.

What is resampled, per metric:

* latencies, RTF, stalls: the per-request values the summary's statistics were computed from;
* error rate: one 0/1 value per measured request (failed or not);
* throughput: successful completions per second in 5 to 20 equal time bins of the measured window (their mean is
  the summary's throughput); the bins are resampled (a block bootstrap: completions within a bin stay together).
  With few bins the interval is wide, so a throughput change of a short run tends to be "uncertain";
* goodput (``goodput.requests_per_s``, in a summary wherever per-request objectives were given): as throughput,
  times the run's share of good successful requests as measured (records do not say which request met every
  objective, so that share is not resampled);
* a sweep's capacity: no interval (a level either met the objectives or not); the threshold alone decides. Its
  levels are matched by load (kind and value), each compared as two runs.

Folders are read by cvload.results.folder (the one reader, shared with ``cvload report``): per-request values come
from its numpy columns, so a run of 100,000 requests costs about a second to read.

Two limits keep the verdicts honest where the records cannot: a percentile is judged only where each run has at
least ``MIN_TAIL`` values beyond it (the bootstrap of a run's largest values is far too sure of itself), and a
latency change no larger than the runs' own timing error (event-loop lag, see cvload/measure/loop_health.py: its p50 for a
p50 or mean, its p99 for a tail percentile) is not a regression. Both make a row ``uncertain`` at most, with a note saying why.

Which direction is worse is part of each metric's declaration: latency up, throughput/goodput/capacity down.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvload.apis import DEFAULT_API
from cvload.errors import UsageError
from cvload.measure.metrics import BY_ALIAS, lookup
from cvload.measure.slo import parse_objective
from cvload.results.folder import Results, RunResults, SweepResults, open_results

COMPARE_SCHEMA = "cvload.compare/1"
RUN, SWEEP = "run", "sweep"  # Comparison.kind
UP, DOWN = "up", "down"  # which change is worse
REGRESSION, IMPROVED, OK, UNCERTAIN, NO_DATA = "regression", "improved", "ok", "uncertain", "no_data"
DEFAULT_THRESHOLD = "5%"
DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
_BATCH_VALUES = 2_000_000  # resampled values held in memory at once
# A percentile is judged only where each run has at least this many values beyond it (p95: 100 requests, p99:
# 500). Below that the percentile is one of the run's few largest values, whose bootstrap interval is far too
# narrow (the resamples cannot go beyond the largest value seen): a p99 of 40 requests moved by one slow second
# chunk would otherwise read as a certain change. Such a row is at most "uncertain".
MIN_TAIL = 5

# Draws of a statistic over bootstrap resamples of the values: (values, resamples, rng) -> (resamples,)
Resample = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
Samples = Callable[[RunResults], np.ndarray]


@dataclass(frozen=True)
class CompareMetric:
    """One row of the comparison: where its value is in summary.json and how to bootstrap it."""

    name: str  # as in objectives and --threshold (``first_chunk.p95``, ``error_rate``)
    title: str
    path: str  # dotted path in summary.json
    unit: str  # "ms", "share", "req/s" or "" (a ratio or count)
    worse: str  # UP or DOWN
    samples: Samples | None  # per-run values to resample; None: no interval
    resample: Resample | None
    optional: bool = False  # shown only when a run has it (open-loop latencies, goodput)
    tail: float | None = None  # a percentile's share of values beyond it (0.05 for p95): see MIN_TAIL

    def too_few(self, n: int) -> bool:
        """Too few values beyond this percentile for its interval to mean anything (see MIN_TAIL)."""
        return self.tail is not None and n * self.tail < MIN_TAIL


def _request_values(alias: str) -> Samples:
    name = BY_ALIAS[alias].name
    return lambda run: run.columns.values(name)


def _failed(run: RunResults) -> np.ndarray:
    c = run.columns
    return (~c.ok[c.measured]).astype(float)


def _measure_start(run: RunResults) -> float:
    """When measurement began (s after the run started), as the engine marks it: the run's start without warmup
    requests, else the first measured request's send (cvload.measure.metrics.measure_start, on the columns' clock)."""
    c = run.columns
    counted = ~c.warmup
    return float(c.sent_s[counted].min()) if c.warmup.any() and counted.any() else 0.0


def _completion_rates(run: RunResults) -> np.ndarray:
    """Successful completions per second in equal time bins of the measured window (5 to 20 bins, about 5
    completions each): their mean is the run's throughput, and resampling bins keeps the regularity of completions
    within a bin that resampling single gaps would lose."""
    c = run.columns
    measured = c.measured
    ends = np.sort(c.end_s[measured & c.ok])
    if ends.size == 0:
        return np.zeros(0)
    start, stop = _measure_start(run), float(c.end_s[measured].max())
    if stop <= start:
        return np.zeros(0)
    bins = int(min(20, max(5, ends.size // 5)))
    counts, _ = np.histogram(np.clip(ends, start, stop), bins=bins, range=(start, stop))
    return counts / ((stop - start) / bins)


def resample_percentile(q: float) -> Resample:
    """The q-th percentile (numpy's linear interpolation, as the summary) of each resample, drawn exactly in O(1)
    per resample: a resample's k-th smallest value is the original sorted value at floor(U * n), U the k-th
    smallest of n uniforms, which is Beta(k, n - k + 1); the next one up follows from the gap above it. Same
    distribution as resampling all n values, so 100,000 records cost what 40 do."""

    def draw(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
        x = np.sort(values)
        n = x.size
        h = (n - 1) * q / 100.0
        k = int(math.floor(h))
        frac = h - k
        u1 = rng.beta(k + 1, n - k, size=resamples)
        i1 = np.minimum((u1 * n).astype(np.int64), n - 1)
        if frac == 0 or k + 1 >= n:
            return x[i1]
        u2 = u1 + (1.0 - u1) * rng.beta(1, n - k - 1, size=resamples)
        i2 = np.minimum((u2 * n).astype(np.int64), n - 1)
        return x[i1] + frac * (x[i2] - x[i1])

    return draw


def resample_mean(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of each resample: by multinomial counts of the distinct values where they are few (0/1 failures,
    stall counts), else by resampling the values in batches."""
    distinct, counts = np.unique(values, return_counts=True)
    n = values.size
    if distinct.size <= 256:
        return rng.multinomial(n, counts / n, size=resamples) @ distinct / n
    batch = max(1, _BATCH_VALUES // n)
    out = []
    for start in range(0, resamples, batch):
        idx = rng.integers(0, n, size=(min(batch, resamples - start), n))
        out.append(values[idx].mean(axis=-1))
    return np.concatenate(out)


def _good_share_of_ok(run: RunResults) -> float:
    """Share of successful requests that were good: goodput / throughput as the run measured them (the summary's
    ``goodput.share`` is of all measured requests, failed ones included, so it would count failures twice)."""
    good = _number(lookup(run.summary, GOODPUT_PATH))
    throughput = _number(lookup(run.summary, "throughput.requests_per_s"))
    if good is None or throughput is None or throughput <= 0:
        return 0.0
    return good / throughput


def _request_rows(alias: str, title: str, stats: Sequence[str], *, optional: bool = False) -> list[CompareMetric]:
    metric = BY_ALIAS[alias]
    unit = {"ms": "ms", "s": "s", "share": "share"}.get(metric.unit, "")
    of = _request_values(alias)
    rows = []
    for stat in stats:
        fn = resample_mean if stat == "mean" else resample_percentile(float(stat[1:]))
        tail = None if stat == "mean" else 1.0 - float(stat[1:]) / 100.0
        rows.append(CompareMetric(f"{alias}.{stat}", f"{title} {stat}", f"metrics.{metric.name}.{stat}", unit, UP,
                                  of, fn, optional=optional, tail=tail))
    return rows


PCTS = ("p50", "p95", "p99")
GOODPUT_PATH = "goodput.requests_per_s"  # as cvload.measure.metrics declares it (summary.json and sweep.json levels)
METRICS: tuple[CompareMetric, ...] = (
    *_request_rows("first_chunk", "First chunk", PCTS),
    *_request_rows("second_chunk", "Second chunk", PCTS),
    *_request_rows("total", "Total latency", PCTS),
    *_request_rows("rtf", "RTF", PCTS),
    *_request_rows("first_chunk_corrected", "First chunk from intended send", ("p95", "p99"), optional=True),
    # Listening (--onset, --check-content): only where both runs measured them
    *_request_rows("first_audible", "First audible", PCTS, optional=True),
    *_request_rows("content_error", "Content error", ("p50", "p95"), optional=True),
    *_request_rows("required_prebuffer", "Prebuffer needed", ("p95", "p99"), optional=True),
    CompareMetric("stalls.mean", "Playback stalls per request", "metrics.stall_count.mean", "", UP,
                  _request_values("stalls"), resample_mean),
    CompareMetric("error_rate", "Error rate", "error_rate", "share", UP, _failed, resample_mean),
    CompareMetric("throughput.requests_per_s", "Throughput", "throughput.requests_per_s", "req/s", DOWN,
                  _completion_rates, resample_mean),
    CompareMetric(GOODPUT_PATH, "Goodput", GOODPUT_PATH, "req/s", DOWN, _completion_rates, resample_mean,
                  optional=True),
)
CAPACITY = CompareMetric("capacity", "Capacity", "capacity.value", "", DOWN, None, None)
BY_METRIC = {m.name: m for m in (*METRICS, CAPACITY)}


# ---------------------------------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class Threshold:
    """How much worse a metric may get: ``relative`` (a fraction of the base) or ``absolute`` (summary units)."""

    text: str
    relative: float | None = None
    absolute: float | None = None

    def allows(self, worse_by: float, base: float) -> bool:
        """True while a change ``worse_by`` (> 0 is worse) stays within the threshold."""
        if self.absolute is not None:
            return worse_by <= self.absolute
        assert self.relative is not None
        return worse_by <= self.relative * abs(base)


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RELATIVE = re.compile(rf"^\s*({_NUMBER})\s*%\s*$")
_ABSOLUTE = re.compile(rf"^\s*({_NUMBER})\s*([A-Za-z]*)\s*$")
THRESHOLD_HELP = ("N% (of the base) for every metric, or METRIC=VALUE for one: first_chunk.p95=10ms, "
                  "error_rate=0.5pp (percentage points), throughput.requests_per_s=3%")


def _names_hint(name: str) -> str:
    names = [m.name for m in (*METRICS, CAPACITY)]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return (f"did you mean {close[0]}? " if close else "") + "compared metrics: " + ", ".join(names)


def _metric_named(spec: str, name: str) -> CompareMetric:
    """A compared metric by its name, or by any name the objective parser resolves to the same summary value."""
    if name in BY_METRIC:
        return BY_METRIC[name]
    try:
        path = parse_objective(f"{name}<0").metric
    except UsageError:
        raise UsageError(f"--threshold {spec!r}: unknown metric {name!r}", hint=_names_hint(name)) from None
    for metric in METRICS:
        if metric.path == path:
            return metric
    raise UsageError(f"--threshold {spec!r}: {name} is not one of the metrics compare judges",
                     hint=_names_hint(name))


def _relative(spec: str, text: str) -> Threshold | None:
    m = _RELATIVE.match(text)
    if not m:
        return None
    value = float(m.group(1))
    if value < 0:
        raise UsageError(f"--threshold {spec!r} must not be negative")
    return Threshold(text=text.strip(), relative=value / 100.0)


def _absolute(spec: str, metric: CompareMetric, text: str) -> Threshold:
    m = _ABSOLUTE.match(text)
    if not m:
        raise UsageError(f"--threshold {spec!r}: {text!r} is not a number with a unit", hint=THRESHOLD_HELP)
    number, unit = float(m.group(1)), m.group(2)
    if number < 0:
        raise UsageError(f"--threshold {spec!r} must not be negative")
    if metric.unit == "share" and unit == "pp":  # percentage points of a share
        return Threshold(text=text.strip(), absolute=number / 100.0)
    if metric.name in (CAPACITY.name, GOODPUT_PATH):  # judged on their own, not through an objective
        if unit:
            raise UsageError(f"--threshold {spec!r}: {metric.name} takes a bare number (in {metric.unit or 'levels'})"
                             " or N%", hint=THRESHOLD_HELP)
        return Threshold(text=text.strip(), absolute=number)
    try:  # the objective parser knows every unit a metric may be written in (ms or s for times)
        objective = parse_objective(f"{metric.name}<{number}{unit}")
    except UsageError as exc:
        allowed = "pp or a bare fraction" if metric.unit == "share" else "ms or s" if metric.unit in ("ms", "s") \
            else "a bare number"
        raise UsageError(f"--threshold {spec!r}: unit {unit!r} does not apply to {metric.name}",
                         hint=f"use N% (relative) or {allowed}") from exc
    return Threshold(text=text.strip(), absolute=objective.threshold * objective.factor)


def parse_thresholds(specs: Sequence[str]) -> tuple[Threshold, dict[str, Threshold]]:
    """``--threshold`` values -> the default threshold and per-metric overrides (by compared metric name)."""
    default = Threshold(text=DEFAULT_THRESHOLD, relative=0.05)
    per_metric: dict[str, Threshold] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep:
            threshold = _relative(spec, spec)
            if threshold is None:
                raise UsageError(f"--threshold {spec!r}: a default threshold is a percentage, e.g. 5%",
                                 hint=THRESHOLD_HELP)
            default = threshold
            continue
        metric = _metric_named(spec, name.strip())
        per_metric[metric.name] = _relative(spec, value) or _absolute(spec, metric, value)
    return default, per_metric


# ------------------------------------------------------------------------------------------------------ bootstrap
def bootstrap_delta(base: np.ndarray, new: np.ndarray, resample: Resample, *, resamples: int, confidence: float,
                    rng: np.random.Generator, scale: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float] | None:
    """Percentile interval of stat(new*) * scale[1] - stat(base*) * scale[0] over resamples of each run."""
    if base.size == 0 or new.size == 0:
        return None
    deltas = resample(new, resamples, rng) * scale[1] - resample(base, resamples, rng) * scale[0]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(deltas, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------- comparison
@dataclass
class Row:
    metric: str
    title: str
    unit: str
    worse: str
    base: float | None
    new: float | None
    delta: float | None
    percent: float | None  # of the base; None where the base is 0 (and the change is not)
    ci: tuple[float, float] | None  # interval of the delta; None where none can be computed
    threshold: str
    verdict: str
    level: str | None = None  # a sweep's level ("num_tasks 8"); None for a run or the capacity
    note: str | None = None  # why a verdict is weaker than the numbers alone suggest


@dataclass
class Comparison:
    base: str
    new: str
    kind: str  # RUN or SWEEP
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == REGRESSION]


@dataclass(frozen=True)
class Settings:
    default: Threshold = Threshold(text=DEFAULT_THRESHOLD, relative=0.05)
    per_metric: dict[str, Threshold] = field(default_factory=dict)
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0

    def threshold(self, metric: str) -> Threshold:
        return self.per_metric.get(metric, self.default)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _beyond_noise(metric: CompareMetric, ci: tuple[float, float] | None, *, worse: bool) -> bool:
    """The whole interval of the change lies on one side of zero (the worse side, or the better one)."""
    if ci is None:
        return metric.samples is None  # a value with no interval by nature (capacity): the threshold decides
    up = (metric.worse == UP) == worse  # is the side asked for an increase?
    return ci[0] > 0 if up else ci[1] < 0


def judge(metric: CompareMetric, base: float | None, new: float | None, ci: tuple[float, float] | None,
          threshold: Threshold, *, level: str | None = None, too_few: str | None = None,
          timing_error: float = 0.0) -> Row:
    """One row: the change, and whether it is beyond the threshold and beyond noise (the interval)."""
    if base is None or new is None:
        return Row(metric.name, metric.title, metric.unit, metric.worse, base, new, None, None, ci,
                   threshold.text, NO_DATA, level)
    delta = new - base
    percent = delta / abs(base) if base != 0 else (0.0 if delta == 0 else None)
    worse_by = delta if metric.worse == UP else -delta
    verdict = OK
    if not threshold.allows(worse_by, base):  # worse beyond the threshold: a regression unless it may be noise
        verdict = REGRESSION if _beyond_noise(metric, ci, worse=True) else UNCERTAIN
    elif not threshold.allows(-worse_by, base) and _beyond_noise(metric, ci, worse=False):
        verdict = IMPROVED
    note = too_few
    if verdict in (REGRESSION, IMPROVED) and abs(delta) <= timing_error:
        note = f"within the runs' own timing error (event-loop lag {timing_error:.1f} ms)"
    if note and verdict in (REGRESSION, IMPROVED):
        verdict = UNCERTAIN if verdict == REGRESSION else OK
    return Row(metric.name, metric.title, metric.unit, metric.worse, base, new, delta, percent, ci,
               threshold.text, verdict, level, note)


def _compare_metric(metric: CompareMetric, index: int, base: RunResults, new: RunResults, settings: Settings,
                    level: str | None, samples: Callable[[RunResults, Samples], np.ndarray]) -> Row | None:
    b, n = _number(lookup(base.summary, metric.path)), _number(lookup(new.summary, metric.path))
    if metric.optional and b is None and n is None:
        return None
    scale = (_good_share_of_ok(base), _good_share_of_ok(new)) if metric.path == GOODPUT_PATH else (1.0, 1.0)
    ci, too_few = None, None
    if metric.samples is not None and metric.resample is not None and b is not None and n is not None:
        rng = np.random.default_rng([settings.seed, index])
        samples_base, samples_new = samples(base, metric.samples), samples(new, metric.samples)
        ci = bootstrap_delta(samples_base, samples_new, metric.resample, resamples=settings.resamples,
                             confidence=settings.confidence, rng=rng, scale=scale)
        fewest = min(samples_base.size, samples_new.size)
        if metric.too_few(fewest):
            need = math.ceil(MIN_TAIL / (metric.tail or 1.0) - 1e-9)
            too_few = f"{fewest} values: a {metric.name.rsplit('.', 1)[-1]} is judged from {need} per run"
    timing_error = 0.0
    if metric.unit == "ms":  # a p50 may be off by the loop's typical lag, a tail by its tail lag
        lag = "p50" if metric.name.endswith((".p50", ".mean")) else "p99"
        timing_error = max(_loop_lag(base, lag), _loop_lag(new, lag))
    return judge(metric, b, n, ci, settings.threshold(metric.name), level=level, too_few=too_few,
                 timing_error=timing_error)


def _loop_lag(run: RunResults, stat: str) -> float:
    """How late the run's event loop answered (ms): latencies it measured may be inflated by about that much."""
    return _number(lookup(run.summary, f"client.loop_lag_ms.{stat}")) or 0.0


def _sweep_kind(sweep: SweepResults) -> str | None:
    """What the sweep's levels are: "concurrency" (closed loop) or "rate" (open loop)."""
    kind = sweep.sweep.get("kind") or sweep.capacity.get("kind")
    if kind is None and sweep.levels:
        kind = sweep.levels[0].kind
    return kind


def _check_compatible(base: Results, new: Results) -> None:
    """Mode and server API change what every latency means, and a sweep's kind of level what its capacity counts:
    comparing across them is a usage error."""
    for key, flag in (("mode", "--mode"), ("api", "--api")):
        a, b = base.settings.get(key), new.settings.get(key)
        if key == "api":  # results from before other APIs name none: the default's
            a, b = a or DEFAULT_API, b or DEFAULT_API
        if a is not None and b is not None and a != b:
            raise UsageError(f"{new.path} was measured with {flag} {b}, {base.path} with {flag} {a}: their latencies "
                             "do not compare", hint=f"compare runs of the same {flag}")
    if isinstance(base, SweepResults) and isinstance(new, SweepResults):
        a, b = _sweep_kind(base), _sweep_kind(new)
        if a and b and a != b:
            raise UsageError(f"{new.path} sweeps {b}, {base.path} sweeps {a}: their levels and capacities do not "
                             "compare", hint="compare sweeps over the same kind of level (--num-tasks or --rate)")


def _notes(base: RunResults, new: RunResults) -> list[str]:
    """What a reader should know before trusting the verdicts (not errors: a change of load may be the point)."""
    notes = []
    for key in ("protocol", "model", "num_tasks", "rate"):
        a, b = base.settings.get(key), new.settings.get(key)
        if a != b:
            notes.append(f"{key} differs: {a} (base) vs {b} (new)")
    for run, which in ((base, "base"), (new, "new")):
        status = run.summary.get("status")
        if status not in (None, "completed"):
            notes.append(f"{which} run is {status}")
        measured = int(run.columns.measured.sum())
        if measured < 20:
            notes.append(f"{which} run measured only {measured} requests: intervals are wide")
        for warning in (run.summary.get("client") or {}).get("warnings") or []:
            notes.append(f"{which}: {warning}")
    return notes


def compare_runs(base: RunResults, new: RunResults, settings: Settings, *, level: str | None = None) -> list[Row]:
    cache: dict[tuple[int, Samples], np.ndarray] = {}

    def samples(run: RunResults, of: Samples) -> np.ndarray:  # first_chunk's values serve p50, p95 and p99
        key = (id(run), of)
        if key not in cache:
            cache[key] = of(run)
        return cache[key]

    rows = []
    for index, metric in enumerate(METRICS):
        row = _compare_metric(metric, index, base, new, settings, level, samples)
        if row is not None:
            rows.append(row)
    return rows


def _measured_levels(sweep: SweepResults) -> dict[tuple[str, float], RunResults]:
    """The sweep's levels whose run folder it holds, by load (kind, value): sweeps measure in their own order
    (bisect adds levels), so a level is found by its load, never by its folder's number."""
    levels: dict[tuple[str, float], RunResults] = {}
    for level in sweep.levels:
        if level.run is not None:
            levels.setdefault((level.kind, level.value), level.run)
    return levels


def _capacity_row(base: SweepResults, new: SweepResults, settings: Settings) -> Row:
    cap_base, cap_new = base.capacity, new.capacity
    b, n = _number(cap_base.get("value")), _number(cap_new.get("value"))
    row = judge(CAPACITY, b, n, None, settings.threshold(CAPACITY.name))
    if n is None and b is not None and "value" in cap_new:  # sweep.json's null: no level met the objectives
        row.verdict, row.note = REGRESSION, "no level of the new sweep met the objectives"
    return row


def compare_sweeps(base: SweepResults, new: SweepResults, settings: Settings) -> Comparison:
    comparison = Comparison(str(base.path), str(new.path), SWEEP)
    comparison.rows.append(_capacity_row(base, new, settings))
    for sweep, which in ((base, "base"), (new, "new")):
        cap = sweep.capacity
        if cap.get("bracket") is not None:
            comparison.notes.append(f"{which} capacity bracket {cap.get('bracket')}"
                                    + (f" (by {cap['by']})" if cap.get("by") else ""))
        status = sweep.sweep.get("status")
        if status not in (None, "completed"):
            comparison.notes.append(f"{which} sweep is {status}")
    if base.capacity.get("by") and new.capacity.get("by") and base.capacity["by"] != new.capacity["by"]:
        comparison.notes.append(f"capacity found by {base.capacity['by']} (base) vs by {new.capacity['by']} (new): "
                                "the two numbers answer different questions")
    objectives_base, objectives_new = base.sweep.get("objectives"), new.sweep.get("objectives")
    if objectives_base is not None and objectives_new is not None and objectives_base != objectives_new:
        comparison.notes.append(f"objectives differ: {objectives_base} (base) vs {objectives_new} (new)")
    levels_base, levels_new = _measured_levels(base), _measured_levels(new)
    for key in sorted(k for k in levels_base if k in levels_new):
        kind, value = key
        comparison.rows += compare_runs(levels_base[key], levels_new[key], settings, level=f"{kind} {value:g}")
    if len(comparison.rows) == 1:
        comparison.notes.append("no level measured in both sweeps with its records: only the capacity is compared")
    return comparison


def _kind(results: Results) -> str:
    return SWEEP if isinstance(results, SweepResults) else RUN


def compare_folders(paths: Sequence[str | Path], settings: Settings) -> list[Comparison]:
    """Each folder after the first against the first. Every folder is read and checked before anything is
    computed."""
    if len(paths) < 2:
        raise UsageError("compare needs two results folders: BASE NEW [NEW...]")
    base, *others = [open_results(p) for p in paths]
    for other in others:
        if _kind(other) != _kind(base):
            raise UsageError(f"cannot compare a {_kind(base)} ({base.path}) with a {_kind(other)} ({other.path})",
                             hint="compare runs with runs and sweeps with sweeps")
        _check_compatible(base, other)
    if isinstance(base, RunResults):
        return [Comparison(str(base.path), str(run.path), RUN, compare_runs(base, run, settings), _notes(base, run))
                for run in others if isinstance(run, RunResults)]
    return [compare_sweeps(base, sweep, settings) for sweep in others if isinstance(sweep, SweepResults)]


def to_json(comparisons: list[Comparison], settings: Settings) -> dict[str, Any]:
    """The machine-readable result (``--json``), schema cvload.compare/1."""
    return {
        "schema": COMPARE_SCHEMA,
        "regression": any(c.regressions for c in comparisons),
        "settings": {
            "threshold": settings.default.text,
            "thresholds": {k: v.text for k, v in settings.per_metric.items()},
            "confidence": settings.confidence,
            "resamples": settings.resamples,
            "seed": settings.seed,
        },
        "comparisons": [
            {
                "base": c.base,
                "new": c.new,
                "kind": c.kind,
                "regression": bool(c.regressions),
                "notes": c.notes,
                "rows": [{**asdict(r), "ci": list(r.ci) if r.ci else None} for r in c.rows],
            }
            for c in comparisons
        ],
    }
