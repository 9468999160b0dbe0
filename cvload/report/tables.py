"""The report's tables as rows of text, shared by the HTML and the Markdown twin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cvload.measure.metrics import MISSING, REQUEST_METRICS, RUN_METRICS, lookup
from cvload.report import series
from cvload.report.document import Table
from cvload.results.folder import RunResults, SweepResults

# The metrics a comparison is read by: (title, summary path, format kind).
HEADLINE: tuple[tuple[str, str, str], ...] = (
    *((f"first chunk {s} (ms)", f"metrics.first_chunk_latency_ms.{s}", "ms") for s in ("p50", "p95", "p99")),
    *((f"second chunk gap {s} (ms)", f"metrics.second_chunk_latency_ms.{s}", "ms") for s in ("p50", "p95", "p99")),
    *((f"total latency {s} (ms)", f"metrics.total_latency_ms.{s}", "ms") for s in ("p50", "p95")),
    *((f"RTF {s}", f"metrics.rtf.{s}", "ratio") for s in ("p50", "p95")),
    ("throughput (req/s)", "throughput.requests_per_s", "rate"),
    ("audio throughput (audio s/s)", "throughput.audio_s_per_s", "rate"),
    ("goodput (req/s)", "goodput.requests_per_s", "rate"),
    ("error rate", "error_rate", "share"),
    ("playback stalls per request (mean)", "metrics.stall_count.mean", "ratio"),
    ("requests measured", "requests.total", "count"),
    ("concurrency achieved (mean)", "concurrency.achieved_mean", "ratio"),
    ("GPU utilization (mean)", "telemetry.gpu.util.mean", "share"),
)
STAT_COLUMNS = ("p50", "p90", "p95", "p99", "mean", "max", "count")


def fmt(value: Any, kind: str = "") -> str:
    if value is None or value is MISSING:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float):
        return str(value)
    if kind == "share":
        return f"{value:.2%}"
    if kind == "ms":
        return f"{value:.1f}"
    if kind == "count" or (isinstance(value, int)):
        return f"{value:,}" if isinstance(value, int) else f"{value:,.0f}"
    if kind == "rate":
        return f"{value:.2f}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _delta(base: float | None, new: float | None, kind: str) -> tuple[str, str]:
    if base is None or new is None:
        return "-", "-"
    diff = new - base
    shown = f"{diff * 100:+.2f} pt" if kind == "share" else ("+" if diff >= 0 else "") + fmt(diff, kind)
    pct = f"{diff / base:+.1%}" if base else "-"
    return shown, pct


def deltas(titles_paths: Sequence[tuple[str, str, str]], summaries: Sequence[dict[str, Any]],
           labels: Sequence[str], title: str) -> Table:
    """Each metric of the first input (the base) against every other: value, difference, percent."""
    header = ["metric", labels[0]]
    for label in labels[1:]:
        header += [label, "Δ", "Δ %"]
    rows = []
    for name, path, kind in titles_paths:
        vals = [_number(lookup(s, path)) for s in summaries]
        if all(v is None for v in vals):
            continue
        row = [name, fmt(vals[0], kind)]
        for v in vals[1:]:
            row += [fmt(v, kind), *_delta(vals[0], v, kind)]
        rows.append(row)
    return Table(title, header, rows, note=f"Δ: each run against {labels[0]} (the first named).")


def run_summary(run: RunResults) -> Table:
    """Every per-request metric's statistics and the run-level values, as summary.json holds them."""
    s = run.summary
    rows: list[list[str]] = []
    for metric in REQUEST_METRICS:
        st = (s.get("metrics") or {}).get(metric.name) or {}
        if not st.get("count"):
            continue
        kind = "ms" if metric.unit == "ms" else ""
        unit = f" ({metric.unit})" if metric.unit else ""
        rows.append([metric.title + unit, *(fmt(st.get(k), "count" if k == "count" else kind)
                                            for k in STAT_COLUMNS)])
    for run_metric in RUN_METRICS:
        value = lookup(s, run_metric.name)
        if value is MISSING or value is None:
            continue
        if run_metric.name.startswith(("errors.", "audio_flags.")) and not value:
            continue  # failure counts: only the kinds that happened
        kind = "share" if run_metric.unit == "share" else "rate" if "/s" in run_metric.unit else ""
        unit = f" ({run_metric.unit})" if run_metric.unit and run_metric.unit != "share" else ""
        rows.append([run_metric.title + unit, fmt(value, kind), *[""] * (len(STAT_COLUMNS) - 1)])
    return Table("Summary", ["metric", *STAT_COLUMNS], rows,
                 note=f"status {s.get('status', '?')}, measured wall time {fmt(s.get('wall_s'))} s")


def objectives(inputs: Sequence[tuple[str, dict[str, Any]]]) -> Table | None:
    """Each objective's verdict, per run (the run's label first where there are several)."""
    rows: list[list[str]] = []
    marked: set[int] = set()
    several = len(inputs) > 1
    for label, summary in inputs:
        for v in summary.get("slo") or []:
            measured = v.get("measured")
            shown = "no data" if measured is None else f"{measured:.4g} {v.get('unit') or ''}".strip()
            if v.get("verdict") != "pass":
                marked.add(len(rows))
            rows.append(([label] if several else []) + [v.get("objective", "?"), shown, v.get("verdict", "?")])
    if not rows:
        return None
    return Table("Objectives", (["run"] if several else []) + ["objective", "measured", "verdict"], rows,
                 marked=marked, text=True)


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and data and any(isinstance(v, dict) for v in data):
        for n, value in enumerate(data):
            out.update(_flatten(value, f"{prefix}[{n}]"))
    elif data is not None and data != [] and data != {}:
        out[prefix] = ", ".join(map(str, data)) if isinstance(data, list) else str(data)
    return out


def configuration(labels: Sequence[str], configs: Sequence[dict[str, Any] | None]) -> Table | None:
    """config.json of each run, flattened; with several runs, the settings that differ stand out."""
    flat = [_flatten({k: v for k, v in (c or {}).items()}) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    if not keys:
        return None
    rows: list[list[str]] = []
    marked: set[int] = set()
    for key in keys:
        vals = [f.get(key, "-") for f in flat]
        if len(configs) > 1 and len(set(vals)) > 1:
            marked.add(len(rows))
        rows.append([key, *vals])
    note = "Settings that differ between the runs are marked." if len(configs) > 1 else ""
    return Table("Configuration", ["setting", *labels], rows, note=note, marked=marked, text=True)


# ---- sweeps ---------------------------------------------------------------------------------------------------
LEVEL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("first p50", "metrics.first_chunk_latency_ms.p50", "ms"),
    ("first p95", "metrics.first_chunk_latency_ms.p95", "ms"),
    ("first p99", "metrics.first_chunk_latency_ms.p99", "ms"),
    ("2nd gap p95", "metrics.second_chunk_latency_ms.p95", "ms"),
    ("RTF p50", "metrics.rtf.p50", "ratio"),
    ("throughput", "throughput.requests_per_s", "rate"),
    ("errors", "error_rate", "share"),
    ("stalls/req", "metrics.stall_count.mean", "ratio"),
    ("requests", "requests.total", "count"),
)


def levels(sweep: SweepResults, label: str, several: bool) -> Table:
    header = ["level", "objectives", *(c[0] for c in LEVEL_COLUMNS[:6]), "goodput",
              *(c[0] for c in LEVEL_COLUMNS[6:])]
    rows: list[list[str]] = []
    marked: set[int] = set()
    capacity = series.capacity_value(sweep)
    for level in series.by_load(sweep):
        verdict = {True: "met", False: "missed", None: "-"}[level.slo_passed]
        if level.slo_passed is False:
            marked.add(len(rows))
        value = fmt(level.value) + (" (capacity)" if capacity is not None and level.value == capacity else "") \
            + (" (bisect)" if level.phase == "bisect" else "")
        cells = [fmt(series.level_value(level, path), kind) for _t, path, kind in LEVEL_COLUMNS]
        rows.append([value, verdict, *cells[:6], fmt(series.goodput(level), "rate"), *cells[6:]])
    title = f"Levels of {label}" if several else "Levels"
    return Table(title, header, rows, marked=marked,
                 note="Latencies in ms (first: first chunk; 2nd gap: second chunk after the first); throughput and "
                      "goodput in requests/s; errors: error rate; stalls/req: playback stalls per request.")


def sweep_answer(sweep: SweepResults) -> str:
    """The sweep's answer in one sentence: capacity, its bracket, the knee, why it stopped."""
    cap = sweep.capacity
    value, bracket = series.capacity_value(sweep), cap.get("bracket")
    kind = cap.get("kind") or (sweep.levels[0].kind if sweep.levels else "")
    unit = "requests/s" if kind == "rate" else "concurrent streams"
    if value is None:
        text = "No level met the objectives (no capacity)."
    else:
        text = f"Capacity: {value:g} {unit}"
        if isinstance(bracket, list | tuple) and len(bracket) == 2 and isinstance(bracket[1], int | float):
            text += f" (found between {bracket[0]:g} and {bracket[1]:g})"
        elif isinstance(bracket, list | tuple):
            text += " (no level above it failed: the highest measured)"
        if cap.get("by") == "goodput":
            text += ", the level of highest goodput: the sweep had no objectives"
        text += "."
    knee = series.knee_value(sweep)
    if knee is not None:
        reason = sweep.knee.get("reason") if isinstance(sweep.knee, dict) else None
        text += f" Knee at {knee:g}" + (f" ({reason})." if reason else ".")
    if sweep.sweep.get("stopped_because"):
        text += f" Stopped because: {sweep.sweep['stopped_because']}."
    return text


SWEEP_HEADLINE = ("capacity", "knee", "max throughput (req/s)", "max goodput (req/s)", "levels measured")


def sweep_values(sweep: SweepResults) -> dict[str, Any]:
    thr = [v for v in (series.level_value(lv, "throughput.requests_per_s") for lv in sweep.levels) if v is not None]
    good = [v for v in (series.goodput(lv) for lv in sweep.levels) if v is not None]
    return {"capacity": series.capacity_value(sweep), "knee": series.knee_value(sweep),
            "max throughput (req/s)": max(thr, default=None), "max goodput (req/s)": max(good, default=None),
            "levels measured": len(sweep.levels)}


def sweep_deltas(sweeps: Sequence[SweepResults], labels: Sequence[str]) -> Table:
    kinds = {"capacity": "ratio", "knee": "ratio", "levels measured": "count"}
    return deltas([(name, name, kinds.get(name, "rate")) for name in SWEEP_HEADLINE],
                  [sweep_values(s) for s in sweeps], labels, "Deltas")
