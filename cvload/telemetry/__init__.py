"""Live telemetry beside a load test: GPU utilization, memory, power; CPU; per-model counts; per-stage times.

Sources, each optional and each failing on its own (one warning, status "unavailable", sampling goes on):
a Prometheus text endpoint (Triton ``:8002/metrics`` or a DCGM exporter), Triton's statistics API, and NVML on
this host (``gpu_source="nvml"``, or ``auto`` when the server reports no GPU).

Units everywhere: utilization a fraction 0..1, memory bytes, power W, energy J, durations ms.

Series names (``Telemetry.series()``) are the dotted paths of values in a sample (one line of telemetry.jsonl:
``{"t", "wall", "measured", "status": {source: ok|unavailable|off|pending}, "gpu": {...}, "cpu": {...},
"models": {...}}``, a section absent while its source is unavailable)::

    gpu.util  gpu.mem_used_bytes  gpu.mem_total_bytes  gpu.power_w  gpu.power_limit_w  gpu.energy_j  gpu.count
        all GPUs as one: mean utilization; memory, power and energy summed
    gpu.devices.<uuid>.<field>        the same fields per GPU (a DCGM GPU without UUID: gpu<index>)
    cpu.util  cpu.mem_used_bytes  cpu.mem_total_bytes
    models.<model>.success|failure|inferences|executions   requests in the interval (counter deltas)
    models.<model>.queue_ms|compute_input_ms|compute_infer_ms|compute_output_ms|request_ms   time added
    models.<model>.pending            requests waiting (gauge)

summary.json ``telemetry`` section (``Telemetry.summary()``), measured window only (after
``mark_measure_start``); an objective key is a path in it, ``gpu.util.mean`` -> ``["gpu"]["util"]["mean"]``
(``TELEMETRY_KEYS`` lists the documented ones; ``cvload.measure.slo`` resolves them)::

    {"window":  {"samples", "duration_s", "interval_s"},
     "gpu":     {"util": {"mean", "max"}, "mem_used_bytes": {"mean", "max"}, "power_w": {"mean", "max"},
                 "mem_total_bytes", "power_limit_w", "energy_j" (used in the window), "count", "source",
                 "devices": {"<uuid>": {same fields but count/source/devices}}},
     "cpu":     {"util": {"mean", "max"}, "mem_used_bytes": {"mean", "max"}, "mem_total_bytes"},
     "models":  {"<model>": {"success", "failure", "pending": {"mean", "max"}}},
     "stages":  [stats_diff rows of the models that ran, pipeline order],
     "sources": {"metrics"|"stats"|"gpu": {"status": ok|unavailable|off|pending, "error", "samples", ...}},
     "warnings": [...]}

A value with no data is None (e.g. ``gpu.util.mean`` on a CPU-only server).
"""

from cvload.settings.address import default_metrics_url, normalize_metrics_url
from cvload.telemetry.nvml import NvmlSampler, NvmlUnavailable
from cvload.telemetry.prometheus import MalformedScrape, Scrape, parse_metrics
from cvload.telemetry.sampler import GPU_SOURCES, Telemetry
from cvload.telemetry.summary import TELEMETRY_KEYS
from cvload.telemetry.triton_stats import normalize_stats, stats_diff

__all__ = [
    "GPU_SOURCES",
    "MalformedScrape",
    "NvmlSampler",
    "NvmlUnavailable",
    "Scrape",
    "TELEMETRY_KEYS",
    "Telemetry",
    "default_metrics_url",
    "normalize_metrics_url",
    "normalize_stats",
    "parse_metrics",
    "stats_diff",
]
