"""What the dashboard asks of what it shows (a live run or a finished results folder): the ``Source`` interface
and the header's ``Status``. Both sources answer the same questions, so one dashboard serves both."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvload.measure.live_window import LiveStats
from cvload.results.records import RequestRecord


@dataclass
class Status:
    """The header's facts at one moment."""

    phase: str  # starting | running | paused | stopping | finishing | finished | failed | replay
    elapsed: float = 0.0
    done: int = 0
    planned: int | None = None
    inflight: int = 0
    load: str = ""
    remaining_s: float | None = None  # --duration runs: time left
    message: str | None = None
    objectives: list[dict[str, Any]] = field(default_factory=list)
    outages: list[dict[str, Any]] = field(default_factory=list)  # the server was lost: start_s, end_s (None: now)


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
        """Results so far, as summary.json (``cvload.tui.snapshots`` writes it with the screen)."""
        raise NotImplementedError
