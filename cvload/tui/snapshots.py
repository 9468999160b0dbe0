"""The dashboard's ``s`` key: the results so far (summary.json as ``summarize`` computes it, over the run's wall
time as the summary counts it) and the screen as SVG, in ``<results>/snapshots/NNN-<elapsed>s``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvload.measure.metrics import Tally
from cvload.results.records import RequestRecord
from cvload.results.writer import write_json
from cvload.tui.source import Source


def summary_so_far(records: Sequence[RequestRecord], *, start: float | None, elapsed: float,
                   phase: str) -> dict[str, Any]:
    """``summarize`` over the records written so far; ``start``: the engine's start of measurement if known."""
    tally = Tally.of(records)
    summary = tally.summary(wall_s=tally.wall_time(start=start))
    summary["snapshot"] = {"elapsed_s": elapsed, "phase": phase}
    return summary


def snapshot_dir(source: Source) -> Path:
    assert source.out_dir is not None
    root = source.out_dir / "snapshots"
    n = len(list(root.glob("*"))) + 1 if root.exists() else 1
    path = root / f"{n:03d}-{source.status().elapsed:.0f}s"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_snapshot(source: Source, svg: str) -> Path:
    folder = snapshot_dir(source)
    write_json(folder / "summary.json", source.snapshot_summary())
    (folder / "screen.svg").write_text(svg, encoding="utf-8")
    return folder
