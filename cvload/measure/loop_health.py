"""How far a run's own timestamps can be off: the measuring process's event-loop lag and CPU use, sampled
through the run.

Every chunk timestamp is taken when the event loop gets round to a socket that became readable. While the loop
is busy (a long callback, decoding, file writes) or the process is short of CPU, that moment comes late, and
every latency measured meanwhile is inflated by as much. A probe thread wakes every ``INTERVAL_S`` and writes
the time it was due into a pipe the loop watches; the loop stamps the read exactly as it stamps a response, so
(stamp - due) is the delay a response arriving then would have had. Unlike a timer on the loop itself, the
probe is not rounded to the millisecond resolution of the loop's sleep, so an idle loop reads ~0.1 ms, not 0.5.

Lag has two owners: cvload's own work on the loop, and the host (other processes, a server on the same cores,
a busy CPU scheduler). A run's process also probes a bare asyncio loop in a process of its own that does
nothing else (``reference=True``): where that loop lags as much, the warning blames the host, not the load.

Leaf module: no cvload imports, so the engine, the session and every view can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
from array import array
from typing import Any

INTERVAL_S = 0.005
LAG_WARN_MS = 5.0  # loop-lag p99 above this: timings are visibly inflated
CPU_WARN_CORES = 0.9  # one Python process cannot use more than one core for its event loop
LIVE_SAMPLES = 400  # the live figures: the last ~2 s of probes
_DUE = struct.Struct("d")

# Summary keys (section ``client`` of summary.json) objectives may name, with their unit kind (cvload.measure.slo).
CLIENT_METRICS = {
    "client.loop_lag_ms.p50": "ms",
    "client.loop_lag_ms.p99": "ms",
    "client.loop_lag_ms.max": "ms",
    "client.cpu_cores": "plain",
}


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on an already sorted list."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def lag_stats(lags_ms: Any) -> dict[str, float | None]:
    values = sorted(lags_ms)
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(_percentile(values, 0.50), 3), "p99": round(_percentile(values, 0.99), 3),
            "max": round(values[-1], 3)}


HOST_SHARE = 0.5  # a bare loop lagging at least this share of the run's loop lag: mostly the host's doing
HOST_BUSY = "this host's CPUs are busy"


def warnings_for(lag: dict[str, float | None], cpu_cores: float | None,
                 reference: dict[str, float | None] | None = None, server_here: bool = False) -> list[str]:
    """What the user must know before trusting the run's latencies. ``reference``: the loop lag of a bare
    asyncio loop on this host meanwhile; ``server_here``: the server runs on this host."""
    p99 = lag.get("p99")
    inflated = f"measurements may be inflated by up to {p99:.1f} ms" if p99 is not None else \
        "measurements may be inflated"
    out = []
    bare = (reference or {}).get("p99")
    if p99 is not None and p99 > LAG_WARN_MS and bare is not None and bare >= HOST_SHARE * p99:
        who = "the server shares this host's CPUs" if server_here else "other processes use this host's CPUs"
        out.append(f"client event-loop lag p99 {p99:.1f} ms (max {lag.get('max') or 0:.0f} ms): {inflated}; a bare "
                   f"event loop beside it lagged {bare:.1f} ms (max {(reference or {}).get('max') or 0:.0f} ms): "
                   f"{HOST_BUSY} ({who}), more than cvload's load")
    elif p99 is not None and p99 > LAG_WARN_MS:
        out.append(f"client event-loop lag p99 {p99:.1f} ms (max {lag.get('max') or 0:.0f} ms): {inflated}: "
                   "lower the load per process")
    if cpu_cores is not None and cpu_cores > CPU_WARN_CORES:
        out.append(f"the measuring process used {cpu_cores:.0%} of a CPU core: {inflated}: "
                   "lower the load per process")
    return out


class LoopHealth:
    """Start it on the measuring loop when the run starts, ``stop()`` it when it ends; ``summary()`` is the
    summary's ``client`` section, ``live()`` the same over the last ~2 s for progress lines."""

    def __init__(self, interval_s: float = INTERVAL_S, *, reference: bool = False) -> None:
        self.interval_s = interval_s
        self.reference = reference  # also probe a bare loop in a process of its own (``reference_loop``)
        self.server_here = False  # the server runs on this host (said in a warning that blames the host)
        self._reference: subprocess.Popen[bytes] | None = None
        self.reference_lag: dict[str, float | None] | None = None
        self.lags_ms: array[float] = array("f")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._fds: tuple[int, int] | None = None
        self._cpu0 = self._wall0 = 0.0
        self._cpu1: float | None = None
        self._wall1: float | None = None
        self._live_cpu = (0.0, 0.0)  # (process time, wall) at the last live() call

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self._fds = (read_fd, write_fd)
        self._loop.add_reader(read_fd, self._on_probe)
        self._cpu0, self._wall0 = time.process_time(), time.monotonic()
        self._cpu1 = self._wall1 = None
        self._live_cpu = (self._cpu0, self._wall0)
        self._running = True
        self._thread = threading.Thread(target=self._probe, name="cvload-loop-probe", daemon=True)
        self._thread.start()
        if self.reference:
            package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root,
                                                                          os.environ.get("PYTHONPATH")])))
            with contextlib.suppress(OSError):
                self._reference = subprocess.Popen(
                    [sys.executable, "-c", "from cvload.measure.loop_health import reference_loop; reference_loop()"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._cpu1, self._wall1 = time.process_time(), time.monotonic()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._fds is not None:
            read_fd, write_fd = self._fds
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._on_probe()  # probes already in the pipe
                self._loop.remove_reader(read_fd)
            os.close(read_fd)
            os.close(write_fd)
            self._fds = None
        if self._reference is not None:
            self.reference_lag = _reference_result(self._reference)
            self._reference = None

    # ---- probing ---------------------------------------------------------------------------------------------
    def _probe(self) -> None:
        assert self._fds is not None
        write_fd, interval, clock = self._fds[1], self.interval_s, time.monotonic
        due = clock()
        while self._running:
            due += interval
            delay = due - clock()
            if delay > 0:
                time.sleep(delay)
            elif delay < -interval:
                due = clock()  # this thread was starved: skip the probes it missed, do not burst
            try:
                os.write(write_fd, _DUE.pack(due))
            except (BlockingIOError, OSError):
                return

    def _on_probe(self) -> None:
        now = time.monotonic()
        assert self._fds is not None
        try:
            data = os.read(self._fds[0], 4096)
        except BlockingIOError:
            return
        append = self.lags_ms.append
        for (due,) in _DUE.iter_unpack(data[: len(data) - len(data) % _DUE.size]):
            append(max(0.0, (now - due) * 1000.0))

    # ---- results ---------------------------------------------------------------------------------------------
    def cpu_cores(self) -> float | None:
        end_cpu = self._cpu1 if self._cpu1 is not None else time.process_time()
        end_wall = self._wall1 if self._wall1 is not None else time.monotonic()
        wall = end_wall - self._wall0
        return round((end_cpu - self._cpu0) / wall, 3) if wall > 0 else None

    def summary(self) -> dict[str, Any]:
        lag = lag_stats(self.lags_ms)
        cpu = self.cpu_cores()
        out: dict[str, Any] = {"loop_lag_ms": lag, "cpu_cores": cpu, "probe_interval_ms": self.interval_s * 1000.0,
               "samples": len(self.lags_ms)}
        if self.reference_lag is not None:
            out["bare_loop_lag_ms"] = self.reference_lag
        out["warnings"] = warnings_for(lag, cpu, self.reference_lag, self.server_here)
        return out

    def live(self) -> dict[str, Any]:
        """Loop lag over the last ~2 s and CPU since the previous call: for progress lines and the dashboard."""
        lag = lag_stats(self.lags_ms[-LIVE_SAMPLES:])
        cpu_t, wall_t = time.process_time(), time.monotonic()
        cpu0, wall0 = self._live_cpu
        cpu = round((cpu_t - cpu0) / (wall_t - wall0), 3) if wall_t - wall0 > 0.05 else None
        if cpu is not None:
            self._live_cpu = (cpu_t, wall_t)
        else:
            cpu = self.cpu_cores()
        return {"loop_lag_ms": lag, "cpu_cores": cpu, "warnings": warnings_for(lag, cpu)}


def _reference_result(process: subprocess.Popen[bytes]) -> dict[str, float | None] | None:
    """The bare loop's lag statistics, once its stdin is closed (None: it could not say)."""
    try:
        out, _ = process.communicate(timeout=3.0)
        stats = json.loads(out)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        process.kill()
        process.wait()
        return None
    return stats if isinstance(stats, dict) else None


def reference_loop() -> None:
    """A bare asyncio loop probed as a run's loop is, until stdin closes; prints its lag statistics (JSON)."""

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_stdin() -> None:
            if not os.read(0, 4096) and not done.done():
                done.set_result(None)

        loop.add_reader(0, on_stdin)
        health = LoopHealth()
        health.start()
        await done
        health.stop()
        print(json.dumps(lag_stats(health.lags_ms)), flush=True)

    asyncio.run(probe())


def client_text(client: dict[str, Any] | None) -> str:
    """One line for a footer or header: ``client loop lag p99 0.3 ms (max 2 ms), CPU 41%``."""
    if not client:
        return ""
    lag = client.get("loop_lag_ms") or {}
    cpu = client.get("cpu_cores")
    parts = []
    if lag.get("p99") is not None:
        parts.append(f"loop lag p99 {lag['p99']:.1f} ms (max {lag.get('max') or 0:.0f} ms)")
    if cpu is not None:
        parts.append(f"CPU {cpu:.0%}")
    if client.get("load_processes"):  # several load processes: the worst lag, all their CPU
        parts.append(f"{client['load_processes']} load processes")
    if not parts:
        return ""
    warnings = client.get("warnings") or []
    cause = HOST_BUSY if any(HOST_BUSY in w for w in warnings) else "lower the load per process"
    warn = f"  (measurements may be inflated: {cause})" if warnings else ""
    return "client " + ", ".join(parts) + warn


def merge_client(processes: list[tuple[str, dict[str, Any] | None]],
                 coordinator: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``client`` section for a run in several load processes: the worst loop lag of any of them (each
    stamps its own requests), the CPU of all of them together (with the coordinator's, which stamps nothing and
    is never warned about), each process's own section under ``processes`` and its warnings named after it."""
    sections = [(label, s) for label, s in processes if s]
    lags = [s.get("loop_lag_ms") or {} for _, s in sections]

    def worst(key: str) -> float | None:
        got = [lag[key] for lag in lags if lag.get(key) is not None]
        return max(got) if got else None

    cpus = [s["cpu_cores"] for _, s in sections if s.get("cpu_cores") is not None]
    if coordinator and coordinator.get("cpu_cores") is not None:
        cpus.append(coordinator["cpu_cores"])
    warnings = [f"{label}: {w}" for label, s in sections for w in s.get("warnings", [])]
    listed = [{"process": label, **{k: v for k, v in s.items() if k != "warnings"}} for label, s in sections]
    if coordinator:
        listed.append({"process": "coordinator", **{k: v for k, v in coordinator.items() if k != "warnings"}})
    return {"loop_lag_ms": {key: worst(key) for key in ("p50", "p99", "max")},
            "cpu_cores": round(sum(cpus), 3) if cpus else None,
            "probe_interval_ms": sections[0][1].get("probe_interval_ms", INTERVAL_S * 1000.0) if sections
            else INTERVAL_S * 1000.0,
            "samples": sum(s.get("samples", 0) for _, s in sections),
            "load_processes": len(processes), "warnings": warnings, "processes": listed}
