"""`cvload report` on results of real `cvload run`s against the embedded Triton server: the HTML (every figure
drawn, checked in headless Chromium), the Markdown twin, sweeps, overlays and bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cvload.cli import main

pytest.importorskip("matplotlib", reason="cvload report needs the report extra (matplotlib)")

RUN_FIGURES = 6  # first-chunk CDF, second-chunk gaps, RTF, over time, server stages, errors and stalls
# One met, one missed, whatever the load beside: the session server's first chunk comes at 200 ms, then one every
# 100 ms (a busy CI host once stretched a p95 of first chunks past 400 ms).
OBJECTIVES = ["--slo", "first_chunk.p95<2000ms", "--slo", "second_chunk.p95<50ms"]


def run(emulator, out: Path, *args: str) -> Path:
    code = main(["run", "--quiet", "--server", emulator.grpc, "--out", str(out), *args])
    assert code in (0, 3), code
    return out


@pytest.fixture(scope="module")
def results(emulator, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    base = run(emulator, root / "base", "--num-tasks", "2", "--requests", "8", *OBJECTIVES)
    faulty = run(emulator, root / "faulty", "--model", "cosyvoice2_faulty", "--num-tasks", "2", "--requests", "40",
                 *OBJECTIVES)
    offline = run(emulator, root / "offline", "--model", "cosyvoice2_offline", "--mode", "offline",
                  "--requests", "3")
    # A sweep folder as `cvload sweep` writes it (schema cvload.sweep/1): levels in measuring order (1 and 4 as
    # planned, then 2 by bisection), each in its own run folder, with the headline values sweep.json keeps.
    sweep = root / "sweep"
    levels = []
    for number, (n, phase) in enumerate(((1, "plan"), (4, "plan"), (2, "bisect")), 1):
        folder = f"level-{number:03d}-c{n}"
        level = run(emulator, sweep / folder, "--num-tasks", str(n), "--requests", str(2 * n), *OBJECTIVES[:2])
        summary = json.loads((level / "summary.json").read_text())
        levels.append({"value": n, "kind": "concurrency", "phase": phase, "folder": folder, "slo_passed": n < 4,
                       "summary": {"metrics": {"first_chunk_latency_ms": summary["metrics"]["first_chunk_latency_ms"]},
                                   "goodput": {"requests_per_s": 1.5 * n}}})
    (sweep / "sweep.json").write_text(json.dumps({
        "schema": "cvload.sweep/1", "kind": "concurrency", "levels": levels,
        "capacity": {"kind": "concurrency", "value": 2, "bracket": [2, 4], "by": "objectives"},
        "knee": {"value": 2, "reason": "throughput x1.1 for load x2"},
        "stopped_because": "level 4 missed first_chunk.p95<400ms", "status": "completed"}))
    (sweep / "sweep.csv").write_text("value,kind\n1,concurrency\n4,concurrency\n2,concurrency\n")
    return {"base": base, "faulty": faulty, "offline": offline, "sweep": sweep}


def report(*args: str) -> int:
    return main(["report", *args])


def images(html: str) -> list[str]:
    return re.findall(r'<img alt="[^"]*" src="(data:image/png;base64,[^"]+)"', html)


def test_run_report_is_one_self_contained_file_with_a_markdown_twin(results, tmp_path):
    folder = results["base"]
    assert report(str(folder)) == 0  # default: beside the results
    html = (folder / "report.html").read_text()
    md = (folder / "report.md").read_text()
    assert len(images(html)) == RUN_FIGURES
    assert "default-src 'none'" in html  # the page may fetch nothing
    assert not re.search(r'(src|href)="(?!data:)', html), "every src/href is inline data"
    for title in ("First-chunk latency (CDF)", "Second-chunk gap", "Real-time factor", "Latency and throughput",
                  "Server time per stage", "Errors and stalls"):
        assert title in html and title in md  # the Markdown lists the figures it cannot inline
    summary = json.loads((folder / "summary.json").read_text())
    first = summary["metrics"]["first_chunk_latency_ms"]
    row = next(line for line in md.splitlines() if line.startswith("| First chunk (ms) |"))
    assert row.split(" | ")[1:4] == [f"{first[k]:.1f}" for k in ("p50", "p90", "p95")]
    assert "| first_chunk.p95<2000ms | " in md and "| **second_chunk.p95<50ms** |" in md  # the missed one stands out
    assert "| config.num_tasks | 2 |" in md
    assert not images(md) and "data:image" not in md
    assert f"{summary['requests']['ok']} of {summary['requests']['total']} requests ok" in md


def test_output_option_names_both_files(results, tmp_path):
    assert report(str(results["base"]), "-o", str(tmp_path / "out" / "r.md")) == 0
    assert (tmp_path / "out" / "r.html").stat().st_size > 0 and (tmp_path / "out" / "r.md").stat().st_size > 0


def test_several_runs_overlay_with_deltas(results, tmp_path):
    out = tmp_path / "cmp.html"
    assert report(str(results["base"]), str(results["faulty"]), "-o", str(out)) == 0
    html, md = out.read_text(), out.with_suffix(".md").read_text()
    assert len(images(html)) == RUN_FIGURES
    assert "comparison: base vs faulty" in md
    header = next(line for line in md.splitlines() if line.startswith("| metric | base |"))
    assert header == "| metric | base | faulty | Δ | Δ % |"
    base = json.loads((results["base"] / "summary.json").read_text())
    faulty = json.loads((results["faulty"] / "summary.json").read_text())
    row = next(line for line in md.splitlines() if line.startswith("| requests measured |")).strip("| ").split(" | ")
    assert row[1:4] == [str(base["requests"]["total"]), str(faulty["requests"]["total"]),
                        f"+{faulty['requests']['total'] - base['requests']['total']}"]
    assert "**config.model**" in md  # the setting that differs stands out


def test_sweep_report(results, tmp_path):
    out = tmp_path / "sweep.html"
    assert report(str(results["sweep"]), "-o", str(out)) == 0
    html, md = out.read_text(), out.with_suffix(".md").read_text()
    assert len(images(html)) == 2  # latency against load; throughput and goodput against load
    assert ("Capacity: 2 concurrent streams (found between 2 and 4). Knee at 2 (throughput x1.1 for load x2). "
            "Stopped because: level 4 missed first_chunk.p95<400ms.") in md
    rows = [line for line in md.splitlines() if re.match(r"\| \**(1|2|4)\b", line)]
    assert len(rows) == 3  # in order of load, not of measuring
    assert rows[1].startswith("| 2 (capacity) (bisect) | met |") and rows[2].startswith("| **4**")  # failed: marked
    # Goodput: the level's own summary.json (a run with per-request objectives reports it), not sweep.json's copy.
    own = json.loads((results["sweep"] / "level-003-c2" / "summary.json").read_text())["goodput"]["requests_per_s"]
    assert f"| {own:.2f} |" in rows[1]
    assert "| config.num_tasks | (per level) |" in md  # not the first level's value


def test_sweep_answer_without_a_failing_level_or_objectives(results, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(results["sweep"], sweep)
    data = json.loads((sweep / "sweep.json").read_text())
    data.update(capacity={"kind": "concurrency", "value": 4, "bracket": [4, None], "by": "goodput"}, knee=None)
    (sweep / "sweep.json").write_text(json.dumps(data))
    assert report(str(sweep)) == 0
    md = (sweep / "report.md").read_text()
    assert ("Capacity: 4 concurrent streams (no level above it failed: the highest measured), the level of highest "
            "goodput: the sweep had no objectives.") in md
    assert "Knee" not in md


def test_two_sweeps_overlay(results, tmp_path):
    out = tmp_path / "two.html"
    assert report(str(results["sweep"]), str(results["sweep"]), "-o", str(out)) == 0
    md = out.with_suffix(".md").read_text()
    assert "| capacity | 2 | 2 | +0 | +0.0% |" in md


@pytest.mark.parametrize("case", ["missing", "file", "empty", "other files", "modes", "run and sweep"])
def test_bad_input_is_a_clear_usage_error(results, tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not results")
    args = {
        "missing": ([str(tmp_path / "nowhere")], "no such results folder"),
        "file": ([str(tmp_path / "other" / "notes.txt")], "is a file, not a results folder"),
        "empty": ([str(tmp_path / "empty")], "is an empty folder, not a results folder"),
        "other files": ([str(tmp_path / "other")], "is not a cvload results folder (no summary.json)"),
        "modes": ([str(results["base"]), str(results["offline"])], "cannot overlay streaming and offline"),
        "run and sweep": ([str(results["base"]), str(results["sweep"])], "cannot report runs and sweeps together"),
    }[case]
    code = report(*args[0], "-o", str(tmp_path / "r.html"))
    err = capsys.readouterr().err
    assert code == 2
    assert args[1] in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_run_never_loads_matplotlib():
    code = ("import sys, cvload.cli; cvload.cli.build_parser(); import cvload.load.session, cvload.console; "
            "sys.exit(1 if 'matplotlib' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const drawn = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  const m = document.createElement('div');
  m.id = 'cvload-check';
  m.textContent = `images=${imgs.length} drawn=${drawn} width=${document.body.scrollWidth}`;
  document.body.appendChild(m);
  console.log('cvload-check ' + m.textContent);
});
</script>"""


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (make system-deps installs it on Debian)")
def test_every_figure_is_drawn_in_chromium(results, tmp_path):
    out = tmp_path / "cmp.html"
    assert report(str(results["base"]), str(results["faulty"]), "-o", str(out)) == 0
    html = out.read_text()
    # A copy with a probe script: the report's own policy forbids scripts, so only that clause is widened; any
    # fetch the report tried would still be refused and show as a console error.
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
                     .replace("</body>", CHECK + "</body>"))
    done = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    marker = re.search(r'<div id="cvload-check">images=(\d+) drawn=(\d+) width=(\d+)</div>', done.stdout)
    assert marker, done.stderr[-2000:]
    assert int(marker[1]) == RUN_FIGURES and int(marker[2]) == RUN_FIGURES
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert any("cvload-check images=" in line for line in console), "console messages are captured"
    assert [line for line in console if "cvload-check" not in line] == []  # no errors, nothing refused

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1000,2400", out.as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)[:, :, :3]
    assert pixels.shape[:2] == (2400, 1000)
    dark = (pixels.mean(axis=2) < 0.5).mean()  # text, axes and curves, not a blank page
    assert 0.01 < dark < 0.5
    colourful = ((pixels.max(axis=2) - pixels.min(axis=2)) > 0.3).mean()  # the figures' coloured lines and bars
    assert colourful > 0.002


def test_time_series_account_for_every_measured_request(results):
    from cvload.report import series
    from cvload.results.folder import open_results

    run = open_results(results["faulty"])
    summary = run.summary
    assert summary["requests"]["failed"] > 0  # the faulty profile fails some requests
    width = series.bin_width(series.duration(run))
    ts = series.time_series(run, width)
    assert ts.t.size >= 10  # a run of a second or two still gets a curve, not one point
    assert round(float(ts.throughput.sum()) * width) == summary["requests"]["ok"]
    assert sum(int(v.sum()) for v in ts.errors.values()) == summary["requests"]["failed"]
    assert {k for k, v in summary["errors"].items() if v} == {k for k in ts.errors if k != "audio check"}
    p50 = ts.first_p50[~np.isnan(ts.first_p50)]
    first = summary["metrics"]["first_chunk_latency_ms"]
    assert p50.size and first["min"] - 1e-3 <= p50.min() and p50.max() <= first["max"] + 1e-3  # records: 6 decimals


def test_offline_run_leaves_out_what_it_has_no_data_for(results, tmp_path):
    out = tmp_path / "offline.html"
    assert report(str(results["offline"]), "-o", str(out)) == 0
    html = out.read_text()
    assert len(images(html)) == RUN_FIGURES - 1  # one chunk per request: no second-chunk gap
    assert "First-chunk latency (CDF)" in html and "Second-chunk gap" not in html


def test_binary_columns_hold_what_records_jsonl_holds(results, tmp_path):
    """records.columns, written beside each line, reads back as the same columns as parsing records.jsonl; a
    folder whose records.jsonl it no longer covers (a line added by hand, a run cut short) is parsed instead."""
    import shutil

    from cvload.results import columns_file
    from cvload.results.folder import read_columns

    folder = results["faulty"]
    assert (folder / columns_file.NAME).stat().st_size == 40 * columns_file.DTYPE.itemsize
    fast, parsed = read_columns(folder), read_columns(folder, binary=False)
    for name in ("sent_s", "end_s", "ok", "warmup", "error_kind"):
        assert np.array_equal(getattr(fast, name), getattr(parsed, name)), name
    assert fast.run_start == parsed.run_start and "server_error" in set(fast.error_kind)
    for name, column in parsed.metrics.items():
        assert np.array_equal(fast.metrics[name], column, equal_nan=True), name

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    lines = (copy / "records.jsonl").read_text().splitlines(keepends=True)
    (copy / "records.jsonl").write_text("".join(lines[:-1]))  # cut: the columns now run past the file
    assert columns_file.read(copy) is None and len(read_columns(copy)) == 39


def test_sweep_load_axis_ticks_the_levels(results, tmp_path):
    """Ticks at the levels measured, never 1.5 streams; a doubling sweep's levels on a log2 axis."""
    from cvload.report import figures
    from cvload.results.folder import open_results

    def axis(sweep):  # noqa: ANN001, ANN202 - the load axis as both sweep figures frame it
        _, (ax,) = figures._figure()
        ax.plot([level.value for level in sweep.levels], [1.0] * len(sweep.levels))
        figures.load_axis(ax, [sweep])
        return ax

    ax = axis(open_results(results["sweep"]))  # levels 1, 2 (bisect) and 4
    assert list(ax.get_xticks()) == [1, 2, 4] and ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
    other = tmp_path / "sweep"
    shutil.copytree(results["sweep"], other)
    data = json.loads((other / "sweep.json").read_text())
    data["levels"] = [level for level in data["levels"] if level["value"] != 2]  # 1 and 4: not a doubling run
    (other / "sweep.json").write_text(json.dumps(data))
    ax = axis(open_results(other))
    assert list(ax.get_xticks()) == [1, 4] and ax.get_xscale() == "linear"
