"""A live tune for the dashboard (``cvload tune --tui``): the tune runs in the measuring process exactly as
``cvload tune`` runs it; each candidate's sweep is followed as a sweep is (``RunSource``: its records, status and
levels), and the tune's own messages add the candidates so far for the tune panel."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cvload.measure.live_window import LiveStats
from cvload.results.records import RequestRecord
from cvload.results.writer import read_json, read_records
from cvload.settings.config import RunConfig
from cvload.tui import messages as msg
from cvload.tui.run_source import RunSource
from cvload.tui.source import Status
from cvload.tui.tail import FileTail, LiveTelemetry


class TuneSource(RunSource):
    """``base``: the space's scenario (how each candidate is loaded and judged); ``request``: the tune's arguments
    (``cvload.tune.setup.TuneRequest.to_json()``), its ``out`` already chosen."""

    tuning = True

    def __init__(self, base: RunConfig, request: Any, *, window_s: float | None = None,
                 yield_cpu: bool = False) -> None:
        super().__init__(base, window_s=window_s, yield_cpu=yield_cpu)
        self.request = request
        self.tune_dir = Path(request.out)
        self.sweeping = True  # every candidate is a sweep: the sweep sets the load, its panel shows the levels
        self.target = f"tune {Path(request.space).name} on the {'bootstrap' if request.bootstrap else 'emulator'}"
        self.tune: dict[str, Any] | None = None
        self.tune_result: dict[str, Any] | None = None  # tune.json once the tune is over
        self.candidate_dir: Path | None = None  # the folder of the candidate's sweep measured now
        self._stale: list[Any] = []
        self._tune_clock: tuple[float, float] | None = None  # (when the last tune message came, its elapsed_s)  # the previous candidate's tails, closed on the drawing thread

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.process.start(msg.Start(config=self.config.to_json(), tune=self.request.to_json()),
                               yield_cpu=self.yield_cpu)

    def _on_message(self, message: msg.Message) -> None:
        if isinstance(message, msg.TuneProgress):
            before, now = _which(self.tune), _which(message.progress)
            self._tune_clock = (time.monotonic(), float(message.progress.get("elapsed_s") or 0.0))
            self.tune = message.progress
            if now is not None and now != before:
                self.sweep = None  # a new candidate: its sweep has no levels yet
            return
        if isinstance(message, msg.Prepared):  # a candidate's sweep starts: follow its folder from now on
            self._stale += [t for t in (self._records, self.telemetry) if t is not None]
            self.telemetry = None
            self.live = LiveStats(window_s=self.live.window_s)  # its records count from its own start
            self._last_end = None
        super()._on_message(message)
        if isinstance(message, msg.Prepared):
            self.candidate_dir = Path(message.out_dir)
            self.out_dir = self.tune_dir  # snapshots and the results line name the tune's folder

    def tune_elapsed(self) -> float | None:
        """Seconds the tune has run: its last message's count, going on while it runs."""
        if self._tune_clock is None or self.tune is None:
            return None
        received, elapsed = self._tune_clock
        return elapsed + (time.monotonic() - received if self.tune["status"] == "running" else 0.0)

    def _on_exit(self, returncode: int) -> None:
        super()._on_exit(returncode)
        self.summary = self.sweep_result = None  # the last candidate's; the tune's answer is tune.json
        if self.error is None and (self.tune_dir / "tune.json").exists():
            self.tune_result = read_json(self.tune_dir / "tune.json")
            self.phase = "finished"

    def poll(self) -> None:
        while self._stale:
            stale = self._stale.pop()
            if isinstance(stale, FileTail | LiveTelemetry):
                stale.close()
        super().poll()

    def status(self) -> Status:
        status = super().status()
        tune = self.tune
        if tune is None:
            return status
        current = tune.get("current")
        done = sum(1 for c in tune["candidates"] if c["status"] != "pending")
        if current is not None:
            head = f"candidate {current['number']}" + (" (the best again)" if current["repeat"] else "")
        else:
            head = f"{done} candidate(s) judged"
        status.load = f"{head}; {status.load}" if status.load else head
        if self.state is None and status.phase == "starting" and current is not None and status.message is None:
            status.message = f"candidate {current['number']}: {current.get('change') or 'preparing'} ..."
        if status.phase == "finished" and self.tune_result is not None:
            best = self.tune_result.get("best")
            status.message = (f"tune over ({self.tune_result['stopped_because']}): "
                              + (f"best candidate {best['number']}, capacity {best['capacity']:g}" if best else
                                 "no candidate met the objectives") + f"; results in {self.tune_dir}")
        return status

    def records(self) -> list[RequestRecord]:
        """The current candidate's records so far."""
        if self.candidate_dir is None or not (self.candidate_dir / "records.jsonl").exists():
            return []
        return read_records(self.candidate_dir)

    def snapshot_summary(self) -> dict[str, Any]:
        summary = super().snapshot_summary()
        summary["tune"] = self.tune
        return summary


def _which(progress: dict[str, Any] | None) -> tuple[int, int] | None:
    """The candidate measured now (its number, and which re-measurement of the best it is), if any."""
    current = (progress or {}).get("current")
    return None if current is None else (current["number"], current["repeat"])
