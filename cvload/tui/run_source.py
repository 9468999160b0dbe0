"""A live run for the dashboard, measured in its own process (``cvload.tui.measuring``: a ``Session`` exactly
as ``cvload run``), so drawing the screen shares no interpreter lock and no garbage collector with the clock
that timestamps chunks. This side tails the results folder the run writes anyway, reads the status messages
and sends the keys as commands."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from cvload.apis import target_label
from cvload.errors import CvloadError
from cvload.load.sweep import sweeping
from cvload.measure.live_window import LiveStats
from cvload.measure.metrics import end_time, wall_time
from cvload.results.records import RequestRecord
from cvload.results.writer import read_json, read_records
from cvload.settings.config import RunConfig
from cvload.tui import messages as msg
from cvload.tui.objectives import LiveObjectives
from cvload.tui.snapshots import summary_so_far
from cvload.tui.source import Source, Status
from cvload.tui.supervisor import MeasuringProcess
from cvload.tui.tail import FileTail, LiveTelemetry

RATE_STEP = 1.25  # open loop: + and - multiply / divide the rate (geometric steps work at any scale)


class RunSource(Source):
    """A live run: starts the measuring process, follows what it writes, and turns keys into its commands."""

    controllable = True

    def __init__(self, config: RunConfig, *, window_s: float | None = None, yield_cpu: bool = False) -> None:
        self.config = config
        self.live = LiveStats() if window_s is None else LiveStats(window_s=window_s)
        self.yield_cpu = yield_cpu
        self.error: CvloadError | None = None
        self.error_detail: str | None = None
        self.summary: dict[str, Any] | None = None
        self.phase = "starting"
        self.state: msg.EngineStatus | None = None
        self.target = target_label(config.api, config.protocol, config.mode, config.model,
                                   ["embedded emulator"] if config.emulator else config.server, config.inference)
        self.scenario = config.name or config.scenario
        self.process = MeasuringProcess(self._on_message, self._on_exit)
        self._exit_code: int | None = None
        self._started = False
        self._finished = threading.Event()
        self._records: FileTail | None = None
        self._last_end: float | None = None  # the latest finish among the records taken in
        self._asked: float | None = None  # the concurrency or rate last asked for (keys faster than status)
        self._ended_at: float | None = None
        self._objectives = LiveObjectives(config)  # a misspelled metric fails here, before anything starts
        self.sweeping = sweeping(config)  # a sweep: the sweep sets the load; ``sweep`` holds its progress
        self.listening = bool(config.onset or config.check_content)  # the Speech panel (docs/speech.md)
        self.sweep: dict[str, Any] | None = None
        self.sweep_result: dict[str, Any] | None = None  # sweep.json once the sweep is over

    @property
    def stderr(self) -> list[str]:
        """What the measuring process wrote to stderr (its last 200 lines)."""
        return list(self.process.stderr)

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the measuring process (once; later calls do nothing)."""
        if not self._started:
            self._started = True
            self.process.start(msg.Start(config=self.config.to_json()), yield_cpu=self.yield_cpu)

    def _on_message(self, message: msg.Message) -> None:
        if isinstance(message, msg.EngineStatus):
            self.state = message
            if isinstance(self.telemetry, LiveTelemetry):
                if message.stages is not None:
                    self.telemetry.stages = message.stages
                self.telemetry.warnings = message.warnings
            if self.phase == "starting":
                self.phase = "running"
        elif isinstance(message, msg.Prepared):
            self.out_dir = Path(message.out_dir)
            cfg = self.config
            self.target = target_label(cfg.api, cfg.protocol, cfg.mode, cfg.model, message.servers, cfg.inference)
            self._records = FileTail(self.out_dir / "records.jsonl")
            if message.telemetry:
                self.telemetry = LiveTelemetry(self.out_dir / "telemetry.jsonl")
            self.phase = "running"
        elif isinstance(message, msg.SweepProgress):
            before = (self.sweep or {}).get("current")
            self.sweep = message.progress
            if message.progress.get("current") not in (None, before):
                self.live.reset()  # the panels show the level measured now
        elif isinstance(message, msg.Finished):
            self._exit_code = message.exit_code
            self._ended_at = time.monotonic()
            self.phase = "finishing"
        elif isinstance(message, msg.Failed):
            self.error_detail = message.traceback
            self._fail(message.message, message.exit_code)

    def _on_exit(self, returncode: int) -> None:
        if self._exit_code is None and self.error is None:
            self._fail(f"the measuring process ended unexpectedly (exit code {returncode})", returncode or 1)
        self._ended_at = self._ended_at or time.monotonic()
        if self.error is None and self.out_dir is not None and (self.out_dir / "summary.json").exists():
            self.summary = read_json(self.out_dir / "summary.json")
            self.phase = "finished"
        if self.error is None and self.out_dir is not None and (self.out_dir / "sweep.json").exists():
            self.sweep_result = read_json(self.out_dir / "sweep.json")
            self.phase = "finished"
        self._finished.set()

    def _fail(self, message: str, code: int) -> None:
        error = CvloadError(message)
        error.exit_code = code
        self.error = error
        self.phase = "failed"

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        if not self._started:
            return True
        finished = self._finished.wait(timeout)
        if finished:
            self.process.join_readers()
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

    def terminate(self) -> None:
        """The measuring process did not end after a stop: end it (it writes its summary on SIGTERM)."""
        self.process.terminate()

    # ---- commands ----------------------------------------------------------------------------------------
    def _controllable_now(self) -> msg.EngineStatus | None:
        st = self.state
        return None if st is None or st.stopping or self.done else st

    def toggle_pause(self) -> str | None:
        st = self._controllable_now()
        if st is None:
            return None
        if st.paused:
            return "resumed" if self.process.send(msg.Command("resume")) else None
        if self.process.send(msg.Command("pause")):
            return "paused: in-flight requests finish, no new ones start"
        return None

    def change_load(self, direction: int) -> str | None:
        st = self._controllable_now()
        if st is None:
            return None
        if self.sweeping:
            return "the sweep sets the load: + and - do not apply"
        if self.config.closed_loop:
            n = max(1, int(self._asked or st.concurrency or 1) + direction)
            self._asked = n
            return f"concurrency {n}" if self.process.send(msg.Command("concurrency", n)) else None
        rate = float(self._asked or st.rate or 1.0)
        rate = rate * RATE_STEP if direction > 0 else rate / RATE_STEP
        self._asked = rate
        return f"rate {rate:.3g} req/s" if self.process.send(msg.Command("rate", rate)) else None

    def stop(self) -> None:
        if not self.process.send(msg.Command("interrupt")):
            self.process.close_input()

    # ---- reading -----------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Take in what the measuring process wrote since the last frame."""
        if self._records is not None:
            for line in self._records.lines():
                try:
                    record = RequestRecord.from_json(json.loads(line))
                except (ValueError, TypeError):
                    continue
                self.live.add(record)
                end = end_time(record)
                self._last_end = end if self._last_end is None else max(self._last_end, end)
        if isinstance(self.telemetry, LiveTelemetry):
            self.telemetry.poll()

    def records(self) -> list[RequestRecord]:
        if self.out_dir is None or not (self.out_dir / "records.jsonl").exists():
            return []
        return read_records(self.out_dir)

    def _elapsed(self) -> float:
        if self.state is None or not self.state.started:
            return 0.0
        end = self._ended_at if self._ended_at is not None else time.monotonic()
        return max(0.0, end - self.state.started)

    def status(self) -> Status:
        st = self.state
        if st is None:
            message = None
            if self.error is not None:
                message = str(self.error)
            elif self.config.emulator:
                message = "starting the embedded emulator server ..."
            return Status(phase=self.phase, message=message)
        phase = self.phase
        if phase == "running":
            phase = "stopping" if st.stopping else "paused" if st.paused else "running"
        load = f"concurrency {st.concurrency}" if st.rate is None else f"rate {st.rate or 0:.3g} req/s"
        if self.sweeping and self.sweep is not None:
            done, planned = len(self.sweep["levels"]), len(self.sweep["plan"])
            load = f"sweep level {len(self.sweep['levels']) + 1 if self.sweep['current'] is not None else done}" \
                   f" ({done} judged of {planned} planned), {load}"
        message = st.aborted
        lost = next((o for o in st.outages if o["end_s"] is None), None)
        if lost is not None and message is None:
            message = f"server {lost['server']} lost {self._elapsed() - lost['start_s']:.1f} s ago: reconnecting"
        if self.error is not None:
            message = str(self.error)
        elif phase == "finished" and self.out_dir is not None:
            message = f"results written to {self.out_dir}" + (f" ({message})" if message else "")
        elapsed = self._elapsed()
        remaining = None
        if self.config.duration is not None and phase in ("running", "paused") and not self.sweeping:
            remaining = max(0.0, self.config.duration - elapsed)
        return Status(phase=phase, elapsed=elapsed, done=st.done, planned=st.planned, inflight=st.inflight,
                      load=load, remaining_s=remaining, message=message, objectives=self._verdicts(st),
                      outages=st.outages)

    def _verdicts(self, st: msg.EngineStatus) -> list[dict[str, Any]]:
        if self.summary is not None:
            return list(self.summary.get("slo") or [])
        return self._objectives.verdicts(self.live, wall_time(start=st.measure_from, end=self._last_end))

    def snapshot_summary(self) -> dict[str, Any]:
        start = self.state.measure_from if self.state is not None else None
        return summary_so_far(self.records(), start=start, elapsed=self._elapsed(), phase=self.status().phase)
