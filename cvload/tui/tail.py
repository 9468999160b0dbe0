"""Following files the measuring process appends to: new complete lines of a file (records.jsonl), and the run's
telemetry as the dashboard sees it (samples from telemetry.jsonl as they are written)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvload.telemetry.sampler import sample_values


class FileTail:
    """New complete lines of a file another process appends to (a line cut mid-write waits for its end)."""

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
    stage breakdown and warnings from the measuring process's status messages."""

    stages_scope = "last 10 s"

    def __init__(self, path: Path) -> None:
        self._tail = FileTail(path)
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
