"""What the dashboard shows: a live run (measured by a child process) or a finished results folder.

The live run is measured in its own process (``cvload.tui.worker``: a ``Session`` exactly as ``cvload run``), so
drawing the screen shares no interpreter lock and no garbage collector with the clock that timestamps chunks.
The dashboard tails the results folder the run writes anyway, reads a few status lines a second and sends
commands as JSON lines. Both sources answer the same questions, so one dashboard serves both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvload.config import RunConfig
from cvload.errors import CvloadError, UsageError
from cvload.live import LiveStats, finished_at
from cvload.metrics import summarize
from cvload.records import RequestRecord
from cvload.results import read_records, write_json
from cvload.telemetry.sampler import sample_values

OBJECTIVES_EVERY_S = 1.0  # live objective verdicts: once a second is plenty and keeps the cost flat
YIELD_NICE = 10
RATE_STEP = 1.25  # open loop: + and - multiply / divide the rate (geometric steps work at any scale)


@dataclass
class Status:
    """The header's facts at one moment."""

    phase: str  # starting | running | paused | stopping | finished | failed | replay
    elapsed: float = 0.0
    done: int = 0
    planned: int | None = None
    inflight: int = 0
    load: str = ""
    remaining_s: float | None = None  # --duration runs: time left
    message: str | None = None
    objectives: list[dict[str, Any]] = field(default_factory=list)


def target_label(protocol: str, mode: str, model: str, servers: list[str]) -> str:
    return f"{model} @ {', '.join(servers) or '?'} ({protocol} {mode})"


class Source:
    """Interface of a dashboard source; the replay of a finished run ignores the run commands."""

    live: LiveStats
    controllable = False
    out_dir: Path | None = None
    target: str = ""
    scenario: str | None = None
    telemetry: Any = None

    def status(self) -> Status:
        raise NotImplementedError

    def toggle_pause(self) -> str | None:
        return None

    def change_load(self, direction: int) -> str | None:
        return None

    def stop(self) -> None:
        """Quit: stop sending, let in-flight requests finish, write the results folder."""

    @property
    def done(self) -> bool:
        return True

    def records(self) -> list[RequestRecord]:
        return []

    def poll(self) -> None:
        """Take in new data (a live run); called once per frame."""

    def snapshot_summary(self) -> dict[str, Any]:
        raise NotImplementedError

    def snapshot_dir(self) -> Path:
        """Where ``s`` writes: ``<results>/snapshots/NNN-<elapsed>s``."""
        assert self.out_dir is not None
        root = self.out_dir / "snapshots"
        n = len(list(root.glob("*"))) + 1 if root.exists() else 1
        path = root / f"{n:03d}-{self.status().elapsed:.0f}s"
        path.mkdir(parents=True, exist_ok=True)
        return path


class _Tail:
    """New complete lines of a file another process appends to (records.jsonl, telemetry.jsonl)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None
        self._partial = ""

    def lines(self) -> list[str]:
        if self._fh is None:
            if not self.path.exists():
                return []
            self._fh = open(self.path, encoding="utf-8")  # noqa: SIM115 - kept open while the run lasts
        data = self._partial + self._fh.read()
        lines = data.split("\n")
        self._partial = lines.pop()
        return [line for line in lines if line.strip()]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class LiveTelemetry:
    """The run's telemetry as the dashboard sees it: samples from ``telemetry.jsonl`` as they are written, the
    stage breakdown and warnings from the measuring process's status lines."""

    stages_scope = "last 10 s"

    def __init__(self, path: Path) -> None:
        self._tail = _Tail(path)
        self._series: dict[str, list[tuple[float, float]]] = {}
        self.stages: list[dict[str, Any]] = []
        self.warnings: list[str] = []

    def poll(self) -> None:
        for line in self._tail.lines():
            try:
                sample = json.loads(line)
            except ValueError:
                continue
            for name, value in sample_values(sample).items():
                self._series.setdefault(name, []).append((float(sample.get("t", 0.0)), value))

    def series(self) -> dict[str, list[tuple[float, float]]]:
        return self._series

    def stage_breakdown(self, window_s: float | None = None) -> list[dict[str, Any]]:
        return self.stages

    def close(self) -> None:
        self._tail.close()


class RunSource(Source):
    """A live run, measured by a child process (``cvload.tui.worker``) that runs the ``Session`` exactly as
    ``cvload run`` does; this side tails the files it writes and sends it commands."""

    controllable = True

    def __init__(self, config: RunConfig, *, window_s: float | None = None, yield_cpu: bool = False) -> None:
        self.config = config
        self.live = LiveStats() if window_s is None else LiveStats(window_s=window_s)
        self.yield_cpu = yield_cpu
        self.error: CvloadError | None = None
        self.error_detail: str | None = None
        self.summary: dict[str, Any] | None = None
        self.phase = "starting"
        self.state: dict[str, Any] = {}
        self.target = target_label(config.protocol, config.mode, config.model,
                                   ["embedded emulator"] if config.emulator else config.server)
        self.scenario = config.name or config.scenario
        self.stderr: deque[str] = deque(maxlen=200)
        self._exit_code: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._records: _Tail | None = None
        self._asked: float | None = None  # the concurrency or rate last asked for (keys faster than status)
        self._ended_at: float | None = None
        self._objectives = _parse_objectives(config)
        self._verdicts_cache: list[dict[str, Any]] = []
        self._verdicts_at = 0.0

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the measuring process (once; later calls do nothing)."""
        if self._proc is not None:
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "cvload.tui.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", bufsize=1,
            start_new_session=True,  # the terminal's Ctrl-C is the dashboard's to handle (it quits gracefully)
        )
        self._send({"config": self.config.to_json()})
        if self.yield_cpu:
            # Where the machine is short of CPU (a local server, a small box), drawing must lose to measuring:
            # this thread (the dashboard's, and threads it starts later) runs at a lower priority than the
            # measuring process started above and the server it starts.
            with contextlib.suppress(OSError, AttributeError):
                os.nice(YIELD_NICE)
        for target in (self._read_messages, self._read_stderr):
            thread = threading.Thread(target=target, daemon=True, name="cvload-tui-reader")
            thread.start()
            self._readers.append(thread)

    def _send(self, message: dict[str, Any]) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return False
        try:
            with self._lock:
                proc.stdin.write(json.dumps(message) + "\n")
                proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def _read_messages(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            self._on_message(message)
        proc.wait()
        if self._exit_code is None and self.error is None:
            self._fail(f"the measuring process ended unexpectedly (exit code {proc.returncode})",
                       proc.returncode or 1)
        self._ended_at = self._ended_at or time.monotonic()
        if self.error is None and self.out_dir is not None and (self.out_dir / "summary.json").exists():
            self.summary = _read_json(self.out_dir / "summary.json")
            self.phase = "finished"
        self._finished.set()

    def _read_stderr(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        for line in proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "status":
            self.state = message
            if self.telemetry is not None:
                if "stages" in message:
                    self.telemetry.stages = message["stages"]
                self.telemetry.warnings = message.get("warnings", [])
            if self.phase == "starting":
                self.phase = "running"
        elif kind == "prepared":
            self.out_dir = Path(message["out_dir"])
            cfg = self.config
            self.target = target_label(cfg.protocol, cfg.mode, cfg.model, message.get("servers") or [])
            self._records = _Tail(self.out_dir / "records.jsonl")
            if message.get("telemetry"):
                self.telemetry = LiveTelemetry(self.out_dir / "telemetry.jsonl")
            self.phase = "running"
        elif kind == "finished":
            self._exit_code = int(message["exit_code"])
            self._ended_at = time.monotonic()
            self.phase = "finishing"
        elif kind == "error":
            self.error_detail = message.get("traceback")
            self._fail(str(message.get("message")), int(message.get("exit_code", 1)))

    def _fail(self, message: str, code: int) -> None:
        error = CvloadError(message)
        error.exit_code = code
        self.error = error
        self.phase = "failed"

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._proc is None:
            return True
        finished = self._finished.wait(timeout)
        if finished:
            for thread in self._readers:
                thread.join(timeout=5)
            if self._records is not None:
                self._records.close()
            if isinstance(self.telemetry, LiveTelemetry):
                self.telemetry.close()
        return finished

    def exit_code(self) -> int:
        """As ``cvload run``: raise what failed, else the measuring process's exit code."""
        if self.error is not None:
            raise self.error
        assert self._exit_code is not None
        return self._exit_code

    # ---- commands ----------------------------------------------------------------------------------------
    def toggle_pause(self) -> str | None:
        if not self.state or self.state.get("stopping") or self.done:
            return None
        if self.state.get("paused"):
            return "resumed" if self._send({"cmd": "resume"}) else None
        if self._send({"cmd": "pause"}):
            return "paused: in-flight requests finish, no new ones start"
        return None

    def change_load(self, direction: int) -> str | None:
        if not self.state or self.state.get("stopping") or self.done:
            return None
        if self.config.closed_loop:
            n = max(1, int(self._asked or self.state.get("concurrency") or 1) + direction)
            self._asked = n
            return f"concurrency {n}" if self._send({"cmd": "concurrency", "value": n}) else None
        rate = float(self._asked or self.state.get("rate") or 1.0)
        rate = rate * RATE_STEP if direction > 0 else rate / RATE_STEP
        self._asked = rate
        return f"rate {rate:.3g} req/s" if self._send({"cmd": "rate", "value": rate}) else None

    def terminate(self, grace: float = 5.0) -> None:
        """The measuring process did not end after a stop: SIGTERM (it writes its summary), then SIGKILL."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop(self) -> None:
        if not self._send({"cmd": "interrupt"}) and self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()

    # ---- reading -----------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Take in what the measuring process wrote since the last frame."""
        if self._records is not None:
            for line in self._records.lines():
                try:
                    self.live.add(RequestRecord.from_json(json.loads(line)))
                except (ValueError, TypeError):
                    continue
        if isinstance(self.telemetry, LiveTelemetry):
            self.telemetry.poll()

    def records(self) -> list[RequestRecord]:
        if self.out_dir is None or not (self.out_dir / "records.jsonl").exists():
            return []
        return read_records(self.out_dir)

    def _elapsed(self) -> float:
        started = self.state.get("started")
        if not started:
            return 0.0
        end = self._ended_at if self._ended_at is not None else time.monotonic()
        return max(0.0, end - started)

    def status(self) -> Status:
        st = self.state
        if not st:
            message = None
            if self.error is not None:
                message = str(self.error)
            elif self.config.emulator:
                message = "starting the embedded emulator server ..."
            return Status(phase=self.phase, message=message)
        phase = self.phase
        if phase == "running":
            phase = "stopping" if st.get("stopping") else "paused" if st.get("paused") else "running"
        load = (f"concurrency {st.get('concurrency')}" if self.config.closed_loop
                else f"rate {st.get('rate') or 0:.3g} req/s")
        message = st.get("aborted")
        if self.error is not None:
            message = str(self.error)
        elif phase == "finished" and self.out_dir is not None:
            message = f"results written to {self.out_dir}" + (f" ({message})" if message else "")
        elapsed = self._elapsed()
        remaining = None
        if self.config.duration is not None and phase in ("running", "paused"):
            remaining = max(0.0, self.config.duration - elapsed)
        return Status(phase=phase, elapsed=elapsed, done=st.get("done", 0), planned=st.get("planned"),
                      inflight=st.get("inflight", 0), load=load, remaining_s=remaining, message=message,
                      objectives=self._verdicts(elapsed))

    def _verdicts(self, elapsed: float) -> list[dict[str, Any]]:
        if self.summary is not None:
            return list(self.summary.get("slo") or [])
        if not self._objectives:
            return []
        now = time.monotonic()
        if now - self._verdicts_at >= OBJECTIVES_EVERY_S:
            self._verdicts_at = now
            self._verdicts_cache = self._evaluate_live(elapsed)
        return self._verdicts_cache

    def _evaluate_live(self, elapsed: float) -> list[dict[str, Any]]:
        """Objectives on the live aggregates (advisory: the verdicts that count come with summary.json)."""
        from cvload.slo import evaluate

        summary = self.live.summary_like(max(0.0, elapsed))
        try:
            return list(evaluate(self._objectives, summary))
        except Exception as exc:  # noqa: BLE001 - live verdicts are advisory
            return [{"objective": getattr(o, "text", str(o)), "verdict": "?", "detail": str(exc)}
                    for o in self._objectives]

    def snapshot_summary(self) -> dict[str, Any]:
        """Results so far, from ``summarize`` over the records on disk (the summary's own definitions)."""
        records = self.records()
        start = min((r.sent for r in records if not r.warmup), default=0.0)
        wall = max((r.sent + (r.end_offset or 0.0) for r in records), default=start) - start
        summary = summarize(records, wall_s=max(0.0, wall))
        summary["snapshot"] = {"elapsed_s": self._elapsed(), "phase": self.status().phase}
        return summary


def _parse_objectives(config: RunConfig) -> list[Any]:
    if not config.slo:
        return []
    from cvload.slo import parse_objectives

    return parse_objectives(config.slo)  # a misspelled metric fails here, before anything starts


class ReplaySource(Source):
    """A finished (or cut short) results folder, shown as the dashboard showed it at the end."""

    def __init__(self, folder: str | Path) -> None:
        self.out_dir = Path(folder)
        if not self.out_dir.is_dir():
            raise UsageError(f"--replay {folder}: no such folder", hint="pass a results folder written by "
                             "`cvload run` or `cvload tui` (it holds records.jsonl)")
        self._records = read_records(self.out_dir)
        self.summary = _read_json(self.out_dir / "summary.json")
        config = _read_json(self.out_dir / "config.json") or {}
        self.live = LiveStats()
        self.live.extend(self._records)
        target = (self.summary or {}).get("target") or {}
        cfg = config.get("config") or {}
        self.target = target_label(target.get("protocol") or cfg.get("protocol", "?"),
                                   target.get("mode") or cfg.get("mode", "?"),
                                   target.get("model") or cfg.get("model", "?"),
                                   target.get("servers") or cfg.get("server") or [])
        self.scenario = cfg.get("name") or cfg.get("scenario")
        self._load = _load_label((self.summary or {}).get("load") or {}, cfg)
        self._elapsed = max((finished_at(r) for r in self._records), default=0.0)
        self.telemetry = _replay_telemetry(self.out_dir, self.summary)

    def records(self) -> list[RequestRecord]:
        return list(self._records)

    def status(self) -> Status:
        summary = self.summary or {}
        status = summary.get("status", "no summary.json: the run was cut short")
        return Status(phase="replay", elapsed=self._elapsed, done=len(self._records), planned=None,
                      inflight=0, load=self._load, message=f"replay of {self.out_dir} ({status})",
                      objectives=list(summary.get("slo") or []))

    def snapshot_summary(self) -> dict[str, Any]:
        if self.summary is not None:
            return self.summary
        wall = self._elapsed
        return summarize(self._records, wall_s=wall)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable ({exc})") from None
    return data if isinstance(data, dict) else None


def _load_label(load: dict[str, Any], cfg: dict[str, Any]) -> str:
    if load.get("kind") == "open" or cfg.get("rate"):
        return f"rate {load.get('rate') or cfg.get('rate'):.3g} req/s"
    return f"concurrency {load.get('num_tasks') or cfg.get('num_tasks') or 1}"


class ReplayTelemetry:
    """The telemetry of a finished run, read back from ``telemetry.jsonl`` (one sample a line) and the summary's
    ``telemetry`` section; answers what the dashboard asks a live ``cvload.telemetry.Telemetry``."""

    stages_scope = "over the run"

    def __init__(self, samples: list[dict[str, Any]], section: dict[str, Any]) -> None:
        self._series: dict[str, list[tuple[float, float]]] = {}
        for sample in samples:
            for name, value in sample_values(sample).items():
                self._series.setdefault(name, []).append((float(sample.get("t", 0.0)), value))
        self._stages = list(section.get("stages") or [])
        self.warnings = list(section.get("warnings") or [])

    def series(self) -> dict[str, list[tuple[float, float]]]:
        return {name: list(points) for name, points in self._series.items()}

    def stage_breakdown(self, window_s: float | None = None) -> list[dict[str, Any]]:
        return list(self._stages)


def _replay_telemetry(folder: Path, summary: dict[str, Any] | None) -> ReplayTelemetry | None:
    path = folder / "telemetry.jsonl"
    section = (summary or {}).get("telemetry") or {}
    if not path.exists() and not section:
        return None
    samples = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                sample = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if isinstance(sample, dict):
                samples.append(sample)
    return ReplayTelemetry(samples, section)


def write_snapshot(source: Source, svg: str) -> Path:
    """Results so far (``summary.json`` as ``summarize`` computes it) plus the screen as SVG."""
    folder = source.snapshot_dir()
    write_json(folder / "summary.json", source.snapshot_summary())
    (folder / "screen.svg").write_text(svg, encoding="utf-8")
    return folder
