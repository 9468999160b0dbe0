"""Read one Prometheus text scrape (Triton's :8002/metrics or a DCGM exporter) into GPU, CPU and model readings.

Parsing is prometheus_client's; this module only maps metric names onto cvload's units so the rest of telemetry
never sees a vendor name: utilization is a fraction 0..1, memory in bytes, power in W, energy in J, durations in
microseconds as Triton counts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

MIB = 1 << 20

# Triton (--allow-gpu-metrics true): name -> (field, factor)
TRITON_GPU = {
    "nv_gpu_utilization": ("util", 1.0),  # already a fraction
    "nv_gpu_memory_used_bytes": ("mem_used_bytes", 1.0),
    "nv_gpu_memory_total_bytes": ("mem_total_bytes", 1.0),
    "nv_gpu_power_usage": ("power_w", 1.0),
    "nv_gpu_power_limit": ("power_limit_w", 1.0),
    "nv_energy_consumption": ("energy_j", 1.0),
}
# DCGM exporter: percent, MiB, W, mJ
DCGM_GPU = {
    "DCGM_FI_DEV_GPU_UTIL": ("util", 0.01),
    "DCGM_FI_DEV_FB_USED": ("mem_used_bytes", MIB),
    "DCGM_FI_DEV_FB_FREE": ("_mem_free_bytes", MIB),
    "DCGM_FI_DEV_FB_RESERVED": ("_mem_reserved_bytes", MIB),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": ("power_limit_w", 1.0),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_j", 0.001),
}
CPU = {
    "nv_cpu_utilization": "util",
    "nv_cpu_memory_used_bytes": "mem_used_bytes",
    "nv_cpu_memory_total_bytes": "mem_total_bytes",
}
# Triton per-model counters (cumulative) and the pending gauge; failures are summed over their ``reason`` label.
MODEL = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
    "nv_inference_pending_request_count": "pending",
}
MODEL_GAUGES = frozenset({"pending"})


class MalformedScrape(ValueError):
    """The text is not Prometheus exposition format (an HTML page, JSON, a truncated body)."""


@dataclass
class Scrape:
    """One scrape in cvload units. ``gpus`` is keyed by GPU UUID (index label where no UUID is given)."""

    gpus: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    families: int = 0  # metric families in the text, recognized or not

    @property
    def recognized(self) -> bool:
        return bool(self.gpus or self.cpu or self.models)


def _gpu_key(labels: dict[str, str]) -> str:
    key = labels.get("gpu_uuid") or labels.get("UUID") or labels.get("uuid")
    if not key:
        key = f"gpu{labels['gpu']}" if "gpu" in labels else "gpu"
    mig = labels.get("GPU_I_ID")
    return f"{key}/mig{mig}" if mig else key


def parse_metrics(text: str) -> Scrape:
    """Parse a scrape; raises ``MalformedScrape`` when the text is not Prometheus format."""
    scrape = Scrape()
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise MalformedScrape(f"not Prometheus text format ({exc})") from exc
    scrape.families = len(families)
    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name == family.name + "_total":  # the parser names counter samples <family>_total
                name = family.name
            if math.isnan(value):
                continue
            gpu_field = TRITON_GPU.get(name) or DCGM_GPU.get(name)
            if gpu_field is not None:
                fname, factor = gpu_field
                scrape.gpus.setdefault(_gpu_key(labels), {})[fname] = value * factor
            elif name in CPU:
                scrape.cpu[CPU[name]] = value
            elif name in MODEL and "model" in labels:
                counters = scrape.models.setdefault(labels["model"], {})
                fname = MODEL[name]
                counters[fname] = counters.get(fname, 0.0) + value  # sums versions and failure reasons
    for reading in scrape.gpus.values():
        free = reading.pop("_mem_free_bytes", None)
        reserved = reading.pop("_mem_reserved_bytes", 0.0)
        if free is not None and "mem_used_bytes" in reading and "mem_total_bytes" not in reading:
            reading["mem_total_bytes"] = reading["mem_used_bytes"] + free + reserved
    # Triton reports 0 total memory until its first CPU refresh: no reading yet, not an empty machine.
    if not scrape.cpu.get("mem_total_bytes"):
        scrape.cpu.pop("mem_total_bytes", None)
        scrape.cpu.pop("mem_used_bytes", None)
    return scrape


def model_deltas(prev: dict[str, float] | None, cur: dict[str, float]) -> dict[str, float]:
    """Per-interval view of one model: counter deltas (durations in ms) plus the pending gauge.

    A counter that went down means the server restarted: the delta is then the new value.
    """
    out: dict[str, float] = {}
    if "pending" in cur:
        out["pending"] = cur["pending"]
    if prev is None:
        return out
    for fname, value in cur.items():
        if fname in MODEL_GAUGES or fname not in prev:
            continue
        delta = value - prev[fname] if value >= prev[fname] else value
        if fname.endswith("_us"):
            out[fname[:-3] + "_ms"] = delta / 1000.0
        else:
            out[fname] = delta
    return out
