"""Opening what cvload wrote: a run's results folder or a sweep's folder, for the views that read them back
(``cvload report``, ``cvload compare``).

A **run** folder holds ``summary.json`` (schema ``cvload.summary/1``) and ``records.jsonl``, with ``config.json``,
``server_stats.json`` and ``telemetry.jsonl`` where the run had them. A **sweep** folder holds ``sweep.json``
(schema ``cvload.sweep/1``: ``levels[].{value, kind, slo_passed, summary}``, ``capacity``, ``knee``,
``stopped_because``; each level names its run folder in ``folder``) and one run folder per level. ``open_results`` tells them apart and turns anything else (a
missing path, an empty folder, a folder of other files, a summary of another schema) into a UsageError that
names the path and says what a results folder holds.

Records come two ways: ``RunResults.records()`` (``RequestRecord`` objects, as the replay reads them) and
``RunResults.columns()`` (numpy columns of the per-request values records.jsonl already holds, for plots and
statistics over large runs: read from records.columns, the same numbers as binary rows, in one ``numpy.fromfile``,
or where a folder lacks it parsed from records.jsonl with orjson, 100,000 records in well under a second).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cvload.errors import UsageError
from cvload.measure.metrics import REQUEST_METRICS
from cvload.results import columns_file
from cvload.results.records import ERR_BARGED_IN, ERR_CANCELLED, ERR_INCOMPLETE, RequestRecord
from cvload.results.writer import SUMMARY_SCHEMA, read_json, read_jsonl, read_records

SWEEP_SCHEMA = "cvload.sweep/1"
RUN_FILES = "summary.json and records.jsonl"
_WHAT = (f"a cvload results folder holds {RUN_FILES} (written by `cvload run`), or sweep.json and one such "
         f"folder per level (written by `cvload sweep`)")


@dataclass
class RecordColumns:
    """One numpy array per per-request value of records.jsonl, in record order (NaN where a value is None).

    ``sent_s`` and ``end_s`` are seconds since the run started; ``run_start`` is that start on the monotonic clock
    the telemetry samples use. ``metrics`` holds every per-request metric of cvload.measure.metrics by its name.
    """

    sent_s: npt.NDArray[np.float64]
    end_s: npt.NDArray[np.float64]
    ok: npt.NDArray[np.bool_]
    warmup: npt.NDArray[np.bool_]
    error_kind: npt.NDArray[np.object_]  # None or an error kind of cvload.results.records
    metrics: dict[str, npt.NDArray[np.float64]]
    run_start: float | None

    def __len__(self) -> int:
        return int(self.sent_s.size)

    @property
    def measured(self) -> npt.NDArray[np.bool_]:
        """Requests that count (not warmup, not cancelled by the user, not abandoned by their listener), as the
        summary counts them."""
        cancelled: npt.NDArray[np.bool_] = self.error_kind == ERR_CANCELLED
        barged_in: npt.NDArray[np.bool_] = self.error_kind == ERR_BARGED_IN
        return ~self.warmup & ~cancelled & ~barged_in

    def values(self, name: str) -> npt.NDArray[np.float64]:
        """A metric's values over the measured requests the summary computes it from (cvload.measure.metrics.values): ok
        only where declared, plus incomplete requests' lower bounds for the metrics bounded by them."""
        metric = next(m for m in REQUEST_METRICS if m.name == name)
        counted = self.ok
        if metric.bounded:
            counted = counted | (self.error_kind == ERR_INCOMPLETE)
        mask = self.measured & (counted if metric.only_ok else True)
        if metric.heard:  # abandoned requests were heard up to here (--barge-in)
            barged_in: npt.NDArray[np.bool_] = self.error_kind == ERR_BARGED_IN
            mask = mask | (~self.warmup & barged_in)
        column: npt.NDArray[np.float64] = self.metrics[name][mask]
        return column[~np.isnan(column)]


_FLOATS = ("sent_s", "end_offset", *(m.name for m in REQUEST_METRICS))


def _float_table(rows: list[dict[str, Any]]) -> npt.NDArray[np.float64]:
    """rows x _FLOATS as floats (None -> NaN), in one pass: an item getter per row, one array conversion."""
    get = operator.itemgetter(*_FLOATS)
    try:
        table = [get(r) for r in rows]
    except KeyError:  # a record written before some metric existed
        table = [tuple(r.get(k) for k in _FLOATS) for r in rows]
    return np.array(table, dtype=float).reshape(len(rows), len(_FLOATS))


def read_columns(folder: Path, *, binary: bool = True) -> RecordColumns:
    """The records of a run folder as columns (see RecordColumns): from records.columns where it covers
    records.jsonl exactly (``binary``), else parsed from records.jsonl."""
    path = Path(folder) / "records.jsonl"
    if not path.exists():
        raise UsageError(f"{folder} is not a cvload results folder (no records.jsonl)", hint=_WHAT)
    fixed = columns_file.read(folder) if binary else None
    if fixed is not None:
        sent: npt.NDArray[np.float64] = fixed["sent_s"].copy()
        return RecordColumns(
            sent_s=sent,
            end_s=sent + np.nan_to_num(fixed["end_offset"], nan=0.0),
            ok=fixed["ok"] > 0,
            warmup=fixed["warmup"] > 0,
            error_kind=columns_file.ERROR_NAMES[fixed["error"].astype(np.intp)],
            metrics={m.name: fixed[m.name].copy() for m in REQUEST_METRICS},
            run_start=float(fixed["run_start"][0]) if fixed.size else None,
        )
    rows = read_jsonl(path)
    table = _float_table(rows)
    column = {name: table[:, n] for n, name in enumerate(_FLOATS)}
    sent = np.nan_to_num(column["sent_s"], nan=0.0)
    return RecordColumns(
        sent_s=sent,
        end_s=sent + np.nan_to_num(column["end_offset"], nan=0.0),
        ok=np.array([bool(r.get("ok")) for r in rows], dtype=bool),
        warmup=np.array([bool(r.get("warmup")) for r in rows], dtype=bool),
        error_kind=np.array([r.get("error_kind") for r in rows], dtype=object),
        metrics={m.name: column[m.name] for m in REQUEST_METRICS},
        run_start=rows[0].get("run_start") if rows else None,
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.exists() else []


@dataclass(eq=False)  # identity: a view may key what it computed from a folder by the folder object
class RunResults:
    """One run's results folder (see the module docstring)."""

    path: Path
    summary: dict[str, Any]

    @property
    def label(self) -> str:
        return self.path.name or str(self.path)

    @property
    def mode(self) -> str | None:
        return (self.summary.get("target") or {}).get("mode")

    @cached_property
    def config(self) -> dict[str, Any] | None:
        """config.json: the run's configuration, versions, servers and inputs (None when absent)."""
        return read_json(self.path / "config.json")

    @property
    def settings(self) -> dict[str, Any]:
        """The run's resolved settings (config.json's ``config``; mode/protocol/model of the summary's target where
        config.json is absent): what says whether two runs measured the same thing."""
        settings = (self.config or {}).get("config")
        if isinstance(settings, dict):
            return settings
        target = self.summary.get("target") or {}
        return {k: target[k] for k in ("mode", "protocol", "model") if k in target}

    @cached_property
    def server_stats(self) -> dict[str, Any] | None:
        """server_stats.json: Triton's per-model statistics over the run (None when the server gave none)."""
        return read_json(self.path / "server_stats.json")

    @cached_property
    def telemetry(self) -> list[dict[str, Any]]:
        """telemetry.jsonl samples (empty when the run sampled none)."""
        return _read_jsonl(self.path / "telemetry.jsonl")

    def records(self) -> list[RequestRecord]:
        return read_records(self.path)

    @cached_property
    def columns(self) -> RecordColumns:
        return read_columns(self.path)


@dataclass
class SweepLevel:
    """One level of a sweep: as sweep.json states it, and its run folder where the sweep folder holds it."""

    value: float
    kind: str  # "concurrency" (closed loop) or "rate" (open loop)
    slo_passed: bool | None
    summary: dict[str, Any]  # the level's headline metrics as sweep.json holds them (summary.json's paths)
    run: RunResults | None = None
    phase: str | None = None  # "plan" or "bisect"


@dataclass(eq=False)
class SweepResults:
    """A sweep's folder (see the module docstring)."""

    path: Path
    sweep: dict[str, Any]
    levels: list[SweepLevel] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.path.name or str(self.path)

    @property
    def mode(self) -> str | None:
        for level in self.levels:
            if level.run is not None and level.run.mode:
                return level.run.mode
        return (self.sweep.get("target") or {}).get("mode") or (self.sweep.get("config") or {}).get("mode")

    @cached_property
    def config(self) -> dict[str, Any] | None:
        """The sweep's config.json (the resolved settings, as for a run; None when absent)."""
        return read_json(self.path / "config.json")

    @property
    def settings(self) -> dict[str, Any]:
        """The sweep's resolved settings (its config.json's ``config``), else its first level run's."""
        settings = (self.config or {}).get("config")
        if isinstance(settings, dict):
            return settings
        return next((lv.run.settings for lv in self.levels if lv.run is not None), {})

    @property
    def capacity(self) -> dict[str, Any]:
        return self.sweep.get("capacity") or {}

    @property
    def knee(self) -> Any:
        return self.sweep.get("knee")


Results = RunResults | SweepResults


def _run_at(folder: Path) -> RunResults:
    summary = read_json(folder / "summary.json")
    has_records = (folder / "records.jsonl").exists()
    if summary is None:
        if has_records:
            raise UsageError(f"{folder}: the run has no summary.json (it is still running or was killed before "
                             "writing it)", hint="report a finished run")
        raise UsageError(f"{folder} is not a cvload results folder (no summary.json)", hint=_WHAT)
    if summary.get("schema") != SUMMARY_SCHEMA:
        raise UsageError(f"{folder / 'summary.json'}: schema {summary.get('schema')!r}, expected {SUMMARY_SCHEMA!r}",
                         hint=_WHAT)
    if not has_records:
        raise UsageError(f"{folder} is not a cvload results folder (no records.jsonl)", hint=_WHAT)
    return RunResults(folder, summary)


def _level_value(run: RunResults, kind: str) -> float | None:
    load = run.summary.get("load") or {}
    key = "rate" if kind == "rate" else "num_tasks"
    value = load.get(key)
    return float(value) if isinstance(value, int | float) else None


def _sweep_at(folder: Path, sweep: dict[str, Any]) -> SweepResults:
    where = folder / "sweep.json"
    if sweep.get("schema") != SWEEP_SCHEMA:
        raise UsageError(f"{where}: schema {sweep.get('schema')!r}, expected {SWEEP_SCHEMA!r}", hint=_WHAT)
    levels_json = sweep.get("levels")
    if not isinstance(levels_json, list):
        raise UsageError(f"{where}: no list of levels", hint=_WHAT)
    runs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (sub / "summary.json").exists():
            runs.append(_run_at(sub))
    result = SweepResults(folder, sweep)
    for n, level in enumerate(levels_json):
        if not isinstance(level, dict) or not isinstance(level.get("value"), int | float):
            raise UsageError(f"{where}: level {n} has no numeric value", hint=_WHAT)
        kind = str(level.get("kind") or sweep.get("kind") or "concurrency")
        run = None
        named = level.get("dir") or level.get("folder") or level.get("path")
        if isinstance(named, str) and (folder / named / "summary.json").exists():
            run = _run_at(folder / named)
        else:
            run = next((r for r in runs if _level_value(r, kind) == float(level["value"])), None)
        result.levels.append(SweepLevel(value=float(level["value"]), kind=kind, slo_passed=level.get("slo_passed"),
                                        summary=level.get("summary") or {}, run=run, phase=level.get("phase")))
    return result


def open_results(path: str | Path) -> Results:
    """A run or a sweep folder; a UsageError naming the path for anything else."""
    folder = Path(path)
    if not folder.exists():
        raise UsageError(f"{folder}: no such results folder", hint=_WHAT)
    if not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a results folder", hint=_WHAT)
    if not any(folder.iterdir()):
        raise UsageError(f"{folder} is an empty folder, not a results folder", hint=_WHAT)
    sweep = read_json(folder / "sweep.json")
    if sweep is not None:
        return _sweep_at(folder, sweep)
    return _run_at(folder)
