"""``Telemetry``: samples server metrics, Triton statistics and (optionally) local NVML on a fixed interval.

It runs beside a load test in the same event loop and must never stop one: every source failure becomes one
warning (per source) and an "unavailable" status, and sampling goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import aiohttp

from cvload.errors import UsageError
from cvload.settings.address import normalize_metrics_url
from cvload.telemetry.nvml import NvmlSampler, NvmlUnavailable
from cvload.telemetry.prometheus import MalformedScrape, Scrape, model_deltas, parse_metrics
from cvload.telemetry.summary import build_summary
from cvload.telemetry.triton_stats import diff_normalized, normalize_stats

GPU_SOURCES = ("auto", "server", "nvml", "none")
OK, UNAVAILABLE, OFF, PENDING = "ok", "unavailable", "off", "pending"
STATS_RETAIN_S = 600.0  # live stage windows can reach this far back

StatsSource = Callable[[], Awaitable[dict | None]]
Snapshot = tuple[float, dict]  # (monotonic time, normalized statistics)


def _flatten(prefix: str, node: dict[str, Any], out: dict[str, float]) -> None:
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            _flatten(path, value, out)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[path] = float(value)


def sample_values(sample: dict[str, Any]) -> dict[str, float]:
    """A sample (one telemetry.jsonl line) as series name -> value: the dotted paths of its readings."""
    values: dict[str, float] = {}
    _flatten("", {k: v for k, v in sample.items() if k in ("gpu", "cpu", "models")}, values)
    return values


def _aggregate_gpus(gpus: dict[str, dict[str, float]]) -> dict[str, Any]:
    """All GPUs as one: mean utilization, summed memory, power and energy; per GPU under ``devices``."""
    agg: dict[str, Any] = {"count": len(gpus)}
    utils = [g["util"] for g in gpus.values() if "util" in g]
    if utils:
        agg["util"] = sum(utils) / len(utils)
    for f in ("mem_used_bytes", "mem_total_bytes", "power_w", "power_limit_w", "energy_j"):
        vals = [g[f] for g in gpus.values() if f in g]
        if vals:
            agg[f] = sum(vals)
    agg["devices"] = {uuid: dict(reading) for uuid, reading in gpus.items()}
    return agg


class Telemetry:
    """Periodic samples of GPU, CPU and per-model server metrics plus per-stage Triton statistics.

    ``metrics_url``: a Prometheus text endpoint (Triton ``:8002/metrics`` or a DCGM exporter), None for none.
    ``stats_source``: async callable returning Triton's statistics JSON (a target's ``statistics``), None for none.
    ``gpu_source``: ``server`` (the scrape), ``nvml`` (this host), ``none``, or ``auto`` (the scrape when it has
    GPU metrics, else NVML when this host has a GPU). ``out_path``: telemetry.jsonl, one line per sample.
    """

    def __init__(self, *, metrics_url: str | None, stats_source: StatsSource | None, interval: float = 1.0,
                 gpu_source: str = "auto", out_path: Path | None = None) -> None:
        if gpu_source not in GPU_SOURCES:
            raise UsageError(f"--gpu-source {gpu_source!r}: use one of {', '.join(GPU_SOURCES)}")
        if not interval > 0:
            raise UsageError(f"--telemetry-interval must be positive, got {interval}")
        self.metrics_url = normalize_metrics_url(metrics_url) if metrics_url else None
        self.stats_source = stats_source
        self.interval = float(interval)
        self.gpu_source = gpu_source
        self.out_path = Path(out_path) if out_path is not None else None
        self.timeout = min(max(2 * self.interval, 1.0), 5.0)  # a hung endpoint must not stall sampling
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self._sources: dict[str, dict[str, Any]] = {
            "metrics": {"status": PENDING if self.metrics_url else OFF, "url": self.metrics_url, "error": None,
                        "samples": 0},
            "stats": {"status": PENDING if stats_source else OFF, "error": None, "samples": 0},
            "gpu": {"status": OFF if gpu_source == "none" else PENDING, "requested": gpu_source, "source": None,
                    "error": None, "samples": 0},
        }
        self._gpu_mode: str | None = "none" if gpu_source == "none" else None  # server | nvml | none
        self._nvml: NvmlSampler | None = None
        self._series: dict[str, list[tuple[float, float]]] = {}
        self._ticks: list[float] = []
        self._gpu_ids: dict[str, None] = {}
        self._model_names: dict[str, None] = {}
        self._prev_models: dict[str, dict[str, float]] | None = None
        self._snaps: deque[Snapshot] = deque()
        self._first_snap: Snapshot | None = None
        self._baseline: Snapshot | None = None
        self._start_t: float | None = None
        self._measure_t: float | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._baseline_task: asyncio.Task[None] | None = None
        self._out: IO[str] | None = None
        self._started = self._stopped = False

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Take the first sample (the run's baseline) and keep sampling every ``interval``; never raises."""
        if self._started:
            return
        self._started = True
        self._start_t = time.monotonic()
        try:
            if self.out_path is not None:
                try:
                    self.out_path.parent.mkdir(parents=True, exist_ok=True)
                    self._out = open(self.out_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in stop)
                except OSError as exc:
                    self._warn("out", f"telemetry: cannot write {self.out_path} ({exc}); kept in memory only")
            if self.metrics_url:
                self._session = aiohttp.ClientSession()
            if self.gpu_source == "nvml":
                await self._open_nvml(explicit=True)
            await self._tick()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="cvload-telemetry")
        except Exception as exc:  # telemetry must never stop a load test
            self._warn("telemetry", f"telemetry could not start: {exc}")

    async def stop(self) -> None:
        """Stop sampling, take a final sample (the run's end), release everything; never raises."""
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
        for task in (self._task, self._baseline_task):  # the baseline fetch is short: let it finish
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        try:
            await self._tick()
        except Exception as exc:
            self._warn("telemetry", f"telemetry: final sample failed: {exc}")
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
        if self._nvml is not None:
            self._nvml.close()
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None

    def mark_measure_start(self) -> None:
        """Warmup is over: the summary covers from now on; takes a fresh statistics baseline right away."""
        self._measure_t = time.monotonic()
        self._baseline = self._snaps[-1] if self._snaps else self._first_snap
        if self.stats_source is None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the last snapshot stands as baseline
            self._baseline_task = asyncio.get_running_loop().create_task(self._take_baseline())

    async def wait_measure_baseline(self) -> None:
        """Wait until the statistics baseline taken by ``mark_measure_start`` is in (callers that must not let
        a measured request finish before it)."""
        if self._baseline_task is not None:
            with contextlib.suppress(Exception):
                await self._baseline_task

    async def _take_baseline(self) -> None:
        snap = await self._poll_stats(time.monotonic())
        if snap is not None:
            self._baseline = snap

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            try:
                await self._tick()
            except Exception as exc:
                self._warn("telemetry", f"telemetry: sampling failed: {exc}")
            next_t += self.interval
            if next_t < loop.time():  # fell behind (a slow endpoint): skip, don't burst
                next_t = loop.time() + self.interval

    # ---- one sample --------------------------------------------------------------------------------------------
    async def _tick(self) -> None:
        t = time.monotonic()
        scrape, _ = await asyncio.gather(self._scrape(), self._poll_stats(t))
        gpus = await self._gpu_readings(scrape)
        sample: dict[str, Any] = {
            "t": t,
            "wall": time.time(),
            "measured": self._measure_t is not None and t >= self._measure_t,
        }
        if gpus:
            sample["gpu"] = _aggregate_gpus(gpus)
            self._gpu_ids.update(dict.fromkeys(gpus))
        if scrape is not None and scrape.cpu:
            sample["cpu"] = dict(scrape.cpu)
        if scrape is not None and scrape.models:
            prev = self._prev_models or {}
            first = self._prev_models is None
            sample["models"] = {m: model_deltas(None if first else prev.get(m, {}), c) for m, c in scrape.models.items()}
            self._model_names.update(dict.fromkeys(scrape.models))
            self._prev_models = scrape.models
        sample["status"] = {name: src["status"] for name, src in self._sources.items()}
        for name, value in sample_values(sample).items():
            self._series.setdefault(name, []).append((t, value))
        self._ticks.append(t)
        self._write(sample)

    def _write(self, sample: dict[str, Any]) -> None:
        if self._out is None:
            return
        try:
            self._out.write(json.dumps(sample, separators=(",", ":")) + "\n")
            self._out.flush()  # a crash loses no sample already taken
        except (OSError, ValueError) as exc:
            self._warn("out", f"telemetry: cannot write {self.out_path} ({exc}); kept in memory only")
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None

    async def _scrape(self) -> Scrape | None:
        src = self._sources["metrics"]
        if self._session is None or self.metrics_url is None:
            return None
        url = self.metrics_url
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                text = await resp.text(errors="replace")
                if resp.status != 200:
                    self._fail("metrics", f"metrics endpoint {url} answered HTTP {resp.status}")
                    return None
            scrape = parse_metrics(text)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._fail("metrics", f"metrics endpoint {url} unreachable ({exc or type(exc).__name__})")
            return None
        except MalformedScrape as exc:
            self._fail("metrics", f"metrics endpoint {url} is malformed: {exc}")
            return None
        if not scrape.recognized:
            self._fail("metrics", f"metrics endpoint {url} has no Triton (nv_*) or DCGM (DCGM_FI_*) metrics")
            return None
        src.update(status=OK, error=None, samples=src["samples"] + 1)
        return scrape

    async def _poll_stats(self, t: float) -> Snapshot | None:
        src = self._sources["stats"]
        if self.stats_source is None:
            return None
        try:
            data = await asyncio.wait_for(self.stats_source(), self.timeout)
            if data is None:
                src.update(status=OFF, error="the statistics source returned nothing")
                return None
            snap = (t, normalize_stats(data))
        except ValueError as exc:
            self._fail("stats", f"Triton statistics are malformed: {exc}")
            return None
        except Exception as exc:  # any source error: unreachable, timeout, server error
            self._fail("stats", f"Triton statistics unavailable ({exc or type(exc).__name__})")
            return None
        src.update(status=OK, error=None, samples=src["samples"] + 1)
        if self._first_snap is None:
            self._first_snap = snap
        if not self._snaps or t >= self._snaps[-1][0]:
            self._snaps.append(snap)
            while len(self._snaps) > 2 and self._snaps[1][0] < t - STATS_RETAIN_S:
                self._snaps.popleft()
        return snap

    def _fail(self, source: str, message: str) -> None:
        self._sources[source].update(status=UNAVAILABLE, error=message)
        what = {"metrics": "GPU/CPU/model series unavailable (give the server's metrics endpoint with --metrics-url "
                           "URL: Triton's --metrics-port, which `cvload serve` prints)",
                "stats": "no per-stage breakdown"}.get(source, "")
        self._warn(source, f"telemetry: {message}" + (f"; {what}, the run goes on" if what else ""))
        return None

    def _warn(self, source: str, message: str) -> None:
        if source not in self._warned:  # one warning per failing source, however often it fails
            self._warned.add(source)
            self.warnings.append(message)

    # ---- GPU source --------------------------------------------------------------------------------------------
    async def _open_nvml(self, *, explicit: bool) -> bool:
        sampler = NvmlSampler()
        try:
            await asyncio.to_thread(sampler.open)
        except NvmlUnavailable as exc:
            self._gpu_mode = "none"
            if explicit:
                self._sources["gpu"].update(status=UNAVAILABLE, error=str(exc))
                self._warn("gpu", f"telemetry: --gpu-source nvml: {exc}")
            else:
                prior = self._sources["gpu"]["error"]
                self._sources["gpu"].update(status=UNAVAILABLE, error=f"{prior}; NVML: {exc}" if prior else str(exc))
            return False
        self._nvml, self._gpu_mode = sampler, "nvml"
        self._sources["gpu"]["source"] = "nvml"
        return True

    async def _gpu_readings(self, scrape: Scrape | None) -> dict[str, dict[str, float]]:
        src = self._sources["gpu"]
        if self._gpu_mode is None:  # decide once, from the first answer of the metrics endpoint
            if self.gpu_source == "server" or (scrape is not None and scrape.gpus):
                self._gpu_mode, src["source"] = "server", "server"
            elif scrape is not None or self.metrics_url is None:  # auto, and the server has no GPU metrics
                src["error"] = ("no metrics endpoint" if self.metrics_url is None
                                else f"{self.metrics_url} reports no GPU metrics")
                await self._open_nvml(explicit=False)
        gpus: dict[str, dict[str, float]] = {}
        if self._gpu_mode == "server":
            if scrape is not None and scrape.gpus:
                gpus = scrape.gpus
            elif scrape is not None or self.metrics_url is None:
                where = self.metrics_url or "no metrics endpoint given"
                src.update(status=UNAVAILABLE, error=f"{where}: no GPU metrics")
                self._warn("gpu", f"telemetry: GPU metrics unavailable ({where}): start tritonserver with "
                                  "--allow-gpu-metrics true, or point --metrics-url at a DCGM exporter")
            else:  # the endpoint failed: its own warning says why
                src.update(status=UNAVAILABLE, error=self._sources["metrics"]["error"])
        elif self._gpu_mode == "nvml" and self._nvml is not None:
            try:
                gpus = await asyncio.to_thread(self._nvml.sample)
            except Exception as exc:
                src.update(status=UNAVAILABLE, error=f"NVML sample failed: {exc}")
                self._warn("gpu", f"telemetry: NVML sample failed ({exc}); GPU series unavailable")
        elif self._gpu_mode is None:  # auto, endpoint not answering yet: undecided
            src.update(status=UNAVAILABLE, error=self._sources["metrics"]["error"])
        if gpus:
            src.update(status=OK, error=None, samples=src["samples"] + 1)
        return gpus

    # ---- views -------------------------------------------------------------------------------------------------
    def series(self, since: float | None = None) -> dict[str, list[tuple[float, float]]]:
        """Every series (``gpu.util``, ``gpu.devices.<uuid>.util``, ``cpu.util``, ``models.<m>.success``, ...)
        as (monotonic t, value) points, optionally only those at or after ``since``."""
        if since is None:
            return {name: list(points) for name, points in self._series.items()}
        return {name: [p for p in points if p[0] >= since] for name, points in self._series.items()}

    def status(self) -> dict[str, dict[str, Any]]:
        """Per source (metrics, stats, gpu): status, error, samples taken."""
        return copy.deepcopy(self._sources)

    def stage_breakdown(self, window_s: float | None = None) -> list[dict]:
        """Per-model stage times (``stats_diff`` rows, active models only) over the last ``window_s`` seconds,
        or over the measured window when None."""
        if not self._snaps:
            return []
        end = self._snaps[-1]
        if window_s is None:
            start = self._baseline or self._first_snap
        else:
            start = self._snaps[0]
            for snap in self._snaps:
                if snap[0] <= end[0] - window_s:
                    start = snap
                else:
                    break
        if start is None or start is end:
            return []
        return diff_normalized(start[1], end[1], active_only=True)

    def summary(self, since: float | None = None) -> dict:
        """The summary.json ``telemetry`` section over the measured window (layout: package docstring); ``since``:
        from this monotonic time instead (a sweep level's window) to the latest sample."""
        start = since if since is not None else self._measure_t if self._measure_t is not None else (
            self._start_t or 0.0)
        end = self._ticks[-1] if self._ticks else None
        gpu = self._sources["gpu"]
        gpu_source = gpu["source"] if gpu["samples"] else None  # the source that gave readings
        return build_summary(
            self._series, start=start, end=end, gpu_ids=list(self._gpu_ids), model_names=list(self._model_names),
            gpu_source=gpu_source, stages=self.stage_breakdown(None), sources=self.status(),
            warnings=self.warnings, interval=self.interval, ticks=self._ticks,
        )
