"""Running `cvload run` in-process and reading back what it wrote: shared by the tests of runs."""

from __future__ import annotations

import json
from pathlib import Path

from cvload.cli import main


def run_cli(*args: str) -> int:
    return main(["run", "--quiet", *args])


def load(out: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    return summary, records
