"""Local GPU readings through NVML (nvidia-ml-py, imported lazily): for servers that expose no GPU metrics.

Only meaningful when the GPU serving the model is on this host. Readings use the same fields and units as a
metrics scrape (``cvload.telemetry.prometheus``), so the rest of telemetry cannot tell the sources apart.
"""

from __future__ import annotations

import contextlib
from typing import Any


class NvmlUnavailable(Exception):
    """NVML cannot be used here; the message says why (not installed, no driver, no GPU)."""


class NvmlSampler:
    """Open once, sample many times (blocking calls of a few microseconds each; run them off the event loop)."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[tuple[str, Any]] = []

    def open(self) -> list[str]:
        """Start NVML and list the GPUs (UUIDs); raises NvmlUnavailable with the reason."""
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable("nvidia-ml-py is not installed (pip install 'cvload[gpu]')") from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML could not start ({exc}): no NVIDIA driver or GPU on this host") from exc
        try:
            count = pynvml.nvmlDeviceGetCount()
            handles = []
            for i in range(count):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                handles.append((uuid.decode() if isinstance(uuid, bytes) else str(uuid), handle))
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable(f"NVML could not list the GPUs ({exc})") from exc
        if not handles:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable("NVML found no GPU on this host")
        self._nvml, self._handles = pynvml, handles
        return [uuid for uuid, _ in handles]

    def sample(self) -> dict[str, dict[str, float]]:
        """One reading per GPU; a field the GPU does not support is left out."""
        nvml = self._nvml
        readers = (  # field, reading in cvload units
            ("util", lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0),  # percent
            ("mem_used_bytes", lambda h: float(nvml.nvmlDeviceGetMemoryInfo(h).used)),
            ("mem_total_bytes", lambda h: float(nvml.nvmlDeviceGetMemoryInfo(h).total)),
            ("power_w", lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),  # mW
            ("power_limit_w", lambda h: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0),
            ("energy_j", lambda h: nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0),  # mJ
        )
        out: dict[str, dict[str, float]] = {}
        for uuid, handle in self._handles:
            reading: dict[str, float] = {}
            for name, read in readers:
                with contextlib.suppress(nvml.NVMLError):
                    reading[name] = read(handle)
            out[uuid] = reading
        return out

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._nvml, self._handles = None, []
