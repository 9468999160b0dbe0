"""Objectives judged live on the dashboard's aggregates: advisory verdicts once a second (the verdicts that
count come with summary.json, from ``cvload.measure.slo`` over the finished run)."""

from __future__ import annotations

import time
from typing import Any

from cvload.measure.live_window import LiveStats
from cvload.measure.slo import evaluate, parse_objectives
from cvload.settings.config import RunConfig

EVERY_S = 1.0  # once a second is plenty and keeps the cost flat


class LiveObjectives:
    def __init__(self, config: RunConfig) -> None:
        self.objectives = parse_objectives(config.slo) if config.slo else []  # a typo fails before the run
        self._verdicts: list[dict[str, Any]] = []
        self._at = 0.0

    def verdicts(self, live: LiveStats, wall_s: float) -> list[dict[str, Any]]:
        """The objectives on ``live``'s run values over ``wall_s`` (the run's wall time so far)."""
        if not self.objectives:
            return []
        now = time.monotonic()
        if now - self._at >= EVERY_S:
            self._at = now
            self._verdicts = self._evaluate(live, wall_s)
        return self._verdicts

    def _evaluate(self, live: LiveStats, wall_s: float) -> list[dict[str, Any]]:
        try:
            return list(evaluate(self.objectives, live.summary_like(wall_s)))
        except Exception as exc:  # noqa: BLE001 - live verdicts are advisory
            return [{"objective": o.text, "verdict": "?", "detail": str(exc)} for o in self.objectives]
