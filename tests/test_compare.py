"""`cvload compare` on results folders made by real `cvload run`s against the embedded emulator: noise is not
flagged, a real +20 ms first-chunk change is, bad input is a usage error. Plus the verdict rule on its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cvload.cli import main
from cvload.emulator import EmulatedModel, build_repository, get_profile
from cvload.errors import UsageError
from cvload.results.compare import (
    BY_METRIC,
    IMPROVED,
    OK,
    REGRESSION,
    UNCERTAIN,
    Threshold,
    bootstrap_delta,
    judge,
    parse_thresholds,
    resample_mean,
    resample_percentile,
)
from cvload.triton.launcher import TritonServer

ROOT = Path(__file__).resolve().parents[1]
# Every comparison here judges real runs' latencies against a 20 ms difference: measured alone (see docs/testing.md).
pytestmark = pytest.mark.timing
PAIRS = 2  # the fast version of benchmarks/compare_false_alarms.py (10 pairs there)
STREAMS, REQUESTS = 4, 32


@pytest.fixture(scope="module")
def shifted_server(tmp_path_factory):
    """The session emulator's ``fixed`` profile with the first chunk 20 ms later (220 ms instead of 200 ms)."""
    root = tmp_path_factory.mktemp("shifted")
    profile = get_profile("fixed", {"fixed_first_s": 0.22})
    repo = build_repository(root, [EmulatedModel(profile=profile), EmulatedModel(name="cosyvoice2_offline",
                                                                                 profile=profile, mode="offline")])
    with TritonServer(repo, workdir=root / "server", die_with_parent=True,
                      extra_args=["--exit-timeout-secs=0"]) as server:
        yield server


def _run(server: str, out: Path, *extra: str) -> Path:
    code = main(["run", "--quiet", "--server", server, "--num-tasks", str(STREAMS), "--requests", str(REQUESTS),
                 "--metrics-url", "none", "--gpu-source", "none", "--out", str(out), *extra])
    assert code == 0
    return out


def _together(commands: dict[Path, list[str]]) -> None:
    """Run `cvload COMMAND...` for each folder at once, each in its own process: the emulator's timings are
    sleeps, so runs side by side see the same server (what is compared is measured under the same conditions)
    and the fixture takes the time of one run, not of all of them."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = {out: subprocess.Popen([sys.executable, "-m", "cvload", *args, "--quiet", "--metrics-url", "none",
                                      "--gpu-source", "none", "--out", str(out)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for out, args in commands.items()}
    for out, proc in started.items():
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, (out.name, output)


@pytest.fixture(scope="module")
def runs(emulator, shifted_server, tmp_path_factory):
    """PAIRS bases, a same-configuration run for each, a shifted run for each (a pair's three side by side)."""
    root = tmp_path_factory.mktemp("runs")
    folders: dict[str, Path] = {}
    for i in range(PAIRS):
        pair = {root / f"{name}{i}": ["run", "--server", server, "--num-tasks", str(STREAMS), "--requests",
                                      str(REQUESTS)]
                for name, server in (("base", emulator.grpc), ("same", emulator.grpc),
                                     ("shift", shifted_server.grpc_url))}
        _together(pair)
        folders.update({out.name: out for out in pair})
    return folders


def compare_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["compare", "--json", *map(str, args)])
    out = capsys.readouterr().out
    return code, json.loads(out) if code in (0, 3) else {}


def rows_of(result: dict, index: int = 0) -> dict[str, dict]:
    return {r["metric"]: r for r in result["comparisons"][index]["rows"]}


# The longest test first: pytest-xdist hands a worker its next file once two of its tests are left.
def test_real_sweeps_compare_level_by_level(emulator, shifted_server, tmp_path, capsys):
    """Two `cvload sweep`s (the same levels, the second against the server 20 ms slower to its first chunk):
    every level found in its folder, compared as two runs, the goodput the levels' summaries carry compared too."""
    sweeps = [tmp_path / "base", tmp_path / "slower"]
    _together({out: ["sweep", "--server", server, "--num-tasks", "1,2", "--requests", "12", "--slo",
                     "first_chunk.p95<5s"] for out, server in zip(sweeps, (emulator.grpc, shifted_server.grpc_url))})
    code, result = compare_json(capsys, *sweeps)
    rows = result["comparisons"][0]["rows"]
    assert rows[0]["metric"] == "capacity"
    assert [r["level"] for r in rows if r["metric"] == "first_chunk.p50"] == ["concurrency 1", "concurrency 2"]
    assert rows[0]["base"] == rows[0]["new"] == 2  # a lenient objective: every level met it
    goodput = [r for r in rows if r["metric"] == "goodput.requests_per_s"]
    assert len(goodput) == 2 and all(r["base"] > 0 and r["new"] > 0 for r in goodput)
    first = [r for r in rows if r["metric"] == "first_chunk.p50"]
    assert all(10 < r["delta"] < 35 and r["ci"][0] > 0 for r in first)
    assert code == 3 and any(r["verdict"] == REGRESSION for r in first)


@pytest.mark.parametrize("pair", range(PAIRS))
def test_same_configuration_is_not_flagged(runs, capsys, pair):
    code, result = compare_json(capsys, runs[f"base{pair}"], runs[f"same{pair}"])
    rows = rows_of(result)
    assert code == 0, [r for r in rows.values() if r["verdict"] == REGRESSION]
    assert result["regression"] is False
    assert abs(rows["first_chunk.p50"]["delta"]) < 10  # the same 200 ms server, measured twice


@pytest.mark.parametrize("pair", range(PAIRS))
def test_first_chunk_plus_20ms_is_flagged(runs, capsys, pair):
    code, result = compare_json(capsys, runs[f"base{pair}"], runs[f"shift{pair}"])
    assert code == 3 and result["regression"] is True
    rows = rows_of(result)
    first = rows["first_chunk.p50"]
    assert first["verdict"] == REGRESSION
    assert 10 < first["delta"] < 35 and first["ci"][0] > 0  # the interval of the change excludes zero
    assert rows["second_chunk.p50"]["verdict"] != REGRESSION  # only the first chunk moved
    # a p95 of 32 requests is one of the two largest: never more than uncertain, and the row says why
    assert rows["first_chunk.p95"]["verdict"] != REGRESSION
    assert "a p95 is judged from 100 per run" in rows["first_chunk.p95"]["note"]


def test_table_names_the_regression_and_more_folders_compare_against_the_first(runs, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # a line per verdict, however long the folders' paths are
    code = main(["compare", str(runs["base0"]), str(runs["same0"]), str(runs["shift0"])])
    out = capsys.readouterr().out
    assert code == 3
    assert f"no regression: {runs['same0']}" in out
    assert f"REGRESSION {runs['shift0']}: first_chunk.p50 +" in out
    # each table's title, wrapped to the table's width (longer paths, as under xdist, wrap it)
    assert " ".join(out.split()).count(f"vs {runs['base0']} (base)") == 2


def test_verdicts_are_reproducible_with_a_seed(runs, capsys):
    args = (runs["base0"], runs["shift0"], "--seed", "7")
    assert compare_json(capsys, *args) == compare_json(capsys, *args)


def test_thresholds_per_metric_and_default(runs, capsys):
    pair = (runs["base0"], runs["shift0"])
    # +20 ms is about +10%: a 15% default lets it pass ...
    code, result = compare_json(capsys, *pair, "--threshold", "15%")
    assert code == 0 and rows_of(result)["first_chunk.p50"]["verdict"] == OK
    # ... unless one metric is held tighter, in ms or s, by alias or summary name
    for spec in ("first_chunk.p50=10ms", "first_chunk_latency_ms.p50=0.01s"):
        code, result = compare_json(capsys, *pair, "--threshold", "15%", "--threshold", spec)
        rows = rows_of(result)
        assert code == 3 and rows["first_chunk.p50"]["verdict"] == REGRESSION
        assert rows["first_chunk.p50"]["threshold"] in ("10ms", "0.01s") and rows["total.p50"]["verdict"] == OK


@pytest.mark.parametrize(("spec", "expected"), [
    ("frist_chunk.p95=10ms", "did you mean first_chunk.p95"),
    ("first_chunk.p95=10kg", "unit 'kg' does not apply"),
    ("first_chunk.p90=10ms", "not one of the metrics compare judges"),
    ("error_rate=1ms", "unit 'ms' does not apply"),
    ("fast", "a default threshold is a percentage"),
])
def test_bad_threshold_is_a_usage_error(runs, capsys, spec, expected):
    assert main(["compare", str(runs["base0"]), str(runs["same0"]), "--threshold", spec]) == 2
    assert expected in capsys.readouterr().err


def test_not_a_results_folder(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    running = tmp_path / "running"  # records but no summary yet
    running.mkdir()
    shutil.copy(runs["base0"] / "records.jsonl", running)
    foreign = tmp_path / "foreign"
    shutil.copytree(runs["base0"], foreign)
    summary = json.loads((foreign / "summary.json").read_text())
    (foreign / "summary.json").write_text(json.dumps({**summary, "schema": "other.tool/2"}))
    for bad, expected in ((empty, "is an empty folder, not a results folder"), (a_file, "is a file"),
                          (tmp_path / "missing", "no such results folder"),
                          (other, "is not a cvload results folder (no summary.json)"),
                          (running, "the run has no summary.json"), (foreign, "schema 'other.tool/2'")):
        assert main(["compare", str(runs["base0"]), str(bad)]) == 2
        err = capsys.readouterr().err
        assert expected in err and str(bad) in err and "Traceback" not in err
    assert main(["compare", str(runs["base0"])]) == 2
    assert "needs two results folders" in capsys.readouterr().err


def test_mixing_modes_or_apis_is_a_usage_error(runs, emulator, tmp_path, capsys):
    offline = _run(emulator.grpc, tmp_path / "offline", "--mode", "offline", "--model", "cosyvoice2_offline")
    assert main(["compare", str(runs["base0"]), str(offline)]) == 2
    assert "--mode offline" in capsys.readouterr().err
    other_api = tmp_path / "openai"
    shutil.copytree(runs["same0"], other_api)
    config = json.loads((other_api / "config.json").read_text())
    config["config"]["api"] = "openai"
    (other_api / "config.json").write_text(json.dumps(config))
    assert main(["compare", str(runs["base0"]), str(other_api)]) == 2
    assert "--api openai" in capsys.readouterr().err


def _sweep(folder: Path, capacity: float | None, levels: list[tuple[float, Path]], kind: str = "concurrency") -> Path:
    """A sweep folder as `cvload sweep` writes it (docs/sweep.md): sweep.json (schema cvload.sweep/1) naming each
    level's folder ``level-NNN-c<value>`` (numbered in measuring order), the sweep's config.json; its levels are
    copies of real runs."""
    folder.mkdir()
    entries = []
    for number, (value, run) in enumerate(levels, 1):
        name = f"level-{number:03d}-{'c' if kind == 'concurrency' else 'r'}{value:g}"
        shutil.copytree(run, folder / name)
        summary = json.loads((run / "summary.json").read_text())
        entries.append({"value": value, "kind": kind, "phase": "plan", "folder": name,
                        "slo_passed": capacity is not None and value <= capacity,
                        "summary": {k: summary[k] for k in ("requests", "error_rate", "throughput", "metrics")}})
    shutil.copy(levels[0][1] / "config.json", folder / "config.json")
    (folder / "sweep.json").write_text(json.dumps({
        "schema": "cvload.sweep/1", "kind": kind, "plan": [v for v, _ in levels],
        "objectives": ["first_chunk.p95<700ms"], "levels": entries,
        "capacity": {"kind": kind, "value": capacity,
                     "bracket": None if capacity is None else [capacity, capacity * 2], "by": "objectives"},
        "knee": None, "stopped_because": "level failed first_chunk.p95<700ms", "status": "completed"}))
    return folder


def test_sweeps_compare_capacity_and_levels_matched_by_load(runs, tmp_path, capsys):
    base = _sweep(tmp_path / "base", 8, [(4, runs["base0"])])
    # measured in another order (a bisect level first): level 4 is the new sweep's second folder
    same = _sweep(tmp_path / "same", 8, [(6, runs["base1"]), (4, runs["same0"])])
    lower = _sweep(tmp_path / "lower", 4, [(4, runs["shift0"])])
    code, result = compare_json(capsys, base, same, lower)
    assert code == 3
    same_rows, lower_rows = result["comparisons"][0]["rows"], result["comparisons"][1]["rows"]
    assert same_rows[0]["metric"] == "capacity" and same_rows[0]["verdict"] == OK
    assert lower_rows[0]["metric"] == "capacity" and lower_rows[0]["verdict"] == REGRESSION
    assert {r["level"] for r in same_rows[1:]} == {"concurrency 4"}  # 6 was measured by one sweep only
    level = [r for r in lower_rows if r["level"] == "concurrency 4" and r["metric"] == "first_chunk.p50"]
    assert level and level[0]["verdict"] == REGRESSION
    assert not any(r["verdict"] == REGRESSION for r in same_rows)
    # a run against a sweep
    assert main(["compare", str(runs["base0"]), str(base)]) == 2
    assert "cannot compare a run" in capsys.readouterr().err


def test_sweep_with_no_passing_level_or_another_kind(runs, tmp_path, capsys):
    base = _sweep(tmp_path / "base", 4, [(4, runs["base0"])])
    none_passed = _sweep(tmp_path / "none", None, [(4, runs["shift0"])])
    code, result = compare_json(capsys, base, none_passed)
    capacity = result["comparisons"][0]["rows"][0]
    assert code == 3 and capacity["new"] is None and capacity["verdict"] == REGRESSION
    assert "no level of the new sweep met the objectives" in capacity["note"]
    by_rate = _sweep(tmp_path / "rate", 2.5, [(2.5, runs["same0"])], kind="rate")
    assert main(["compare", str(base), str(by_rate)]) == 2
    assert "sweeps rate" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the rule on its own
def test_verdict_needs_both_threshold_and_interval():
    first, throughput = BY_METRIC["first_chunk.p95"], BY_METRIC["throughput.requests_per_s"]
    five = Threshold("5%", relative=0.05)
    assert judge(first, 200.0, 220.0, (15.0, 25.0), five).verdict == REGRESSION
    assert judge(first, 200.0, 220.0, (-1.0, 40.0), five).verdict == UNCERTAIN  # big but noisy
    assert judge(first, 200.0, 205.0, (4.0, 6.0), five).verdict == OK  # certain but small
    assert judge(first, 200.0, 180.0, (-25.0, -15.0), five).verdict == IMPROVED
    assert judge(throughput, 10.0, 9.0, (-1.5, -0.5), five).verdict == REGRESSION  # down is worse
    assert judge(throughput, 10.0, 11.0, (0.5, 1.5), five).verdict == IMPROVED
    assert judge(first, 200.0, 215.0, (10.0, 20.0), Threshold("20ms", absolute=20.0)).verdict == OK
    capacity = BY_METRIC["capacity"]  # no interval by nature: the threshold decides
    assert judge(capacity, 8.0, 6.0, None, five).verdict == REGRESSION
    assert judge(first, 200.0, 220.0, None, five).verdict == UNCERTAIN  # no interval where one was due


def test_too_few_values_or_timing_error_make_a_change_at_most_uncertain():
    p99, p50 = BY_METRIC["first_chunk.p99"], BY_METRIC["first_chunk.p50"]
    assert p99.too_few(499) and not p99.too_few(500) and not p50.too_few(10)
    five = Threshold("5%", relative=0.05)
    row = judge(p99, 200.0, 230.0, (20.0, 40.0), five, too_few="40 values")
    assert row.verdict == UNCERTAIN and row.note == "40 values"
    row = judge(p50, 200.0, 220.0, (15.0, 25.0), five, timing_error=25.0)
    assert row.verdict == UNCERTAIN and "timing error" in row.note
    assert judge(p50, 200.0, 220.0, (15.0, 25.0), five, timing_error=2.0).verdict == REGRESSION


def test_threshold_units():
    default, per = parse_thresholds(["10%", "first_chunk.p95=0.02s", "error_rate=0.5pp", "capacity=1"])
    assert default.relative == pytest.approx(0.10)
    assert per["first_chunk.p95"].absolute == pytest.approx(20.0)  # summary holds ms
    assert per["error_rate"].absolute == pytest.approx(0.005)  # a share
    assert per["capacity"].absolute == 1.0
    with pytest.raises(UsageError, match="takes a bare number"):
        parse_thresholds(["capacity=1ms"])


def test_exact_resampling_matches_resampling_every_value():
    """The O(1) draws of a percentile (order statistics of uniforms) and of a mean (multinomial counts) have the
    distribution of the statistic over full resamples."""
    rng = np.random.default_rng(3)
    values = rng.lognormal(5, 0.3, 50)
    full = values[rng.integers(0, 50, size=(20000, 50))]
    for q in (50, 95, 99):
        fast = resample_percentile(q)(values, 20000, np.random.default_rng(4))
        slow = np.percentile(full, q, axis=-1)
        assert np.quantile(fast, [0.025, 0.5, 0.975]) == pytest.approx(np.quantile(slow, [0.025, 0.5, 0.975]),
                                                                        rel=0.01)
    failed = (rng.random(50) < 0.1).astype(float)
    fast = resample_mean(failed, 20000, np.random.default_rng(5))
    slow = failed[rng.integers(0, 50, size=(20000, 50))].mean(axis=-1)
    assert fast.mean() == pytest.approx(slow.mean(), rel=0.02) and fast.std() == pytest.approx(slow.std(), rel=0.05)


def test_interval_covers_zero_for_samples_of_one_distribution():
    """Same distribution on both sides: the 95% interval of the p95 change contains zero in most trials."""
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(100):
        a, b = rng.lognormal(5.3, 0.1, 60), rng.lognormal(5.3, 0.1, 60)
        lo, hi = bootstrap_delta(a, b, resample_percentile(95), resamples=400, confidence=0.95, rng=rng)
        covered += lo <= 0 <= hi
    assert covered >= 88


def test_errors_from_zero_are_flagged(runs, emulator, tmp_path, capsys):
    """A server failing a fifth of its requests, against one that never does: the rise from zero has no
    percentage, and the interval (not the threshold) decides."""
    faulty = _run(emulator.grpc, tmp_path / "faulty", "--model", "cosyvoice2_faulty")
    capsys.readouterr()  # the run's own summary table
    code, result = compare_json(capsys, runs["base0"], faulty)
    rows = rows_of(result)
    assert code == 3
    errors = rows["error_rate"]
    assert errors["base"] == 0 and errors["new"] > 0.05 and errors["percent"] is None
    assert errors["verdict"] == REGRESSION and errors["ci"][0] > 0
    assert any("model differs" in note for note in result["comparisons"][0]["notes"])


def test_goodput_row_when_the_summary_has_it(runs, tmp_path, capsys):
    folders = []
    for name, share in (("base0", 1.0), ("shift0", 0.5)):  # half of the new run's requests missed an objective
        folder = tmp_path / name
        shutil.copytree(runs[name], folder)
        summary = json.loads((folder / "summary.json").read_text())
        summary["goodput"] = {"requests_per_s": summary["throughput"]["requests_per_s"] * share, "share": share}
        (folder / "summary.json").write_text(json.dumps(summary))
        folders.append(folder)
    code, result = compare_json(capsys, *folders)
    goodput = rows_of(result)["goodput.requests_per_s"]
    assert goodput["worse"] == "down" and goodput["percent"] < -0.4
    assert goodput["verdict"] == REGRESSION and goodput["ci"][1] < 0
    # without goodput in either summary there is no such row
    _, result = compare_json(capsys, runs["base0"], runs["shift0"])
    assert "goodput.requests_per_s" not in rows_of(result)
