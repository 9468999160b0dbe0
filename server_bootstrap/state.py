"""The state file of a deployment: which stage finished from which inputs, and which servers run.

``up`` marks a stage ``running`` before it starts and ``done`` (with the hash of its inputs) when it finishes,
so a stage interrupted by Ctrl-C, a crash or a kill is never mistaken for a finished one. Servers are recorded
the moment they are spawned (pid and start time, to survive pid reuse), so a later ``status``, ``down`` or
``up`` finds them even when the ``up`` that started them died half-way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvload.errors import CvloadError, UsageError

VERSION = 1
RUNNING, DONE, FAILED, INTERRUPTED = "running", "done", "failed", "interrupted"


def stable_hash(value: Any) -> str:
    """A short hash of JSON-able inputs (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    status: str
    inputs_hash: str
    started: float
    finished: float | None = None
    detail: str = ""


@dataclass
class ServerRecord:
    """One launched tritonserver: enough to check, diagnose and stop it from another process."""

    index: int
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    gpus: list[int]
    log: str
    model_repository: str
    pid: int | None = None
    start_time: int | None = None  # /proc/<pid>/stat starttime: tells our process from a reused pid
    shm_prefix: str = ""
    compose_file: str | None = None  # docker mode: the service runs under `docker compose`
    service: str | None = None
    container: str | None = None  # python-runtime: the `docker run -d` container (name), removed by down
    runtime: str | None = None  # python-runtime: grpc | fastapi, the API its one port speaks

    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def grpc(self) -> str:
        return f"{self.client_host}:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"{self.client_host}:{self.http_port}"

    @property
    def metrics(self) -> str:
        return f"http://{self.client_host}:{self.metrics_port}/metrics"


@dataclass
class State:
    path: Path
    stages: dict[str, dict[str, StageRecord]] = field(default_factory=dict)  # target -> stage -> record
    servers: list[ServerRecord] = field(default_factory=list)
    servers_target: str | None = None
    servers_inputs: str = ""  # launch inputs hash the running servers were started from
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config of the last plan/up
    target: str | None = None

    @classmethod
    def load(cls, path: Path) -> State:
        state = cls(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return state
        except (OSError, ValueError) as exc:
            raise _unreadable(path, str(exc)) from None
        if not isinstance(data, dict):
            raise _unreadable(path, f"expected a JSON object, found {type(data).__name__}")
        if data.get("version") != VERSION:
            raise UsageError(f"state file {path} has version {data.get('version')!r}, expected {VERSION}",
                             hint="remove it to start over")
        try:  # valid JSON of the wrong shape (hand-edited, another tool's file) must not crash every command
            state.stages = {t: {n: StageRecord(**r) for n, r in recs.items()}
                            for t, recs in data.get("stages", {}).items()}
            state.servers = [ServerRecord(**s) for s in data.get("servers", [])]
            state.servers_target = data.get("servers_target")
            state.servers_inputs = data.get("servers_inputs", "")
            state.config = dict(data.get("config", {}))
            state.target = data.get("target")
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            raise _unreadable(path, f"unexpected shape: {type(exc).__name__}: {exc}") from None
        return state

    def save(self) -> None:
        data = {
            "version": VERSION,
            "target": self.target,
            "config": self.config,
            "stages": {t: {n: dataclasses.asdict(r) for n, r in recs.items()} for t, recs in self.stages.items()},
            "servers": [dataclasses.asdict(s) for s in self.servers],
            "servers_target": self.servers_target,
            "servers_inputs": self.servers_inputs,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)  # atomic: a kill never leaves half a state file

    # ---- stages ----------------------------------------------------------------------------------------------
    def stage(self, target: str, name: str) -> StageRecord | None:
        return self.stages.get(target, {}).get(name)

    def mark(self, target: str, name: str, status: str, inputs_hash: str, detail: str = "") -> None:
        records = self.stages.setdefault(target, {})
        previous = records.get(name)
        now = time.time()
        if status == RUNNING or previous is None:
            records[name] = StageRecord(status, inputs_hash, started=now, detail=detail)
        else:
            records[name] = StageRecord(status, inputs_hash, previous.started, finished=now, detail=detail)
        self.save()


def _unreadable(path: Path, why: str) -> UsageError:
    return UsageError(f"state file {path} is unreadable ({why})",
                      hint="remove it to start over (stages will run again); stop servers by hand")


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """One ``up``/``down`` at a time per work folder (the lock dies with its process, so no stale locks)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ".bootstrap.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise CvloadError(f"another cvload bootstrap command (pid {holder}) is working in {workdir}",
                              hint="wait for it to finish, or stop it (Ctrl-C) first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
