"""``--processes``: one run's load in several load processes against the real emulator, merged into one results
folder that reads like a one-process run of the same load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import psutil
import pytest
from runs import load, run_cli

from cvload.load.process_fleet import ProcessFleet, auto_processes, resolve_processes, share, split, strided
from cvload.load.session import Session
from cvload.measure.metrics import BY_NAME, stats, values
from cvload.results.records import RequestRecord
from cvload.settings.config import RunConfig


def keys(node: object, prefix: str = "") -> set[str]:
    if not isinstance(node, dict):
        return {prefix}
    return {k for key, value in node.items() for k in keys(value, f"{prefix}.{key}")} | {prefix}


# ---- splitting (pure) ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers,count", [(10, 3), (64, 4), (5, 5), (7, 2)])
def test_split_keeps_every_workers_ramp_offset(workers, count):
    config = RunConfig(server=["a", "b", "c"], num_tasks=workers, ramp=2.0, requests=100)
    parts = split(config, count, items=12)
    offsets = {}
    for part in parts:
        mine, ramp = part.config["num_tasks"], part.config["ramp"]
        for j in range(mine):  # as Engine._sync_workers spreads a process's own workers over its ramp
            offsets[j * count + part.index] = part.delay_s + ramp * j / mine
    assert sorted(offsets) == list(range(workers))
    for i, offset in offsets.items():
        assert offset == pytest.approx(2.0 * i / workers)
    assert sum(p.config["requests"] for p in parts) == 100


def test_strided_picks_what_one_process_would():
    items = list("abcdefg")
    for count in (2, 3, 7):
        for p in range(count):
            mine = strided(items, p, count)
            for j in range(40):  # process p's j-th request is the run's request j*count + p
                assert mine[j % len(mine)] == items[(j * count + p) % len(items)]


def test_open_loop_rates_add_up_and_auto_leaves_a_core():
    config = RunConfig(server=["a"], rate=30.0, max_inflight=9, seed=1)
    parts = split(config, 4, items=8)
    assert sum(p.config["rate"] for p in parts) == pytest.approx(30.0)
    assert len({p.config["seed"] for p in parts}) == 4
    assert all(p.config["max_inflight"] >= 1 for p in parts) and sum(p.config["max_inflight"] for p in parts) == 9
    assert auto_processes(RunConfig(num_tasks=1024, processes="auto"), cpus=16) == 15
    assert auto_processes(RunConfig(num_tasks=256, processes="auto"), cpus=16) == 4
    assert auto_processes(RunConfig(num_tasks=256, processes="auto"), cpus=2) == 1
    # HTTP streaming moves its audio and prompts as JSON: 64 prompt-carrying streams are four processes' load
    http = RunConfig(server=["h:8000"], protocol="http", num_tasks=64, processes="auto").validate()
    assert auto_processes(http, cpus=16) == 4
    assert auto_processes(RunConfig(server=["h:8000"], protocol="http", num_tasks=64, spk_cache=True,
                                    processes="auto").validate(), cpus=16) == 3
    assert auto_processes(RunConfig(server=["h:8001"], num_tasks=64, processes="auto").validate(), cpus=16) == 1
    assert resolve_processes(RunConfig(num_tasks=3, processes=8)) == 3  # never more than the streams
    assert [share(10, p, 4) for p in range(4)] == [3, 3, 2, 2]


def test_processes_usage_errors(tmp_path, capsys):
    assert run_cli("--server", "127.0.0.1:1", "--processes", "0", "--out", str(tmp_path / "a")) == 2
    assert "--processes" in capsys.readouterr().err
    assert run_cli("--server", "127.0.0.1:1", "--processes", "2", "--save-audio", "--out", str(tmp_path / "b")) == 2
    assert "--save-audio" in capsys.readouterr().err


# ---- against the emulator --------------------------------------------------------------------------------------
@pytest.mark.timing
def test_merged_run_reads_like_one_process(emulator, tmp_path):
    common = ["--server", emulator.grpc, "--num-tasks", "6", "--requests", "36", "--warmup", "6",
              "--ramp", "0.3s", "--metrics-url", "none", "--gpu-source", "none"]
    assert run_cli(*common, "--out", str(tmp_path / "one")) == 0
    assert run_cli(*common, "--processes", "3", "--out", str(tmp_path / "three")) == 0
    one, one_records = load(tmp_path / "one")
    three, records = load(tmp_path / "three")
    assert keys({k: v for k, v in three.items() if k != "client"}) == \
        keys({k: v for k, v in one.items() if k != "client"})
    assert set(records[0]) == set(one_records[0])
    assert three["requests"] == one["requests"] == {"total": 30, "ok": 30, "failed": 0, "cancelled": 0,
                                                     "warmup": 6, "incomplete": 0,
                                                     "barged_in": 0}
    # every request exactly once, with the index, worker, item and server one process would have given it
    assert sorted(r["index"] for r in records) == list(range(36))
    assert len({r["request_id"] for r in records}) == 36
    assert {r["worker"] for r in records} == set(range(6))
    assert Counter(r["item_id"] for r in records) == Counter(r["item_id"] for r in one_records)
    assert {r["index"]: r["item_id"] for r in records} == {r["index"]: r["item_id"] for r in one_records}
    assert all(r["warmup"] == (r["index"] < 6) for r in records)
    # the merged statistics are those of all records together (never per-process averages)
    merged = [RequestRecord.from_json(r) for r in records if not r["warmup"]]
    first = stats(values(merged, BY_NAME["first_chunk_latency_ms"]))
    assert three["metrics"]["first_chunk_latency_ms"]["p99"] == pytest.approx(first["p99"], abs=1e-3)
    assert 200 <= three["metrics"]["first_chunk_latency_ms"]["p50"] < 260
    assert three["concurrency"]["requested"] == 6
    assert three["concurrency"]["achieved_mean"] == pytest.approx(6, abs=0.6)
    client = three["client"]
    assert client["load_processes"] == 3
    assert [p["process"] for p in client["processes"]] == [*(f"load process {i}" for i in range(3)), "coordinator"]
    assert client["cpu_cores"] == pytest.approx(sum(p["cpu_cores"] for p in client["processes"]), abs=0.01)
    assert client["loop_lag_ms"]["max"] == max(p["loop_lag_ms"]["max"] for p in client["processes"][:3])


def test_open_loop_split_and_servers_spread(emulator, tmp_path):
    port = emulator.grpc.rsplit(":", 1)[1]
    servers = [f"127.0.0.1:{port}", f"localhost:{port}"]
    out = tmp_path / "r"
    assert run_cli("--server", servers[0], "--server", servers[1], "--model", "cosyvoice2_instant", "--rate", "40",
                   "--arrival", "constant", "--requests", "24", "--processes", "2", "--metrics-url", "none",
                   "--out", str(out)) == 0
    summary, records = load(out)
    assert summary["load"]["kind"] == "open" and summary["requests"]["total"] == 24
    assert all(r["intended"] is not None and r["worker"] == -1 for r in records)
    # request i went to server i % 2, as with one process
    assert all(r["server"] == servers[r["index"] % 2] for r in records)
    # Two phase-shifted constant streams of 20/s interleave into one of 40/s: every 25 ms a request, exactly, as
    # planned from the fleet's common start however late each process woke (once one woke 6 ms late and its
    # whole stream was shifted: gaps of 19 and 31 ms).
    intended = sorted(r["intended"] for r in records)
    gaps = [b - a for a, b in zip(intended, intended[1:])]
    assert gaps == pytest.approx([0.025] * len(gaps), abs=1e-6)


def test_objective_on_merged_data_exits_3(emulator, tmp_path):
    out = tmp_path / "r"
    assert run_cli("--server", emulator.grpc, "--num-tasks", "4", "--requests", "8", "--processes", "2",
                   "--metrics-url", "none", "--slo", "first_chunk.p50<100ms", "--out", str(out)) == 3
    summary, _ = load(out)
    assert summary["slo"][0]["measured"] == pytest.approx(summary["metrics"]["first_chunk_latency_ms"]["p50"])


async def until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_live_commands_reach_every_process(emulator, tmp_path):
    config = RunConfig(server=[emulator.grpc], num_tasks=2, ramp=0.0, duration=60.0, out=str(tmp_path / "r"),
                       metrics_url="none", gpu_source="none", processes=2).validate()
    session = Session(config)
    fleet = await session.prepare()
    assert isinstance(fleet, ProcessFleet)
    run = asyncio.ensure_future(session.execute())
    try:
        await until(lambda: len(session.recent) >= 4)
        fleet.set_concurrency(6)  # three workers in each process
        await until(lambda: {r.worker for r in session.recent} >= set(range(6)))
        assert all(c.status["concurrency"] == 3 for c in fleet.children)
        fleet.pause()
        await until(lambda: all(c.status["inflight"] == 0 for c in fleet.children))
        sent = [c.status["sent"] for c in fleet.children]
        await asyncio.sleep(0.6)  # two status reports of every process: nothing was sent meanwhile
        assert [c.status["sent"] for c in fleet.children] == sent
        fleet.resume()
        await until(lambda: all(c.status["sent"] > s for c, s in zip(fleet.children, sent)))
        fleet.interrupt()
        await run
    finally:
        summary = await session.finish()
        await session.close()
    assert summary["status"] == "interrupted" and session.exit_code() == 0
    assert not any(c.transport.running() for c in fleet.children)
    _, records = load(tmp_path / "r")
    assert len(records) == sum(c.records for c in fleet.children) and {r["index"] % 2 for r in records} == {0, 1}


def test_killed_process_is_reported_and_its_records_kept(emulator, tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "cvload", "run", "--quiet", "--server", emulator.grpc, "--num-tasks", "4",
           "--duration", "60s", "--processes", "2", "--metrics-url", "none", "--gpu-source", "none",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        deadline = time.monotonic() + 60
        records = out / "records.jsonl"
        while not (records.exists() and {json.loads(line)["index"] % 2 for line in
                                         records.read_text().splitlines() if line.endswith("}")} == {0, 1}):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        loads = [c for c in psutil.Process(proc.pid).children() if "cvload.load.process_fleet" in " ".join(c.cmdline())]
        assert len(loads) == 2
        loads[0].send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    summary, kept = load(out)
    assert summary["status"] == "aborted" and "died" in summary["abort_reason"]
    dead = int(summary["abort_reason"].split("load process ")[1].split()[0])
    assert any(r["index"] % 2 == dead for r in kept)  # the dead process's finished requests are kept
    assert len(kept) == summary["requests"]["total"] + summary["requests"]["cancelled"]
    assert "died" in err


async def test_dashboard_runs_a_fleet(emulator, tmp_path):
    """``cvload tui --processes 2``: the measuring process runs the same session, so keys reach every process."""
    from textual.pilot import Pilot

    from cvload.tui.app import DashboardApp
    from cvload.tui.run_source import RunSource

    async def wait(pilot: Pilot, cond) -> None:
        deadline = time.monotonic() + 30
        while not cond():
            assert time.monotonic() < deadline, "condition not met in time"
            await pilot.pause(0.05)

    config = RunConfig(server=[emulator.grpc], num_tasks=2, ramp=0.0, duration=60.0, out=str(tmp_path / "r"),
                       metrics_url="none", gpu_source="none", processes=2).validate()
    source = RunSource(config)
    app = DashboardApp(source)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait(pilot, lambda: {r.worker for r in source.records()} == {0, 1})
        await pilot.press("plus")  # worker 2: the second worker of load process 0
        await wait(pilot, lambda: source.state.concurrency == 3)
        await wait(pilot, lambda: any(r.worker == 2 for r in source.records()))
        await pilot.press("q")
        await wait(pilot, lambda: source.done)
    source.wait()
    assert source.error is None and source.exit_code() == 0
    summary, records = load(tmp_path / "r")
    assert summary["status"] == "interrupted" and summary["client"]["load_processes"] == 2
    assert len(records) == summary["requests"]["total"] + summary["requests"]["cancelled"]
    assert {r["worker"] for r in records} == {0, 1, 2}


def test_ctrl_c_reaches_every_process(emulator, tmp_path):
    """SIGINT to the coordinator (the terminal's Ctrl-C; load processes have their own session): all stop."""
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "cvload", "run", "--quiet", "--server", emulator.grpc, "--num-tasks", "4",
           "--duration", "60s", "--processes", "2", "--metrics-url", "none", "--gpu-source", "none",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    records = out / "records.jsonl"
    deadline = time.monotonic() + 60
    while not (records.exists() and {json.loads(line)["index"] % 2 for line in
                                     records.read_text().splitlines() if line.endswith("}")} == {0, 1}):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    loads = [c for c in psutil.Process(proc.pid).children() if "cvload.load.process_fleet" in " ".join(c.cmdline())]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert len(loads) == 2 and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in loads)
    summary, lines = load(out)
    assert summary["status"] == "interrupted" and summary["requests"]["ok"] >= 2
    assert len(lines) == summary["requests"]["total"] + summary["requests"]["cancelled"]


@pytest.mark.timing
def test_dead_server_aborts_every_process(start_emulator, tmp_path, capsys):
    from cvload.emulator import EmulatedModel, get_profile

    emu = start_emulator([EmulatedModel(profile=get_profile("instant", {"crash_after": 6}))])
    out = tmp_path / "r"
    assert run_cli("--server", emu.grpc, "--num-tasks", "4", "--requests", "400", "--processes", "2",
                   "--metrics-url", "none", "--out", str(out)) == 1
    summary, records = load(out)
    assert summary["status"] == "aborted" and "unreachable" in summary["abort_reason"]
    assert summary["requests"]["ok"] >= 4
    assert len(records) == summary["requests"]["total"] + summary["requests"]["cancelled"] < 400
    assert "unreachable" in capsys.readouterr().err
