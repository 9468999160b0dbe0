"""`cvload run` end to end against the real embedded Triton server: results, metrics, objectives, exit codes,
bad input and faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import soundfile
from runs import assert_summary_matches_records, load, run_cli

from cvload.cli import main
from cvload.emulator import EmulatedModel, build_repository, get_profile
from cvload.triton.launcher import TritonServer


# Timing: the first chunk's p50 must be the fixed profile's 200 ms within 60 ms, which busy xdist workers can exceed
# (the sweep's like check measured 314 ms beside them).
@pytest.mark.timing
def test_streaming_grpc_matches_server_schedule(emulator, tmp_path):
    out = tmp_path / "r"
    code = run_cli("--server", emulator.grpc, "--num-tasks", "2", "--requests", "8", "--out", str(out),
                   "--slo", "first_chunk.p50<400ms", "--slo", "error_rate<1%")
    assert code == 0
    summary, records = load(out)
    assert summary["schema"] == "cvload.summary/1"
    assert summary["requests"] == {"total": 8, "ok": 8, "failed": 0, "cancelled": 0, "warmup": 0, "incomplete": 0,
                                   "barged_in": 0}
    # Goodput (a per-request objective was given): the requests with a first chunk under 400 ms, per second.
    good = sum(r["first_chunk_latency_ms"] < 400 for r in records)
    assert summary["goodput"]["share"] == good / 8
    assert summary["goodput"]["requests_per_s"] == pytest.approx(summary["throughput"]["requests_per_s"] * good / 8)
    assert len(records) == 8 and len({r["request_id"] for r in records}) == 8
    first = summary["metrics"]["first_chunk_latency_ms"]
    # The fixed profile sends the first chunk 200 ms after arrival and then one every 100 ms.
    assert 200 <= first["p50"] < 260
    second = summary["metrics"]["second_chunk_latency_ms"]
    assert 80 <= second["p50"] <= 120
    for key in ("p50", "p90", "p95", "p99", "mean", "max"):
        assert summary["metrics"]["total_latency_ms"][key] is not None
        assert summary["metrics"]["rtf"][key] is not None
    assert summary["throughput"]["requests_per_s"] > 0 and summary["throughput"]["audio_s_per_s"] > 0
    assert all(r["ok"] and r["audio_s"] > 1.0 and r["flags"] == [] for r in records)
    assert [v["verdict"] for v in summary["slo"]] == ["pass", "pass"] and summary["slo_passed"] is True
    assert summary["slo"][0]["measured"] == pytest.approx(first["p50"])
    assert (out / "config.json").exists() and (out / "summary.csv").exists()
    assert json.loads((out / "model_config.json").read_text())["name"] == "cosyvoice2"
    csv_text = (out / "summary.csv").read_text()
    assert csv_text.startswith("metric,unit,") and "first_chunk_latency_ms" in csv_text


def test_failed_objective_exits_3(emulator, tmp_path, capsys):
    code = main(["run", "--server", emulator.grpc, "--requests", "2", "--out", str(tmp_path / "r"),
                 "--slo", "first_chunk.p95<50ms"])
    assert code == 3
    table = capsys.readouterr().out
    assert "first_chunk.p95<50ms" in table and "fail" in table and "no data" not in table
    summary, _ = load(tmp_path / "r")
    assert summary["slo"][0]["verdict"] == "fail" and summary["slo_passed"] is False


def test_misspelled_objective_is_usage_error_before_any_load(emulator, tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli("--server", emulator.grpc, "--requests", "2", "--out", str(out),
                   "--slo", "frist_chunk.p95<300ms") == 2
    assert "frist_chunk" in capsys.readouterr().err
    assert not (out / "records.jsonl").exists()


@pytest.mark.parametrize(
    ("protocol", "mode", "model"),
    [("grpc", "offline", "cosyvoice2_offline"), ("http", "offline", "cosyvoice2_offline"),
     ("http", "streaming", "cosyvoice2_instant")],
)
def test_other_targets(emulator, tmp_path, protocol, mode, model):
    address = emulator.grpc if protocol == "grpc" else emulator.http
    out = tmp_path / "r"
    code = run_cli("--server", address, "--protocol", protocol, "--mode", mode, "--model", model,
                   "--num-tasks", "2", "--requests", "4", "--out", str(out))
    assert code == 0
    summary, records = load(out)
    assert summary["requests"]["ok"] == 4
    assert all(r["audio_s"] > 1.0 for r in records)
    if mode == "offline":
        assert all(len(r["chunk_offsets"]) == 1 for r in records)
    else:
        assert all(len(r["chunk_offsets"]) > 1 for r in records)


def test_save_audio_and_json_output(emulator, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--quiet", "--json", "--server", emulator.grpc, "--model", "cosyvoice2_instant",
                 "--requests", "3", "--save-audio", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["requests"]["ok"] == 3
    wavs = sorted((out / "audio").glob("*.wav"))
    assert len(wavs) == 3
    info = soundfile.info(wavs[0])
    assert info.samplerate == 24000 and info.subtype == "PCM_16" and info.duration > 1.0


def test_unreachable_server_fails_fast_naming_address(tmp_path, capsys):
    from cvload.triton.launcher import free_port

    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert run_cli("--server", address, "--requests", "1", "--out", str(tmp_path / "r")) == 1
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert address in err and "--emulator" in err


def test_unknown_model_lists_server_models(emulator, tmp_path, capsys):
    assert run_cli("--server", emulator.grpc, "--model", "nosuchmodel", "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert "nosuchmodel" in err and "cosyvoice2_offline" in err


def test_mode_mismatch_suggests_streaming(emulator, tmp_path, capsys):
    assert run_cli("--server", emulator.http, "--protocol", "http", "--mode", "offline",
                   "--out", str(tmp_path / "r")) == 2
    assert "--mode streaming" in capsys.readouterr().err


def test_malformed_manifest_names_line(emulator, tmp_path, capsys):
    manifest = tmp_path / "m.txt"
    manifest.write_text("u1|hello|missing.wav\n")
    assert run_cli("--server", emulator.grpc, "--inputs", str(manifest), "--out", str(tmp_path / "r")) == 2
    assert f"{manifest}:1" in capsys.readouterr().err


def test_non_audio_prompt_is_named(emulator, tmp_path, capsys):
    bad = tmp_path / "notaudio.wav"
    bad.write_text("this is not audio")
    manifest = tmp_path / "m.txt"
    manifest.write_text("u1|hello there|notaudio.wav|Say something long enough to be speech.\n")
    assert run_cli("--server", emulator.grpc, "--inputs", str(manifest), "--out", str(tmp_path / "r")) == 2
    assert "notaudio.wav" in capsys.readouterr().err


def test_request_timeout_counted(emulator, tmp_path):
    out = tmp_path / "r"
    assert run_cli("--server", emulator.grpc, "--requests", "2", "--request-timeout", "0.1",
                   "--out", str(out), "--slo", "error_rate<1%") == 3
    summary, records = load(out)
    assert summary["errors"]["timeout"] == 2
    assert all(r["error_kind"] == "timeout" for r in records)


def test_error_responses_and_stalls_counted_while_run_goes_on(emulator, tmp_path):
    out = tmp_path / "r"
    assert run_cli("--server", emulator.grpc, "--model", "cosyvoice2_faulty", "--num-tasks", "4",
                   "--requests", "30", "--out", str(out)) == 0
    summary, records = load(out)
    assert len(records) == 30
    assert summary["errors"]["server_error"] > 0
    assert summary["requests"]["ok"] > 0
    # A 0.5 s stall mid-stream shows as a long first chunk or a long gap after it.
    worst = max(summary["metrics"]["first_chunk_latency_ms"]["max"], summary["metrics"]["second_chunk_latency_ms"]["max"])
    assert worst >= 450
    assert any("error_rate" in (r["error"] or "") for r in records if r["error_kind"] == "server_error")
    assert_summary_matches_records(out, summary)


def test_server_dying_mid_run_keeps_records(start_emulator, tmp_path, capsys):
    emu = start_emulator([EmulatedModel(profile=get_profile("instant", {"crash_after": 6}))])
    out = tmp_path / "r"
    assert run_cli("--server", emu.grpc, "--num-tasks", "2", "--requests", "200", "--out", str(out)) == 1
    summary, records = load(out)
    assert summary["status"] == "aborted"
    assert summary["requests"]["ok"] >= 4
    assert len(records) == summary["requests"]["total"] + summary["requests"]["cancelled"]
    assert "unreachable" in capsys.readouterr().err


def test_open_loop_reports_corrected_latency(emulator, tmp_path):
    out = tmp_path / "r"
    assert run_cli("--server", emulator.grpc, "--model", "cosyvoice2_instant", "--rate", "30",
                   "--arrival", "constant", "--duration", "1s", "--out", str(out)) == 0
    summary, records = load(out)
    assert summary["load"]["kind"] == "open"
    assert 20 <= summary["requests"]["total"] <= 40
    corrected = summary["metrics"]["first_chunk_latency_corrected_ms"]
    assert corrected["p50"] >= summary["metrics"]["first_chunk_latency_ms"]["p50"]
    assert all(r["intended"] is not None and r["worker"] == -1 for r in records)


def test_achieved_concurrency_and_warmup(emulator, tmp_path):
    out = tmp_path / "r"
    assert run_cli("--server", emulator.grpc, "--num-tasks", "6", "--requests", "30", "--warmup", "6",
                   "--ramp", "0.2s", "--out", str(out), "--slo", "first_chunk.p99<300ms") in (0, 3)
    summary, records = load(out)
    assert_summary_matches_records(out, summary, ("first_chunk.p99<300ms",))
    assert summary["requests"]["warmup"] == 6 and summary["requests"]["total"] == 24
    conc = summary["concurrency"]
    assert conc["requested"] == 6 and conc["achieved_max"] == 6
    assert conc["achieved_mean"] > 5.0
    assert {r["worker"] for r in records} == set(range(6))


def test_round_robin_over_servers(emulator, tmp_path):
    port = emulator.grpc.rsplit(":", 1)[1]
    out = tmp_path / "r"
    assert run_cli("--server", f"127.0.0.1:{port}", "--server", f"localhost:{port}", "--model",
                   "cosyvoice2_instant", "--requests", "4", "--out", str(out)) == 0
    _, records = load(out)
    assert sorted(r["server"] for r in records) == sorted([f"127.0.0.1:{port}", f"localhost:{port}"] * 2)


def test_scenario_file_with_flag_override(emulator, tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('mode = "streaming"\nmodel = "cosyvoice2_instant"\nnum_tasks = 2\nrequests = 3\n'
                        'slo = ["error_rate<1%"]\n')
    out = tmp_path / "r"
    assert run_cli(str(scenario), "--server", emulator.grpc, "--requests", "5", "--out", str(out)) == 0
    summary, _ = load(out)
    assert summary["requests"]["total"] == 5 and summary["slo"][0]["objective"] == "error_rate<1%"
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["num_tasks"] == 2 and config["model"] == "cosyvoice2_instant"


def test_emulator_flag_runs_embedded_server(tmp_path):
    out = tmp_path / "r"
    assert run_cli("--emulator", "--profile", "instant", "--requests", "3", "--out", str(out)) == 0
    summary, _ = load(out)
    assert summary["requests"]["ok"] == 3
    assert (out / "emulator" / "tritonserver.log").exists()


def test_sigterm_stops_sending_and_writes_summary(emulator, tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "cvload", "run", "--quiet", "--server", emulator.grpc, "--num-tasks", "2",
           "--duration", "60s", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    records = out / "records.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (records.exists() and records.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    summary, lines = load(out)
    assert summary["status"] == "interrupted"
    assert summary["requests"]["ok"] >= 2 and len(lines) >= 2


async def _interrupt_when_sent(session, count: int, *, drain_timeout: float) -> float:
    """Run the session, interrupt once ``count`` requests went out; returns seconds from interrupt to return."""
    import asyncio

    from cvload.load.engine import DRAIN_TIMEOUT_S

    engine = await session.prepare()
    assert engine.drain_timeout == DRAIN_TIMEOUT_S == 5.0  # what a user's Ctrl-C gives in-flight requests
    engine.drain_timeout = drain_timeout
    run = asyncio.ensure_future(session.execute())
    while engine.state.sent < count and not run.done():
        await asyncio.sleep(0.01)
    started = time.monotonic()
    engine.interrupt()
    await run
    elapsed = time.monotonic() - started
    await session.finish()
    await session.close()
    return elapsed


@pytest.fixture(scope="module")
def stalling_server(tmp_path_factory):
    """A server whose requests stall for 30 s after their first chunk. On SIGTERM it would wait for them: it exits
    at once instead (--exit-timeout-secs=0)."""
    root = tmp_path_factory.mktemp("stalling")
    repo = build_repository(root, [EmulatedModel(profile=get_profile("fixed", {"fixed_interval_s": 30.0}))])
    with TritonServer(repo, workdir=root / "server", die_with_parent=True,
                      extra_args=["--exit-timeout-secs=0"]) as server:
        yield server


@pytest.mark.parametrize("shape", [{"num_tasks": 2, "ramp": 0.0}, {"rate": 20.0, "max_inflight": 1}])
async def test_interrupt_drains_briefly_even_with_stalled_requests(stalling_server, tmp_path, shape):
    from cvload.load.session import Session
    from cvload.settings.config import RunConfig

    config = RunConfig(server=[stalling_server.grpc_url], requests=50, out=str(tmp_path / "r"), metrics_url="none",
                       gpu_source="none", request_timeout=60.0, **shape)
    session = Session(config)
    drain = 0.5
    elapsed = await _interrupt_when_sent(session, 1, drain_timeout=drain)
    assert drain - 0.05 <= elapsed < drain + 3  # the stalled request got its drain time, not the 60 s timeout
    summary = session.summary
    assert summary["status"] == "interrupted"
    assert summary["requests"]["cancelled"] == session.engine.state.sent  # nothing sent after the stop
    assert session.exit_code() == 130  # nothing was measured


def test_server_dying_in_a_short_run_is_a_runtime_failure(start_emulator, tmp_path):
    emu = start_emulator([EmulatedModel(profile=get_profile("instant", {"crash_after": 3}))])
    out = tmp_path / "r"
    assert run_cli("--server", emu.grpc, "--requests", "5", "--out", str(out)) == 1
    summary, _ = load(out)
    assert summary["status"] == "aborted" and summary["errors"]["connection"] >= 1


def test_run_shorter_than_the_ramp_still_reports_concurrency(emulator, tmp_path):
    out = tmp_path / "r"
    assert run_cli("--server", emulator.grpc, "--model", "cosyvoice2_instant", "--num-tasks", "4",
                   "--requests", "3", "--out", str(out)) == 0
    summary, _ = load(out)
    assert summary["concurrency"]["achieved_max"] >= 1 and summary["concurrency"]["achieved_mean"] > 0


def test_failed_start_does_not_claim_the_results_folder(tmp_path):
    from cvload.triton.launcher import free_port

    out = tmp_path / "r"
    address = f"127.0.0.1:{free_port()}"
    assert run_cli("--server", address, "--out", str(out)) == 1
    assert run_cli("--server", address, "--out", str(out)) == 1  # a retry fails the same way, not as "used"


async def test_rate_change_applies_at_once(emulator, tmp_path):
    import asyncio

    from cvload.load.session import Session
    from cvload.results.writer import read_records
    from cvload.settings.config import RunConfig

    config = RunConfig(server=[emulator.grpc], model="cosyvoice2_instant", rate=0.1, arrival="constant",
                       duration=30.0, out=str(tmp_path / "r"), metrics_url="none", gpu_source="none")
    session = Session(config)
    engine = await session.prepare()
    run = asyncio.ensure_future(session.execute())
    # The rate is set as the open loop starts, which then waits for its first arrival (10 s away at the old rate)
    # without yielding in between: once it shows, the loop is in that wait.
    while engine.state.rate is None and not run.done():
        await asyncio.sleep(0.01)
    assert engine.state.sent == 0
    engine.set_rate(40.0)
    while engine.state.sent < 5 and not run.done():
        await asyncio.sleep(0.01)
    engine.stop()
    await run
    await session.finish()
    await session.close()
    sends = sorted(r.sent for r in read_records(tmp_path / "r"))
    assert len(sends) >= 5 and sends[0] - engine.state.started < 2.0 and sends[4] - sends[0] < 2.0
