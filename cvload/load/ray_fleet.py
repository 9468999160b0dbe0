"""``--ray-address``: a run's load processes on the nodes of a Ray cluster, merged as on one host.

Ray places, starts, watches and reaches the processes; cvload adds nothing of its own between hosts. Each load
process is the same ``python -m cvload.load.process_fleet`` as on one host, started by a small Ray actor (``LoadActor``)
on the node Ray chose (``SPREAD``, or only nodes that have a custom resource: ``--ray-resource``). The actor
relays: the driver's commands go in through actor calls, the process's batches come back through a poll call
(ten times a second; the actor runs one call at a time, so commands arrive in the order they were sent), and the driver feeds them to the same ``ProcessFleet`` machinery (one results folder,
one dashboard, objectives on all records).

Clocks: a request's latencies are offsets on the clock of the host that sent it, never mixed across hosts. Only
absolute times (send, intended send, start of measurement) move to the driver's monotonic clock, with each node's
offset measured at start (the middle of the fastest of a few round trips; exactly 0 on the driver's own kernel,
known by its boot id). The offsets are reported in the summary's ``client.placement``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cvload.errors import CvloadError, UsageError
from cvload.load.driver import Events
from cvload.load.process_fleet import FleetMember, LocalProcess, Part, ProcessFleet, resolve_processes
from cvload.settings.config import RunConfig

POLL_S = 0.1  # the driver asks a load process's actor for its output this often (when none came)
CLOCK_SAMPLES = 7


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray-address needs Ray installed", hint="pip install 'cvload[ray]'") from None
    return ray


def boot_id() -> str:
    """The running kernel's id: processes with the same one share CLOCK_MONOTONIC."""
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


class LoadActor:
    """Runs on a cluster node (as a Ray actor): starts one load process there and relays its pipes."""

    def __init__(self) -> None:
        self._process: LocalProcess | None = None
        self._frames: list[bytes] = []
        self._stderr: list[str] = []
        self._code: int | None = None
        self._ready = threading.Lock()

    def node(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "host": os.uname().nodename, "boot_id": boot_id()}

    def clock(self) -> tuple[float, float]:
        return time.monotonic(), time.time()

    def start(self, start: dict[str, Any]) -> int:
        self._process = LocalProcess(start)
        threading.Thread(target=self._pump, name="cvload-actor-pump", daemon=True).start()
        return self._process.pid

    def _pump(self) -> None:
        assert self._process is not None

        def keep(where: list[Any], item: Any) -> None:
            with self._ready:
                where.append(item)

        code = self._process.pump(lambda f: keep(self._frames, f), lambda line: keep(self._stderr, line))
        with self._ready:
            self._code = code

    def write(self, message: dict[str, Any]) -> None:
        if self._process is not None:
            self._process.write(message)

    def poll(self) -> tuple[list[bytes], list[str], int | None]:
        """What the process wrote since the last poll, and its exit code once it ended and all was taken.
        Never waits: the actor runs one call at a time, so commands stay in the order they were sent."""
        with self._ready:
            frames, self._frames = self._frames, []
            errors, self._stderr = self._stderr, []
            return frames, errors, self._code if not frames else None

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def end(self, timeout: float) -> None:
        if self._process is not None:
            self._process.end(timeout)


class RayProcess:
    """The driver's handle on one load process behind a ``LoadActor`` (a fleet's transport)."""

    def __init__(self, ray: Any, actor: Any, node: dict[str, Any], offset: float, wall_offset: float,
                 rtt: float, start: dict[str, Any]) -> None:
        self.ray, self.actor, self.node = ray, actor, node
        self.offset = offset  # driver monotonic = node monotonic + offset
        self.wall_offset = wall_offset
        self.rtt = rtt
        self.pid = ray.get(actor.start.remote(start))
        self.where = f" on {node['ip']}"
        self._running = True
        self._ended = False

    def _connected(self) -> bool:
        """Ray is still connected: a call after ``ray.shutdown()`` would start a new local Ray instance."""
        return bool(self.ray.is_initialized())

    def write(self, message: dict[str, Any]) -> None:
        if not self._connected():
            return
        with contextlib.suppress(Exception):  # a lost actor shows as a dead process in pump
            self.actor.write.remote(message)

    def pump(self, on_frame: Any, on_stderr: Any) -> int:
        try:
            while True:
                if not self._connected():  # the driver let go of Ray: nothing more will come
                    return -1
                frames, errors, code = self.ray.get(self.actor.poll.remote())
                if not frames and not errors and code is None:
                    time.sleep(POLL_S)
                for line in errors:
                    on_stderr(line)
                for frame in frames:
                    on_frame(frame)
                if code is not None:
                    return int(code)
        finally:
            self._running = False

    def running(self) -> bool:
        return self._running

    def end(self, timeout: float) -> None:
        if self._ended or not self._connected():
            return
        self._ended = True
        with contextlib.suppress(Exception):
            self.ray.get(self.actor.end.remote(timeout), timeout=timeout + 5.0)
        with contextlib.suppress(Exception):
            self.ray.kill(self.actor)


def measure_clock(ray: Any, actor: Any, node: dict[str, Any]) -> tuple[float, float, float]:
    """(monotonic offset, wall-clock offset, round trip) of a node against this process, from the fastest of a
    few round trips; the monotonic offset is exactly 0 on this kernel."""
    best: tuple[float, float, float] | None = None
    for _ in range(CLOCK_SAMPLES):
        t1, w1 = time.monotonic(), time.time()
        mono, wall = ray.get(actor.clock.remote())
        t2, w2 = time.monotonic(), time.time()
        sample = ((t1 + t2) / 2 - mono, (w1 + w2) / 2 - wall, t2 - t1)
        if best is None or sample[2] < best[2]:
            best = sample
    assert best is not None
    offset = 0.0 if node.get("boot_id") and node["boot_id"] == boot_id() else best[0]
    return offset, best[1], best[2]


class RayFleet(ProcessFleet):
    """A ``ProcessFleet`` whose load processes Ray placed on the cluster's nodes."""

    def __init__(self, config: RunConfig, count: int, items: int, ray: Any, owns_ray: bool,
                 events: Events | None = None, *, until_drained: bool = False) -> None:
        super().__init__(config, count, items, events, until_drained=until_drained)
        self.ray = ray
        self.owns_ray = owns_ray
        self._actor_cls = ray.remote(LoadActor)

    def spawn(self, part: Part) -> RayProcess:
        options: dict[str, Any] = {"num_cpus": 1, "scheduling_strategy": "SPREAD", "max_restarts": 0}
        if self.config.ray_resource:
            options["resources"] = {self.config.ray_resource: 0.001}
        actor = self._actor_cls.options(**options).remote()
        node = self.ray.get(actor.node.remote(), timeout=READY_TIMEOUT_RAY_S)
        offset, wall_offset, rtt = measure_clock(self.ray, actor, node)
        transport = RayProcess(self.ray, actor, node, offset, wall_offset, rtt, asdict(part))
        print(f"cvload: load process {part.index} on {node['ip']} ({node['host']}, node {node['node_id'][:8]}): "
              f"clock offset {offset * 1000:+.3f} ms" + (" (this host's kernel)" if offset == 0.0 else
                                                         f" (round trip {rtt * 1000:.2f} ms)")
              + f", wall clock {wall_offset * 1000:+.3f} ms", file=sys.stderr, flush=True)
        return transport

    @staticmethod
    def _process(child: FleetMember) -> RayProcess:
        """The member's link: every member of this fleet was spawned here, as a ``RayProcess``."""
        link = child.transport
        assert isinstance(link, RayProcess)
        return link

    def translate(self, child: FleetMember, batch: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        offset = self._process(child).offset
        if offset == 0.0:
            return batch
        for kind, payload in batch:
            if kind in ("record", "sent"):
                payload.sent += offset
                if payload.intended is not None:
                    payload.intended += offset
            elif kind in ("status", "final"):
                for key in ("measure_start", "last_send"):
                    if payload.get(key) is not None:
                        payload[key] += offset
        return batch

    def go(self, child: FleetMember, t0: float) -> dict[str, Any]:
        return {"cmd": "go", "t0": t0 - self._process(child).offset}

    def placement(self) -> list[dict[str, Any]]:
        out = []
        for child in self.children:
            t = self._process(child)
            out.append({"process": f"load process {child.part.index}", "node_id": t.node["node_id"],
                        "ip": t.node["ip"], "host": t.node["host"], "pid": t.pid,
                        "clock_offset_ms": round(t.offset * 1000, 3), "wall_offset_ms": round(t.wall_offset * 1000, 3),
                        "round_trip_ms": round(t.rtt * 1000, 3)})
        return out

    def close_processes(self, grace: float = 10.0) -> None:
        if not self.ray.is_initialized():  # closed already (the run's end, then the session's close)
            return
        super().close_processes(grace)
        if self.owns_ray:
            with contextlib.suppress(Exception):
                self.ray.shutdown()
            self.owns_ray = False


READY_TIMEOUT_RAY_S = 120.0  # Ray must find a node with a free CPU (and the resource asked) for each process


async def ray_fleet(config: RunConfig, items: int, events: Events | None = None, *,
                    until_drained: bool = False) -> RayFleet:
    """Connect to the cluster and size the fleet; its ``start()`` places the load processes, measures their
    clocks and waits until all are ready."""
    import asyncio

    ray = _ray()
    owns = not ray.is_initialized()
    loop = asyncio.get_running_loop()
    if owns:
        def connect() -> None:
            ray.init(address=config.ray_address, logging_level="WARNING", log_to_driver=False)

        for attempt in (1, 2):
            try:
                await loop.run_in_executor(None, connect)
                break
            except Exception as exc:  # noqa: BLE001 - Ray's own message says what it could not reach
                # Ray Client's proxy starts a server per driver; that start can fail once on a busy head (seen
                # here: "Starting Ray client server failed"). One more try, then the user gets Ray's message.
                if attempt == 1 and "client server failed" in str(exc):
                    with contextlib.suppress(Exception):
                        ray.shutdown()
                    continue
                raise CvloadError(f"--ray-address {config.ray_address}: cannot connect to the Ray cluster ({exc})",
                                  hint="start one (ray start --head) or give its address (auto, HOST:6379 or "
                                       "ray://HOST:10001)") from None
    cpus = int(ray.cluster_resources().get("CPU", 0))
    count = resolve_processes(config, cpus=cpus + 1)  # the driver is not on the cluster's CPUs
    if count > cpus:
        if owns:
            ray.shutdown()
        raise UsageError(f"--processes {count}: the Ray cluster at {config.ray_address} has {cpus} CPUs, one "
                         "per load process", hint=f"use --processes {cpus} or fewer, or add nodes")
    return RayFleet(config, count, items, ray, owns, events, until_drained=until_drained)
