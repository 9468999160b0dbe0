"""Every command with every load driver: `run`, `tui` and `sweep` x one process, `--processes 2` and
`--ray-address` (tests/test_drivers.py holds the local rows, tests/test_ray.py the Ray row on its cluster). Each
check reads what the command wrote: request totals, achieved concurrency, the keys of sweep.json and of a level's
summary, never just the exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from runs import records_of

from cvload.cli import main
from cvload.errors import EXIT_OK
from cvload.settings.config import RunConfig
from cvload.tui.run_source import RunSource

COMMANDS = ("run", "tui", "sweep")
QUIET = ["--quiet", "--metrics-url", "none", "--gpu-source", "none"]
WORKERS, REQUESTS = 4, 16
RUN = ["--num-tasks", str(WORKERS), "--requests", str(REQUESTS), "--ramp", "0.2s"]
LEVELS = (2, 4)
SWEEP = ["--num-tasks", ",".join(map(str, LEVELS)), "--duration", "1.5s"]
SWEEP_KEYS = {"schema", "cvload_version", "kind", "plan", "objectives", "settings", "levels", "capacity", "knee",
              "stopped_because", "status"}
LEVEL_KEYS = {"value", "kind", "phase", "folder", "slo_passed", "slo", "started_s", "window_s", "warmup_s",
              "stable", "late", "summary"}


def summary_keys(summary: dict) -> set[str]:
    """Keys two levels deep (a fleet's ``client`` section lists its processes: only its own key counts)."""
    out = set()
    for key, value in summary.items():
        out.add(key)
        if isinstance(value, dict) and key != "client":
            out |= {f"{key}.{sub}" for sub in value}
    return out


def reference_run_keys(server: str, tmp: Path) -> set[str]:
    """The summary keys of a short one-process `cvload run`, what every sweep level's summary must have."""
    out = tmp / "reference"
    assert main(["run", *QUIET, "--server", server, "--num-tasks", "2", "--requests", "2", "--out", str(out)]) == 0
    return summary_keys(json.loads((out / "summary.json").read_text()))


def command(name: str, server: str, driver: list[str], out: Path,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`cvload run` or `cvload sweep` as its own process (a fleet's coordinator, or a Ray driver)."""
    shape = RUN if name == "run" else SWEEP
    return subprocess.run([sys.executable, "-m", "cvload", name, *QUIET, "--server", server, *shape, *driver,
                           "--out", str(out)], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=240)


def tui(server: str, out: Path, **driver: Any) -> None:
    """`cvload tui`'s live run: its measuring process (``RunSource``), as the dashboard starts it."""
    config = RunConfig(server=[server], num_tasks=WORKERS, requests=REQUESTS, ramp=0.2, out=str(out),
                       metrics_url="none", gpu_source="none", **driver).validate()
    source = RunSource(config)
    source.start()
    try:
        assert source.wait(240), "the measuring process did not finish"
    finally:
        if not source.done:
            source.terminate()
    assert source.exit_code() == EXIT_OK, "\n".join(source.stderr[-20:])


def check_run(out: Path) -> dict:
    """Every request counted once, on disk too; the asked concurrency reached and never passed."""
    summary = json.loads((out / "summary.json").read_text())
    records = records_of(out)
    assert summary["status"] == "completed"
    assert summary["requests"]["total"] == summary["requests"]["ok"] == len(records) == REQUESTS
    assert sorted(r["index"] for r in records) == list(range(REQUESTS))
    assert {r["worker"] for r in records} == set(range(WORKERS))
    concurrency = summary["concurrency"]
    assert concurrency["requested"] == WORKERS and concurrency["achieved_max"] <= WORKERS
    assert concurrency["achieved_mean"] == pytest.approx(WORKERS, abs=0.5)
    return summary


def check_sweep(out: Path, run_keys: set[str]) -> dict:
    """sweep.json with the same keys for every driver; each level at its concurrency, its totals those of its
    own records, its summary with every key a run's has."""
    result = json.loads((out / "sweep.json").read_text())
    assert set(result) == SWEEP_KEYS and result["status"] == "completed"
    assert [level["value"] for level in result["levels"]] == list(LEVELS)
    for level in result["levels"]:
        assert set(level) == LEVEL_KEYS
        concurrency = level["summary"]["concurrency"]
        assert concurrency["achieved_max"] <= level["value"]
        assert concurrency["achieved_mean"] == pytest.approx(level["value"], abs=0.35)
        folder = out / level["folder"]
        summary = json.loads((folder / "summary.json").read_text())
        measured = [r for r in records_of(folder) if not r["warmup"]]
        assert summary["requests"]["total"] == summary["requests"]["ok"] == len(measured) > 0
        assert summary["sweep_level"]["value"] == level["value"]
        missing = run_keys - summary_keys(summary)
        assert not missing, f"a level's summary lacks {sorted(missing)}"
    return result
