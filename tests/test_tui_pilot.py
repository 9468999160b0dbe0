"""The dashboard driven by Textual's Pilot against the real embedded Triton server: keys reach the engine, a
concurrency change shows in the records, snapshots and quitting write the results folder as ``cvload run``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from assertions import assert_same_stats
from textual.pilot import Pilot
from textual.widgets import Static

from cvload.cli import main
from cvload.errors import EXIT_OK, EXIT_SLO_FAILED, CvloadError
from cvload.measure.metrics import REQUEST_METRICS
from cvload.settings.config import RunConfig
from cvload.tui.app import DashboardApp
from cvload.tui.charts import fmt_ms
from cvload.tui.messages import Command, EngineStatus, Failed, Finished, Prepared, Start, from_line
from cvload.tui.panels import Panel
from cvload.tui.replay import ReplaySource
from cvload.tui.run_source import RunSource

SIZE = (160, 48)
REPLAY = Path(__file__).parent / "fixtures" / "replay_run"
PANEL_TITLES = {"First chunk", "Second chunk", "RTF", "Throughput", "GPU", "Server stages", "Errors",
                "Recent requests"}




async def until(pilot: Pilot, cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def config(emulator, tmp_path: Path, **kw) -> RunConfig:
    base = {"server": [emulator.grpc], "out": str(tmp_path / "results"), "metrics_url": "none",
            "gpu_source": "none", "request_timeout": 20.0}
    base.update(kw)
    return RunConfig(**base).validate()


def text_of(app: DashboardApp, selector: str) -> str:
    return app.query_one(selector, Panel).plain()


def header(app: DashboardApp) -> str:
    return str(app.query_one("#header", Static).render())


async def test_keys_reach_the_engine(emulator, tmp_path):
    # The fixed profile (first chunk at 200 ms, ~0.4 s a request) keeps requests in flight long enough to watch.
    # The engine runs in the measuring process: its state is what that process reports, its records what it wrote.
    source = RunSource(config(emulator, tmp_path, model="cosyvoice2", num_tasks=1, duration=60.0, ramp=0.0))
    app = DashboardApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: source.live.snapshot().counts["done"] >= 1, "the first request")
        assert source.state.concurrency == 1

        # + : one more stream, the engine starts worker 1 and its requests show up in the records
        await pilot.press("plus")
        await until(pilot, lambda: source.state.concurrency == 2, "concurrency 2 in the engine")
        await until(pilot, lambda: any(r.worker == 1 for r in source.records()), "a record from worker 1")
        await until(pilot, lambda: "concurrency 2" in header(app), "the header showing concurrency 2")
        await until(pilot, lambda: source.state.inflight == 2, "two requests in flight")

        # - : back to one; worker 1 retires after its current request and sends nothing more
        await pilot.press("minus")
        await until(pilot, lambda: source.state.concurrency == 1, "concurrency 1 in the engine")
        applied = time.monotonic()  # the system-wide monotonic clock: the records' clock too
        await until(pilot, lambda: any(r.worker == 0 and r.sent > applied + 0.5 for r in source.records()),
                    "worker 0 sending on alone")
        assert not [r for r in source.records() if r.worker == 1 and r.sent > applied]

        # space : pause; in-flight requests finish, nothing new is sent until resumed
        await pilot.press("space")
        await until(pilot, lambda: source.state.paused, "the engine paused")
        await until(pilot, lambda: source.state.inflight == 0, "in-flight requests finishing")
        sent, frames = source.state.sent, app.frames
        await until(pilot, lambda: app.frames >= frames + 4, "four dashboard refreshes")
        assert source.state.sent == sent and "PAUSED" in header(app)
        await pilot.press("space")
        await until(pilot, lambda: source.state.sent > sent, "sending again after resume")
        assert not source.state.paused

        # s : results so far and the screen, in the results folder
        await pilot.press("s")
        await until(pilot, lambda: app.last_snapshot is not None, "a snapshot")
        snap_dir = app.last_snapshot
        assert snap_dir is not None and snap_dir.parent == source.out_dir / "snapshots"
        snap = json.loads((snap_dir / "summary.json").read_text())
        assert snap["requests"]["ok"] >= 3 and snap["metrics"]["first_chunk_latency_ms"]["p50"] > 200
        svg = (snap_dir / "screen.svg").read_text()
        assert svg.startswith("<svg") and "First&#160;chunk" in svg

        # r : the live window starts afresh, the run scope does not
        run_count = source.live.snapshot().metrics["first_chunk_latency_ms"].run["count"]
        await pilot.press("r")
        after = source.live.snapshot()
        assert after.reset_at is not None
        assert after.metrics["first_chunk_latency_ms"].run["count"] >= run_count

        # q : stop sending, drain, write the results folder, leave
        await pilot.press("q")
        await until(pilot, lambda: source.done, "the run to finish writing", timeout=20)
    source.wait()
    assert source.error is None
    out = source.out_dir
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == summary["requests"]["total"] + summary["requests"]["cancelled"]
    assert {json.loads(line)["worker"] for line in lines} == {0, 1}
    assert source.exit_code() == EXIT_OK


async def test_dashboard_end_to_end(emulator, tmp_path):
    # Two requests per stream keep it short: the demo model's streams share one emulated LLM, so time adds up.
    source = RunSource(config(emulator, tmp_path, model="cosyvoice2_demo", num_tasks=4, requests=8,
                              metrics_url=emulator.server.metrics_url, gpu_source="auto", telemetry_interval=0.25,
                              slo=["error_rate<1%", "first_chunk.p50<1ms"]))
    app = DashboardApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: source.done, "the run to finish", timeout=60)
        await until(pilot, lambda: "FINISHED" in header(app), "the header to say finished")
        assert source.error is None and source.summary is not None
        titles = {str(p.border_title) for p in app.query(Panel)}
        assert titles == PANEL_TITLES
        head = header(app)
        assert "done 8/8" in head and "concurrency 4" in head and "cosyvoice2_demo" in head
        assert "error_rate<1% ✓" in head and "first_chunk.p50<1ms ✗" in head
        first = text_of(app, "#first")
        p50 = source.summary["metrics"]["first_chunk_latency_ms"]["p50"]
        assert f"run    {fmt_ms(p50)}" in first  # the run row shows the summary's own p50
        assert "no GPU metrics from this server" in text_of(app, "#gpu")  # a CPU-only server
        await until(pilot, lambda: "cosyvoice2_demo" in text_of(app, "#stages"), "the server's stage breakdown")
        assert "real time 1.0" in text_of(app, "#rtf")
        assert "no errors" in text_of(app, "#errors")
        # the live window agrees with the summary written to disk
        summary = json.loads((source.out_dir / "summary.json").read_text())
        live = source.live.summary_like(summary["wall_s"])
        assert live["requests"] == summary["requests"]
        for metric in REQUEST_METRICS:
            assert_same_stats(live["metrics"][metric.name], summary["metrics"][metric.name], metric.name)
        await pilot.press("q")
    assert source.exit_code() == EXIT_SLO_FAILED  # as `cvload run`: an objective failed -> 3


async def test_unreachable_server_is_a_clear_error(tmp_path):
    source = RunSource(RunConfig(server=["127.0.0.1:1"], out=str(tmp_path / "r"), metrics_url="none",
                                 gpu_source="none").validate())
    app = DashboardApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: source.done, "the connection error", timeout=30)
        await until(pilot, lambda: "FAILED" in header(app), "the header to show the failure")
    with pytest.raises(CvloadError, match="127.0.0.1:1"):
        source.exit_code()


async def test_replay_shows_a_finished_run_and_ignores_run_keys():
    source = ReplaySource(REPLAY)
    app = DashboardApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        head = header(app)
        assert "REPLAY" in head and "done 40" in head and "concurrency 4" in head
        summary = source.summary
        assert summary is not None
        p99 = summary["metrics"]["first_chunk_latency_ms"]["p99"]
        assert f"run    {fmt_ms(summary['metrics']['first_chunk_latency_ms']['p50'])}" in text_of(app, "#first")
        assert fmt_ms(p99) in text_of(app, "#first")
        assert "cosyvoice2" in text_of(app, "#stages")  # the stage breakdown saved with the run
        assert "load(1)" in {active.binding.action for active in app.screen.active_bindings.values()}
        await pilot.press("plus")
        await pilot.press("space")
        await pilot.press("r")
        await pilot.pause()
        assert "no data yet" in text_of(app, "#first")  # reset emptied the histogram
        await pilot.press("q")
    assert not app.is_running


def test_cli_without_a_terminal_runs_headless(emulator, tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["tui", "--server", emulator.grpc, "--model", "cosyvoice2_instant", "--num-tasks", "2",
                 "--requests", "6", "--out", str(out), "--metrics-url", "none"])
    captured = capsys.readouterr()
    assert code == 0
    assert "not a terminal" in captured.err and "running headless" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"]["ok"] == 6


def test_cli_replay_of_a_non_results_folder(tmp_path, capsys):
    assert main(["tui", "--replay", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "records.jsonl" in err



def test_results_survive_the_dashboard_going_away(emulator, tmp_path):
    """If the dashboard dies, the measuring process sees its input end, stops, and still writes the results."""
    source = RunSource(config(emulator, tmp_path, model="cosyvoice2_instant", num_tasks=2, duration=60.0))
    source.start()
    deadline = time.monotonic() + 30
    while source.live.snapshot().counts["done"] < 5:
        assert time.monotonic() < deadline and not source.done, "no records from the measuring process"
        source.poll()
        time.sleep(0.05)
    source.process.close_input()  # what the kernel does to the pipe when the dashboard's process dies
    assert source.wait(30)
    assert source.error is None and source.exit_code() == EXIT_OK
    summary = json.loads((source.out_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["requests"]["ok"] >= 5


def test_messages_round_trip():
    sent = [Start(config=RunConfig().to_json()), Command("rate", 2.5), Command("pause"),
            Prepared(out_dir="/r", servers=["h:1"], closed_loop=True, telemetry=False),
            EngineStatus(started=1.0, done=3, stages=[{"model": "m"}], warnings=["w"]),
            Finished(exit_code=3, status="completed"), Failed(message="boom", exit_code=1, traceback="tb")]
    assert [from_line(m.to_line()) for m in sent] == sent
    assert EngineStatus(started=1.0).measure_from == 1.0 and EngineStatus(1.0, 2.0).measure_from == 2.0
    for bad in ("not json", '{"type": "nope"}', '{"type": "finished"}', "[1]"):
        with pytest.raises(ValueError):
            from_line(bad)


def test_header_prints_a_missed_objective_as_written_not_in_e_notation() -> None:
    from cvload.tui.panels import header_text
    from cvload.tui.source import Status

    status = Status("running", objectives=[
        {"objective": "first_chunk.p95<300ms", "verdict": "fail", "measured": 1340.2, "unit": "ms"},
        {"objective": "error_rate<1%", "verdict": "fail", "measured": 7.5, "unit": "%"},
        {"objective": "rtf.p50<0.5", "verdict": "pass", "measured": 0.4213, "unit": ""}])
    plain = header_text(status, "m @ h", None).plain
    assert "✗ (1340ms)" in plain and "✗ (7.5%)" in plain and "✓ (0.421)" in plain and "e+" not in plain
