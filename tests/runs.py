"""Running `cvload run` in-process and reading back what it wrote: shared by the tests of runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvload.cli import main
from cvload.measure.metrics import summarize
from cvload.measure.slo import parse_objectives, request_check
from cvload.results.writer import read_records


def run_cli(*args: str) -> int:
    return main(["run", "--quiet", *args])


def records_of(folder: Path) -> list[dict]:
    """The lines of a results folder's records.jsonl, as written."""
    return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]


def load(out: Path) -> tuple[dict, list[dict]]:
    return json.loads((out / "summary.json").read_text()), records_of(out)


def assert_summary_matches_records(out: Path, summary: dict, slo: tuple[str, ...] = ()) -> None:
    """A run folds each record into its summary as it finishes and keeps none: the result must be what the
    summary of the records on disk (records.jsonl) is."""
    again = summarize(read_records(out), wall_s=summary["wall_s"], concurrency=summary["concurrency"],
                      meets=request_check(parse_objectives(list(slo))))
    for key in ("requests", "errors", "audio_flags", "throughput", "goodput", "rtf_histogram", "audio_s_total"):
        assert summary.get(key) == pytest.approx(again.get(key)), key
    for name, stats in again["metrics"].items():
        assert summary["metrics"][name] == pytest.approx(stats, nan_ok=True), name
