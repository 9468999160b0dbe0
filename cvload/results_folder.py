"""Reading a finished results folder back: a run (``cvload run --out``) or a sweep (``cvload sweep``).

Commands that read results (compare, report) start here, so a folder that is not a results folder is one clear
error wherever it is passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvload.errors import UsageError
from cvload.records import RequestRecord
from cvload.results import SUMMARY_SCHEMA, read_json, read_records

RUN, SWEEP = "run", "sweep"
SWEEP_SCHEMA = "cvload.sweep/1"
_WHAT = "pass a folder written by `cvload run --out DIR` or `cvload sweep`"


@dataclass
class RunFolder:
    """One run: config.json (settings, versions, servers), summary.json and every record."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    records: list[RequestRecord] = field(repr=False)

    @property
    def settings(self) -> dict[str, Any]:
        """The run's resolved settings (config.json's ``config``; from the summary's target for older runs)."""
        settings = self.config.get("config")
        if isinstance(settings, dict):
            return settings
        target = self.summary.get("target") or {}
        return {k: target[k] for k in ("mode", "protocol", "model") if k in target}


@dataclass
class SweepFolder:
    """One sweep: ``sweep.json`` (schema cvload.sweep/1), its levels each a run folder of their own."""

    path: Path
    sweep: dict[str, Any]


def kind_of(path: str | Path) -> str:
    """'run' or 'sweep'; a UsageError naming the folder for anything else."""
    folder = Path(path)
    if not folder.exists():
        raise UsageError(f"{folder}: no such folder", hint=_WHAT)
    if not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a results folder", hint=_WHAT)
    if (folder / "sweep.json").is_file():
        return SWEEP
    if (folder / "summary.json").is_file():
        return RUN
    if (folder / "records.jsonl").is_file():
        raise UsageError(f"{folder} holds records but no summary.json (a run still going, or killed)",
                         hint="wait for the run to finish, or rerun it")
    raise UsageError(f"{folder} is not a cvload results folder (no summary.json or sweep.json)", hint=_WHAT)


def load_run(path: str | Path) -> RunFolder:
    folder = Path(path)
    if kind_of(folder) != RUN:
        raise UsageError(f"{folder} is a sweep, not a single run", hint="pass one of its level folders")
    summary = read_json(folder / "summary.json") or {}
    if summary.get("schema") != SUMMARY_SCHEMA:
        raise UsageError(f"{folder / 'summary.json'}: schema {summary.get('schema')!r}, expected {SUMMARY_SCHEMA!r}",
                         hint="written by another tool or another cvload version")
    config = read_json(folder / "config.json") or {}
    return RunFolder(folder, config, summary, read_records(folder))


def load_sweep(path: str | Path) -> SweepFolder:
    folder = Path(path)
    if kind_of(folder) != SWEEP:
        raise UsageError(f"{folder} is a single run, not a sweep", hint="pass the folder `cvload sweep` wrote")
    sweep = read_json(folder / "sweep.json") or {}
    if sweep.get("schema") != SWEEP_SCHEMA:
        raise UsageError(f"{folder / 'sweep.json'}: schema {sweep.get('schema')!r}, expected {SWEEP_SCHEMA!r}",
                         hint="written by another tool or another cvload version")
    return SweepFolder(folder, sweep)
