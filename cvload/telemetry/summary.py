"""The summary.json ``telemetry`` section, built from the sampled series over the measured window only.

Series are named by the dotted path of the value in a sample (``gpu.util``, ``gpu.devices.<uuid>.power_w``,
``cpu.util``, ``models.<model>.queue_ms``); the summary keeps the same paths, so an objective key such as
``gpu.util.mean`` is the path ``summary["telemetry"]["gpu"]["util"]["mean"]`` (``cvload.measure.slo``
resolves objectives there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Points = Sequence[tuple[float, float]]

# Keys objectives may name; every one resolves in the summary (None while no data).
GPU_STAT_FIELDS = ("util", "mem_used_bytes", "power_w")
GPU_LAST_FIELDS = ("mem_total_bytes", "power_limit_w")
CPU_STAT_FIELDS = ("util", "mem_used_bytes")
TELEMETRY_KEYS: tuple[str, ...] = (
    *(f"gpu.{f}.{s}" for f in GPU_STAT_FIELDS for s in ("mean", "max")),
    *(f"gpu.{f}" for f in GPU_LAST_FIELDS),
    "gpu.energy_j",
    "gpu.count",
    *(f"cpu.{f}.{s}" for f in CPU_STAT_FIELDS for s in ("mean", "max")),
    "cpu.mem_total_bytes",
)


def in_window(points: Points, start: float) -> list[float]:
    return [v for t, v in points if t >= start]


def stat(points: Points, start: float) -> dict[str, float | None]:
    """Mean and max of the samples taken at or after ``start``."""
    vals = in_window(points, start)
    if not vals:
        return {"mean": None, "max": None}
    return {"mean": sum(vals) / len(vals), "max": max(vals)}


def last(points: Points, start: float) -> float | None:
    vals = in_window(points, start)
    return vals[-1] if vals else None


def counter_delta(points: Points, start: float) -> float | None:
    """Growth of a cumulative reading (energy) over the window, from the last reading before it if any."""
    before = [v for t, v in points if t < start]
    inside = in_window(points, start)
    if not inside:
        return None
    first = before[-1] if before else inside[0]
    return max(inside[-1] - first, 0.0) if len(inside) + len(before[-1:]) > 1 else None


def total(points: Points, start: float) -> float:
    return float(sum(in_window(points, start)))


def _gpu_block(series: dict[str, list[tuple[float, float]]], prefix: str, start: float) -> dict[str, Any]:
    block: dict[str, Any] = {f: stat(series.get(f"{prefix}.{f}", ()), start) for f in GPU_STAT_FIELDS}
    for f in GPU_LAST_FIELDS:
        block[f] = last(series.get(f"{prefix}.{f}", ()), start)
    block["energy_j"] = counter_delta(series.get(f"{prefix}.energy_j", ()), start)
    return block


def build_summary(series: dict[str, list[tuple[float, float]]], *, start: float, end: float | None,
                  gpu_ids: Sequence[str], model_names: Sequence[str], gpu_source: str | None,
                  stages: list[dict[str, Any]], sources: dict[str, Any], warnings: list[str],
                  interval: float, ticks: Sequence[float]) -> dict[str, Any]:
    """The ``telemetry`` section (layout in the package docstring)."""
    gpu = _gpu_block(series, "gpu", start)
    counts = in_window(series.get("gpu.count", ()), start)
    gpu["count"] = int(max(counts)) if counts else 0
    gpu["source"] = gpu_source
    gpu["devices"] = {uuid: _gpu_block(series, f"gpu.devices.{uuid}", start) for uuid in gpu_ids}
    cpu: dict[str, Any] = {f: stat(series.get(f"cpu.{f}", ()), start) for f in CPU_STAT_FIELDS}
    cpu["mem_total_bytes"] = last(series.get("cpu.mem_total_bytes", ()), start)
    models = {}
    for name in model_names:
        p = f"models.{name}."
        models[name] = {
            "success": total(series.get(p + "success", ()), start),
            "failure": total(series.get(p + "failure", ()), start),
            "pending": stat(series.get(p + "pending", ()), start),
        }
    measured = [t for t in ticks if t >= start]
    return {
        "window": {"samples": len(measured), "duration_s": (end - start) if end is not None and measured else 0.0,
                   "interval_s": interval},
        "gpu": gpu,
        "cpu": cpu,
        "models": models,
        "stages": stages,
        "sources": sources,
        "warnings": list(warnings),
    }
