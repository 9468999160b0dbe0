"""Latency objectives (``first_chunk.p95<300ms``, ``error_rate<1%``): parsed at startup, judged on the summary.

An objective is ``METRIC OP NUMBER[UNIT]`` with OP one of ``< <= > >= ==``. METRIC is

* a per-request metric of cvload/measure/metrics.py by alias or summary name, plus a statistic:
  ``first_chunk.p95``, ``second_chunk.p99``, ``total.p50``, ``rtf.p50``, ``first_chunk_latency_ms.max``;
* a run-level metric of cvload/measure/metrics.py (``RUN_METRICS``) by its summary name: ``error_rate``,
  ``throughput.requests_per_s``, ``requests.ok``, ``run_wall_rtf``, ``concurrency.achieved_mean``,
  ``errors.timeout``, ``audio_flags.audio_silent``...;
* the run's own timing error (cvload/measure/loop_health.py): ``client.loop_lag_ms.p99`` (how late the measuring
  process's event loop ran), ``client.cpu_cores``;
* a telemetry value, read from the summary's ``telemetry`` section (keys: cvload.telemetry.summary):
  ``gpu.util.mean``, ``gpu.mem_used_bytes.max``, ``gpu.power_w.mean``, ``cpu.util.max``,
  ``gpu.devices.<uuid>.util.max``... A run without telemetry gives the verdict ``no_data``.

Units: ``ms`` or ``s`` for times, ``%`` for shares (error_rate, utilization), B/KB/MB/GB/KiB/MiB/GiB for memory; a
bare number is in the metric's own unit (ms for latencies, a fraction for shares). A misspelled metric, statistic
or unit is a UsageError listing the valid names, never a silent pass. ``no_data`` (nothing measured to judge)
counts as failed.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cvload.errors import UsageError
from cvload.measure.barge_in_summary import OBJECTIVE_METRICS as BARGE_IN_METRICS
from cvload.measure.loop_health import CLIENT_METRICS
from cvload.measure.metrics import BY_ALIAS, BY_NAME, MISSING, REQUEST_METRICS, RUN_METRICS, STAT_KEYS, lookup
from cvload.results.records import RequestRecord
from cvload.telemetry.summary import TELEMETRY_KEYS

PASS, FAIL, NO_DATA = "pass", "fail", "no_data"


def _close(a: float, b: float) -> bool:
    """Equal up to float noise: 100.00000000000001 ms (a difference of two clock offsets) is 100 ms."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


OPS = {
    "<": lambda a, b: a < b and not _close(a, b),
    "<=": lambda a, b: a < b or _close(a, b),
    ">": lambda a, b: a > b and not _close(a, b),
    ">=": lambda a, b: a > b or _close(a, b),
    "==": _close,
}

# Unit kinds: for each, the units an objective may use and how many of the summary's units one of them is.
_UNITS: dict[str, dict[str, float]] = {
    "ms": {"ms": 1.0, "s": 1000.0},  # the summary holds milliseconds
    "s": {"s": 1.0, "ms": 0.001},  # the summary holds seconds
    "share": {"": 1.0, "%": 0.01},  # the summary holds a fraction 0..1
    "bytes": {"": 1.0, "B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024.0, "MiB": 1024.0**2,
              "GiB": 1024.0**3},
    "plain": {"": 1.0},  # counts, ratios like RTF, rates
}
_DEFAULT_UNIT = {"ms": "ms", "s": "s", "share": "", "bytes": "", "plain": ""}



def _unit_kind(unit: str) -> str:
    """A metric's unit (cvload.measure.metrics) -> the unit kind its objectives are written in."""
    return {"ms": "ms", "s": "s", "share": "share"}.get(unit, "plain")


# Run metrics an objective may name -> unit kind.
RUN_OBJECTIVES: dict[str, str] = {
    **{m.name: _unit_kind(m.unit) for m in RUN_METRICS if m.objective},
    **CLIENT_METRICS,  # the run's own timing error, from the summary's client section
    **BARGE_IN_METRICS,  # --barge-in: release time, survivors' first chunk (the summary's barge_in section)
}


def _telemetry_kind(key: str) -> str:
    field = key.split(".")[-2] if key.endswith((".mean", ".max")) else key.split(".")[-1]
    return "share" if field == "util" else "bytes" if field.endswith("_bytes") else "plain"


# Telemetry keys (summary section ``telemetry``, defined by the collector) -> unit kind; per-GPU values are
# ``gpu.devices.<uuid>.<field>`` for any ``gpu.<field>`` key.
TELEMETRY_METRICS: dict[str, str] = {key: _telemetry_kind(key) for key in TELEMETRY_KEYS}

_OBJECTIVE = re.compile(
    r"^\s*(?P<name>[A-Za-z_][\w.-]*)\s*(?P<op><=|>=|==|<|>)\s*"
    r"(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>[A-Za-z%]*)\s*$"
)
EXAMPLE = "first_chunk.p95<300ms"


@dataclass(frozen=True)
class Objective:
    """One parsed objective; ``threshold`` is in ``unit``, and ``factor`` summary units make one ``unit``."""

    text: str
    metric: str  # dotted path into summary.json, e.g. "metrics.first_chunk_latency_ms.p95"
    op: str
    threshold: float
    unit: str
    factor: float
    telemetry: bool = False


def valid_names() -> list[str]:
    """Every metric an objective may name (aliases with statistics, run-level values, telemetry)."""
    names = [f"{m.alias}.{s}" for m in REQUEST_METRICS for s in STAT_KEYS]
    names += list(RUN_OBJECTIVES)
    names += list(TELEMETRY_METRICS)
    return names


def _names_hint(name: str) -> str:
    close = difflib.get_close_matches(name, valid_names() + [m.name for m in REQUEST_METRICS], n=1, cutoff=0.6)
    parts = [f"did you mean {close[0]}? " if close else ""]
    parts.append("per-request metrics: " + ", ".join(m.alias for m in REQUEST_METRICS)
                 + " with ." + "/.".join(STAT_KEYS))
    parts.append("; run metrics: " + ", ".join(k for k in RUN_OBJECTIVES if not k.startswith(("errors.", "audio_flags.")))
                 + ", errors.<kind>, audio_flags.<flag>")
    parts.append("; telemetry: " + ", ".join(TELEMETRY_METRICS) + ", gpu.devices.<uuid>.<field>")
    return "".join(parts)


def _resolve(text: str, name: str) -> tuple[str, str, bool]:
    """Metric name as written -> (summary path, unit kind, is telemetry)."""
    if name in RUN_OBJECTIVES:
        return name, RUN_OBJECTIVES[name], False
    base, _, stat = name.rpartition(".")
    metric = BY_ALIAS.get(base) or BY_NAME.get(base)
    if metric is not None:
        if stat not in STAT_KEYS:
            close = difflib.get_close_matches(stat, STAT_KEYS, n=1)
            raise UsageError(
                f"objective {text!r}: unknown statistic {stat!r} of {base}"
                + (f" (did you mean {base}.{close[0]}?)" if close else ""),
                hint="statistics: " + ", ".join(STAT_KEYS),
            )
        kind = "plain" if stat == "count" else _unit_kind(metric.unit)
        return f"metrics.{metric.name}.{stat}", kind, False
    if name in TELEMETRY_METRICS:
        return f"telemetry.{name}", TELEMETRY_METRICS[name], True
    device = re.match(r"^gpu\.devices\.[^.]+\.(.+)$", name)
    if device and f"gpu.{device.group(1)}" in TELEMETRY_METRICS and device.group(1) != "count":
        return f"telemetry.{name}", TELEMETRY_METRICS[f"gpu.{device.group(1)}"], True
    if name in BY_ALIAS or name in BY_NAME:
        raise UsageError(f"objective {text!r}: {name} needs a statistic, e.g. {name}.p95",
                         hint="statistics: " + ", ".join(STAT_KEYS))
    raise UsageError(f"objective {text!r}: unknown metric {name!r}", hint=_names_hint(name))


def parse_objective(text: str) -> Objective:
    if not isinstance(text, str):
        raise UsageError(f"objective {text!r} must be a string like {EXAMPLE!r}")
    m = _OBJECTIVE.match(text)
    if not m:
        raise UsageError(f"objective {text!r} is not METRIC OP VALUE[UNIT]",
                         hint=f"e.g. {EXAMPLE!r}, 'error_rate<1%', 'rtf.p50<0.5'; OP is one of "
                         + " ".join(OPS))
    name, op, unit = m.group("name"), m.group("op"), m.group("unit")
    path, kind, telemetry = _resolve(text, name)
    units = _UNITS[kind]
    unit = unit or _DEFAULT_UNIT[kind]  # a bare number is in the metric's own unit
    if unit not in units:
        allowed = ", ".join(repr(u) if u else "no unit" for u in units)
        raise UsageError(f"objective {text!r}: unit {unit!r} does not apply to {name}",
                         hint=f"use {allowed}")
    return Objective(text=text.strip(), metric=path, op=op, threshold=float(m.group("num")), unit=unit,
                     factor=units[unit], telemetry=telemetry)


def request_check(objectives: list[Objective]) -> Callable[[RequestRecord], bool] | None:
    """Goodput's test of one request: each objective on a per-request metric, whatever its statistic, applied
    to the request with the same operator and threshold (``first_chunk.p95<700ms`` -> this request's first chunk
    < 700 ms; a metric the request has no value for, e.g. a second chunk, does not apply). None when no objective
    names a per-request metric: the run then has no goodput."""
    checks: list[tuple[Any, Callable[[float, float], bool], float]] = []
    for obj in objectives:
        base, _, stat = obj.metric.rpartition(".")
        if obj.telemetry or not base.startswith("metrics.") or stat == "count":
            continue
        checks.append((BY_NAME[base.removeprefix("metrics.")], OPS[obj.op], obj.threshold * obj.factor))
    if not checks:
        return None

    def meets(record: RequestRecord) -> bool:
        for metric, op, threshold in checks:
            value = metric.of(record)
            if value is not None and not op(value, threshold):
                return False
        return True
    return meets


def parse_objectives(texts: list[str]) -> list[Objective]:
    """Validate every objective up front (before any load is sent)."""
    return [parse_objective(t) for t in texts]


def _value(summary: dict[str, Any], name: str) -> Any:
    value = lookup(summary, name)
    return None if value is MISSING else value


def evaluate(objectives: list[Objective], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Judge each objective on a summary; one dict per objective, as written to summary.json's ``slo``."""
    results = []
    measured_requests = _value(summary, "requests.total")
    for obj in objectives:
        value = _value(summary, obj.metric)
        detail = None
        if obj.telemetry and not isinstance(summary.get("telemetry"), dict):
            detail = "no telemetry in this run (no metrics endpoint or GPU source)"
        elif not obj.telemetry and measured_requests == 0:
            detail = "no measured requests"
        elif value is None:
            detail = "nothing measured for this metric"
        elif not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            detail = f"summary value {value!r} is not a finite number"
        if detail is not None:
            measured, verdict = None, NO_DATA
        else:
            measured = float(value) / obj.factor
            verdict = PASS if OPS[obj.op](measured, obj.threshold) else FAIL
        results.append({
            "objective": obj.text,
            "metric": obj.metric,
            "op": obj.op,
            "threshold": obj.threshold,
            "unit": obj.unit,
            "measured": measured,
            "verdict": verdict,
            "detail": detail,
        })
    return results


def all_met(results: list[dict[str, Any]]) -> bool:
    """True when every objective passed (``no_data`` is a failure: nothing proved the objective held)."""
    return all(r["verdict"] == PASS for r in results)
