"""Servers that outlive the command that started them: launch in the background, find, check and stop later.

``up`` starts each tritonserver through the local launcher in its own session (so it survives ``up`` and a
Ctrl-C in the terminal), records it in the state file the moment it is spawned, then waits for readiness. A
later ``status``, ``doctor`` or ``down`` finds it through that record; a reused pid is told apart by its start
time.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from cvload import subprocesses
from cvload.errors import CvloadError, ServerError
from cvload.triton import launcher
from cvload.triton.launcher import TritonInstall, TritonServer, trace_args
from server_bootstrap.config import DeploymentConfig
from server_bootstrap.layout import Layout
from server_bootstrap.state import ServerRecord

if TYPE_CHECKING:
    from server_bootstrap import runtime_probe


@dataclass
class DetachedServer(TritonServer):
    """A TritonServer that reports its process as soon as it exists and can carry extra environment."""

    env: dict[str, str] = field(default_factory=dict)
    on_spawn: Callable[[DetachedServer], None] | None = None

    def _environment(self, install: TritonInstall) -> dict[str, str]:
        env = super()._environment(install)
        env.update(self.env)
        return env

    def spawned(self) -> None:
        if self.on_spawn is not None:
            self.on_spawn(self)


def server_env(config: DeploymentConfig, layout: Layout, gpus: list[int]) -> dict[str, str]:
    """What the real deployment's processes need: their GPUs and CosyVoice on PYTHONPATH (as run.sh exports)."""
    if config.target == "emulator":
        return {}
    paths = [str(layout.source), str(layout.source / "third_party" / "Matcha-TTS")]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "PYTHONPATH": os.pathsep.join(paths),
           "PYTHONIOENCODING": "utf-8"}
    if config.world_size > 1:
        env["TRTLLM_ORCHESTRATOR"] = "1"
    return env


def launch(config: DeploymentConfig, layout: Layout, *, record: Callable[[ServerRecord], None],
           out: TextIO) -> list[ServerRecord]:
    """Start every server; ``record`` is called at spawn (pid known) and again once ready (ports final)."""
    started: list[DetachedServer] = []
    records: list[ServerRecord] = []
    try:
        for index, gpus in enumerate(config.server_gpus()):
            http, grpc, metrics = config.server_ports(index)
            log = layout.server_log(index)
            log.parent.mkdir(parents=True, exist_ok=True)

            def spawned(server: DetachedServer, index: int = index, gpus: list[int] = gpus) -> None:
                assert server.process is not None
                rec = ServerRecord(
                    index=index, host=server.host, http_port=int(server.http_port or 0),
                    grpc_port=int(server.grpc_port or 0), metrics_port=int(server.metrics_port or 0),
                    gpus=gpus if config.target != "emulator" else [],
                    log=str(server.log_path), model_repository=str(server.model_repository),
                    pid=server.process.pid, start_time=subprocesses.start_time(server.process.pid),
                    shm_prefix=server._shm_prefix)
                records.append(rec)
                record(rec)

            server = DetachedServer(
                layout.model_repository(index), host=config.host, http_port=http or None, grpc_port=grpc or None,
                metrics_port=metrics or None, tritonserver=config.server.tritonserver,
                workdir=layout.server_dir(index), log_path=log, ready_timeout=config.ready_timeout,
                gpu_metrics=config.target != "emulator", env=server_env(config, layout, gpus), on_spawn=spawned,
                # a trace file named, tracing off: `cvload run --triton-trace` switches it on for a run
                extra_args=trace_args(layout.server_dir(index) / "triton_trace.json"))
            t0 = time.monotonic()
            started.append(server)
            server.start()
            assert server.process is not None  # started
            print(f"    server {index}: ready in {time.monotonic() - t0:.1f}s, pid {server.process.pid}, "
                  f"grpc {records[-1].grpc}, http {records[-1].http}, metrics {records[-1].metrics}"
                  + (f", GPUs {','.join(map(str, gpus))}" if config.target != "emulator" else ""),
                  file=out, flush=True)
    except BaseException:
        for server in started:  # a half-started deployment is worse than none
            server.stop()
        for rec in records:
            stop(rec)
        raise
    return records


def ready(rec: ServerRecord, timeout: float = 2.0) -> bool:
    if rec.runtime:
        return runtime_answer(rec).ok
    return launcher.ready(rec.http, timeout)


def runtime_answer(rec: ServerRecord) -> runtime_probe.Answer:
    """A python-runtime record: does its one port answer as CosyVoice's runtime (of its kind)?"""
    # Imported here: the probe brings aiohttp and cvload's targets, which `status`, `logs` and `down` of a
    # Triton server never need (`status`: 0.45 s -> about 0.3 s of CPU).
    from server_bootstrap import runtime_probe

    port = rec.grpc_port if rec.runtime == "grpc" else rec.http_port
    return runtime_probe.probe(rec.client_host, port, rec.runtime or "grpc")


def running(rec: ServerRecord) -> bool:
    """The recorded process (or compose service, or container) still runs."""
    if rec.compose_file or rec.container:
        return ready(rec)
    return subprocesses.alive(rec.pid, rec.start_time)


def terminate(rec: ServerRecord) -> None:
    """Ask a recorded server to shut down (SIGTERM to its leader only) without waiting."""
    if rec.pid and not rec.compose_file:
        subprocesses.send_term(rec.pid, rec.start_time)


def stop(rec: ServerRecord, *, timeout: float = 20.0) -> bool:
    """Stop one recorded server and remove what its Python backend left in /dev/shm; False if not running."""
    if rec.compose_file or rec.container:
        return False  # compose services stop together (compose.down); containers by `docker rm -f`
    ended = subprocesses.end(rec.pid, started=rec.start_time, grace=timeout, sigterm="leader") if rec.pid else None
    if rec.shm_prefix:
        subprocesses.remove_shm(rec.shm_prefix)
    return bool(ended and ended.was_running)


def wait_ready(records: list[ServerRecord], deadline_s: float, *, alive: Callable[[], bool] | None = None) -> None:
    """Poll readiness of servers started elsewhere (docker compose); fail with the logs command to read."""
    pending = list(records)

    def all_ready() -> bool:
        pending[:] = [r for r in pending if not ready(r, timeout=1.0)]
        if pending and alive is not None and not alive():
            raise ServerError("the compose services exited before becoming ready",
                              hint="read their output with `docker compose -f <workdir>/docker-compose.yaml logs`")
        return not pending

    try:
        subprocesses.wait_until(all_ready, deadline_s, what="the servers to become ready", first_delay=0.05,
                           max_delay=1.0)
    except subprocesses.WaitTimeout:
        raise ServerError(f"server(s) {', '.join(str(r.index) for r in pending)} not ready after "
                          f"{deadline_s:.0f} s (a model stuck loading usually means a Python-backend stub "
                          "that cannot start)", hint="cvload bootstrap doctor; cvload bootstrap logs server") from None


def endpoints_line(records: list[ServerRecord]) -> str:
    return " ".join(r.http if r.runtime == "fastapi" else r.grpc for r in records)


def run_hint(records: list[ServerRecord], mode: str) -> str:
    servers = " ".join(f"--server {r.http if r.runtime == 'fastapi' else r.grpc}" for r in records)
    if records and records[0].runtime:
        protocol = "http" if records[0].runtime == "fastapi" else "grpc"
        return f"cvload run {servers} --api cosyvoice --protocol {protocol} --requests 20"
    return f"cvload run {servers} --mode {mode} --requests 20"


def describe(rec: ServerRecord) -> str:
    if rec.runtime:
        answer = runtime_answer(rec)
        return (f"server {rec.index}: {'ready' if answer.ok else 'not ready'} (container {rec.container}, "
                f"runtime {rec.runtime}) {answer.detail}"
                + ("" if answer.ok else f"\n    cause: {answer.cause}\n    fix:   {answer.fix}"))
    state = "ready" if ready(rec, timeout=1.0) else ("running, not ready" if running(rec) else "not running")
    where = f"pid {rec.pid}" if rec.pid else f"compose service {rec.service}"
    return (f"server {rec.index}: {state} ({where}) grpc {rec.grpc} http {rec.http} metrics {rec.metrics}"
            f"{' GPUs ' + ','.join(map(str, rec.gpus)) if rec.gpus else ''}")


def run_quiet(cmd: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise CvloadError(f"`{cmd[0]}` not found", hint=subprocesses.TOOL_HINTS.get(cmd[0])) from None
