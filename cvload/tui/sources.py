"""What the dashboard shows: a live run (a ``Session`` on its own thread) or a finished results folder.

The live run's engine gets a thread and event loop of its own, so drawing the screen never delays the moment a
chunk is timestamped; the dashboard reads counters and a ``LiveStats`` window and sends commands across threads
(``call_soon_threadsafe``). Both sources answer the same questions, so one dashboard serves both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvload.config import RunConfig
from cvload.errors import EXIT_INTERRUPTED, UsageError
from cvload.live import LiveStats, finished_at
from cvload.metrics import summarize
from cvload.records import RequestRecord
from cvload.results import read_records, write_json

OBJECTIVES_EVERY_S = 1.0  # live objective verdicts: once a second is plenty and keeps the cost flat
SWITCH_INTERVAL_S = 0.0005  # GIL hand-over while drawing: the engine thread waits at most this for its turn
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


class RunSource(Source):
    """A live run: ``Session`` prepared and executed on a background thread, exactly as ``cvload run`` does."""

    controllable = True

    def __init__(self, config: RunConfig, *, window_s: float | None = None) -> None:
        from cvload.session import Session

        self.config = config
        self.live = LiveStats() if window_s is None else LiveStats(window_s=window_s)
        self.session = Session(config)
        self.error: BaseException | None = None
        self.summary: dict[str, Any] | None = None
        self.phase = "starting"
        self.target = target_label(config.protocol, config.mode, config.model,
                                   ["embedded emulator"] if config.emulator else config.server)
        self.scenario = config.name or config.scenario
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="cvload-engine", daemon=True)
        self._finished = threading.Event()
        self._quit = False
        self._ended_at: float | None = None
        self._objectives: list[dict[str, Any]] = []
        self._objectives_at = 0.0

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the run's thread (once; later calls do nothing)."""
        if not self._thread.is_alive() and not self.done and self._thread.ident is None:
            self._thread.start()

    def _main(self) -> None:
        # The screen is drawn on the main thread; a short GIL switch interval bounds how long a chunk arriving
        # on the engine thread can wait for the interpreter while a frame is being rendered.
        previous = sys.getswitchinterval()
        sys.setswitchinterval(min(previous, SWITCH_INTERVAL_S))
        try:
            asyncio.run(self._run())
        finally:
            sys.setswitchinterval(previous)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        session = self.session
        try:
            engine = await session.prepare()
            engine.listeners.append(self.live.add)
            self.out_dir = session.out_dir
            cfg = session.config
            self.target = target_label(cfg.protocol, cfg.mode, cfg.model, cfg.addresses())
            self.telemetry = session.telemetry
            if self._quit:
                engine.interrupt()
            self.phase = "running"
            try:
                await session.execute()
            finally:
                self._ended_at = time.monotonic()
                self.phase = "finishing"
                self.summary = await session.finish()
            self.phase = "finished"
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which reports it after the UI
            self.error = exc
            self.phase = "failed"
        finally:
            try:
                await session.close()
            finally:
                self._finished.set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def exit_code(self) -> int:
        """As ``cvload run``: raise what failed, else the objectives' verdict."""
        if self.error is not None:
            raise self.error
        engine = self.session.engine
        if engine is not None and engine.state.interrupted and not engine.records:
            return EXIT_INTERRUPTED
        return self.session.exit_code()

    # ---- commands (UI thread -> engine thread) -----------------------------------------------------------
    def _call(self, fn: Any, *args: Any) -> bool:
        loop = self._loop
        if loop is None or loop.is_closed() or self.session.engine is None or self.done:
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed meanwhile
            return False
        return True

    def toggle_pause(self) -> str | None:
        engine = self.session.engine
        if engine is None or engine.state.stopping:
            return None
        if engine.state.paused:
            return "resumed" if self._call(engine.resume) else None
        return "paused: in-flight requests finish, no new ones start" if self._call(engine.pause) else None

    def change_load(self, direction: int) -> str | None:
        engine = self.session.engine
        if engine is None or engine.state.stopping:
            return None
        if engine.config.closed_loop:
            n = max(1, engine.state.concurrency + direction)
            return f"concurrency {n}" if self._call(engine.set_concurrency, n) else None
        rate = engine.state.rate or 1.0
        rate = rate * RATE_STEP if direction > 0 else rate / RATE_STEP
        return f"rate {rate:.3g} req/s" if self._call(engine.set_rate, rate) else None

    def stop(self) -> None:
        self._quit = True
        engine = self.session.engine
        if engine is not None and not engine.state.stopping:
            self._call(engine.interrupt)

    # ---- reading -----------------------------------------------------------------------------------------
    def records(self) -> list[RequestRecord]:
        engine = self.session.engine
        return list(engine.records) if engine is not None else []

    def _elapsed(self) -> float:
        engine = self.session.engine
        if engine is None or not engine.state.started:
            return 0.0
        end = self._ended_at if self._ended_at is not None else time.monotonic()
        return max(0.0, end - engine.state.started)

    def status(self) -> Status:
        engine = self.session.engine
        if engine is None:
            message = None
            if self.error is not None:
                message = str(self.error)
            elif self.config.emulator:
                message = "starting the embedded emulator server ..."
            return Status(phase=self.phase, message=message)
        st = engine.state
        phase = self.phase
        if phase == "running":
            phase = "stopping" if st.stopping else "paused" if st.paused else "running"
        load = f"concurrency {st.concurrency}" if engine.config.closed_loop else f"rate {st.rate or 0:.3g} req/s"
        message = st.aborted
        if phase == "finished" and self.out_dir is not None:
            message = f"results written to {self.out_dir}" + (f" ({st.aborted})" if st.aborted else "")
        elapsed = self._elapsed()
        remaining = None
        if engine.config.duration is not None and phase in ("running", "paused"):
            remaining = max(0.0, engine.config.duration - elapsed)
        return Status(phase=phase, elapsed=elapsed, done=st.done, planned=st.planned,
                      inflight=engine.inflight.count, load=load, remaining_s=remaining, message=message,
                      objectives=self._verdicts())

    def _verdicts(self) -> list[dict[str, Any]]:
        if self.summary is not None:
            return list(self.summary.get("slo") or [])
        objectives = self.session.objectives
        if not objectives:
            return []
        now = time.monotonic()
        if now - self._objectives_at >= OBJECTIVES_EVERY_S:
            self._objectives_at = now
            self._objectives = self._evaluate_live(objectives)
        return self._objectives

    def _evaluate_live(self, objectives: list[Any]) -> list[dict[str, Any]]:
        from cvload.slo import evaluate

        engine = self.session.engine
        assert engine is not None
        start = engine.state.measure_start or engine.state.started
        end = self._ended_at if self._ended_at is not None else time.monotonic()
        summary = self.live.summary_like(max(0.0, end - start))
        summary["concurrency"] = engine.inflight.summary(float(engine.state.concurrency)
                                                         if engine.config.closed_loop else None)
        if self.telemetry is not None:
            with contextlib.suppress(Exception):  # a live view never fails on telemetry
                summary["telemetry"] = self.telemetry.summary()
        try:
            return list(evaluate(objectives, summary))
        except Exception as exc:  # noqa: BLE001 - live verdicts are advisory; the final ones come from finish()
            return [{"objective": str(getattr(o, "text", o)), "verdict": "?", "value": None,
                     "error": str(exc)} for o in objectives]

    def snapshot_summary(self) -> dict[str, Any]:
        """Results so far, from ``summarize`` over the finished records (the summary's own definitions)."""
        engine = self.session.engine
        records = self.records()
        start = (engine.state.measure_start or engine.state.started) if engine else 0.0
        wall = max((r.sent + (r.end_offset or 0.0) for r in records), default=start) - start
        summary = summarize(records, wall_s=max(0.0, wall))
        summary["snapshot"] = {"elapsed_s": self._elapsed(), "phase": self.status().phase}
        return summary


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
            flat: dict[str, float] = {}
            _flatten("", {k: v for k, v in sample.items() if k in ("gpu", "cpu", "models")}, flat)
            for name, value in flat.items():
                self._series.setdefault(name, []).append((float(sample.get("t", 0.0)), value))
        self._stages = list(section.get("stages") or [])
        self.warnings = list(section.get("warnings") or [])

    def series(self) -> dict[str, list[tuple[float, float]]]:
        return {name: list(points) for name, points in self._series.items()}

    def stage_breakdown(self, window_s: float | None = None) -> list[dict[str, Any]]:
        return list(self._stages)


def _flatten(prefix: str, node: dict[str, Any], out: dict[str, float]) -> None:
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            _flatten(path, value, out)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[path] = float(value)


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
