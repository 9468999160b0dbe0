"""A finished (or cut short) results folder in the dashboard, shown as the dashboard showed it at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvload.apis import target_label
from cvload.errors import UsageError
from cvload.measure.live_window import LiveStats, finished_at
from cvload.measure.metrics import Tally
from cvload.results.records import RequestRecord
from cvload.results.writer import read_json, read_records
from cvload.telemetry.sampler import sample_values
from cvload.tui.source import Source, Status


class ReplaySource(Source):
    def __init__(self, folder: str | Path) -> None:
        self.out_dir = Path(folder)
        if not self.out_dir.is_dir():
            raise UsageError(f"--replay {folder}: no such folder", hint="pass a results folder written by "
                             "`cvload run` or `cvload tui` (it holds records.jsonl)")
        self._records = read_records(self.out_dir)
        self.summary = read_json(self.out_dir / "summary.json")
        config = read_json(self.out_dir / "config.json") or {}
        self.live = LiveStats()
        self.live.extend(self._records)
        target = (self.summary or {}).get("target") or {}
        cfg = config.get("config") or {}
        self.target = target_label(cfg.get("api"), target.get("protocol") or cfg.get("protocol", "?"),
                                   target.get("mode") or cfg.get("mode", "?"),
                                   target.get("model") or cfg.get("model", "?"),
                                   target.get("servers") or cfg.get("server") or [], cfg.get("inference"))
        self.scenario = cfg.get("name") or cfg.get("scenario")
        # the Speech panel: the run listened, or `cvload check` scored it afterwards
        self.listening = bool(cfg.get("onset") or cfg.get("check_content") or (self.summary or {}).get("content"))
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
                      objectives=list(summary.get("slo") or []), outages=list(summary.get("outages") or []))

    def snapshot_summary(self) -> dict[str, Any]:
        if self.summary is not None:
            return self.summary
        tally = Tally.of(self._records)
        return tally.summary(wall_s=tally.wall_time())


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
