"""The whole bootstrap flow on the emulator target, against real tritonserver processes: ``up`` leaves servers
running, and later, separate invocations (``status``, ``logs``, ``doctor``, ``down``) find, diagnose and stop
them; interrupted and killed ``up`` runs resume; changed inputs are redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvload import subprocesses
from cvload.triton import launcher, stub_python
from cvload.triton.launcher import find_tritonserver
from server_bootstrap.cli import main

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """A separate invocation, as a user would type it."""
    return clis(args, timeout=timeout)[0]


def clis(*invocations: tuple[str, ...], timeout: float = 90) -> list[subprocess.CompletedProcess[str]]:
    """Separate invocations run side by side (several only where they just read the deployment), in order."""
    procs = [subprocess.Popen([sys.executable, "-m", "server_bootstrap", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in invocations]
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def state(workdir: Path) -> dict:
    return json.loads((workdir / "bootstrap-state.json").read_text())


def write_config(tmp_path: Path, extra: str = "", *, top: str = "") -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(f'target = "emulator"\n{top}\n[server]\nhttp_port = 0\ngrpc_port = 0\nmetrics_port = 0\n'
                    f'[emulator]\nprofile = "instant"\n{extra}')
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A deployment folder whose servers are stopped after the test, whatever happened."""
    w = tmp_path / "deploy"
    yield w
    if (w / "bootstrap-state.json").exists():
        for rec in state(w).get("servers", []):
            if rec.get("pid"):
                subprocesses.end(rec["pid"], started=rec.get("start_time"), grace=5, sigterm="leader")


def test_up_status_logs_doctor_down_across_invocations(tmp_path: Path, workdir: Path) -> None:
    cfg = write_config(tmp_path)
    up = cli("up", "--config", str(cfg), "--workdir", str(workdir))
    assert up.returncode == 0, up.stdout + up.stderr
    assert "[5/7] repo" in up.stdout and "[6/7] launch" in up.stdout and "[2/7]" not in up.stdout
    assert "cosyvoice2 streaming via grpc" in up.stdout and "first chunk" in up.stdout
    rec = state(workdir)["servers"][0]
    assert subprocesses.alive(rec["pid"], rec["start_time"])  # the server outlived `up`
    grpc = f"127.0.0.1:{rec['grpc_port']}"
    assert f"endpoints: {grpc}" in up.stdout and f"try: cvload run --server {grpc} --mode streaming" in up.stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{rec['http_port']}/v2/trace/setting", timeout=5) as resp:
        trace = json.loads(resp.read())  # traceable by `cvload run --triton-trace`, tracing off meanwhile
    assert trace["trace_file"].endswith("triton_trace.json") and trace["trace_level"] == ["OFF"]

    where = ("--workdir", str(workdir))
    status, logs, smoke_log, paths, bad, doctor = clis(
        ("status", *where), ("logs", "server", *where, "-n", "200"), ("logs", "smoke", *where),
        ("logs", "--path", *where), ("logs", "nope", *where), ("doctor", *where))
    assert status.returncode == 0, status.stderr
    assert f"server 0: ready (pid {rec['pid']}) grpc {grpc}" in status.stdout
    assert "repo      done" in status.stdout and "launch    done" in status.stdout

    assert logs.returncode == 0 and f"Started GRPCInferenceService at {grpc}" in logs.stdout
    assert "first chunk" in smoke_log.stdout
    assert str(workdir / "logs" / "server0.log") in paths.stdout.split()
    assert bad.returncode == 2 and "available:" in bad.stderr and "preflight" in bad.stderr

    assert doctor.returncode == 0, doctor.stdout
    assert "HTTP /infer answers 501" in doctor.stdout and "all checks passed" in doctor.stdout

    again = cli("up", "--config", str(cfg), "--workdir", str(workdir))
    assert again.returncode == 0, again.stderr
    assert "[5/7] repo: done, skipped" in again.stdout and "[6/7] launch: done, skipped" in again.stdout
    assert state(workdir)["servers"][0]["pid"] == rec["pid"]

    down = cli("down", "--workdir", str(workdir))
    assert down.returncode == 0 and "stopped 1 server(s)" in down.stdout
    assert not subprocesses.alive(rec["pid"], rec["start_time"])
    assert not subprocesses.shm_regions(rec["shm_prefix"])
    after = cli("status", "--workdir", str(workdir))
    assert after.returncode == 1 and "none running" in after.stdout and "launch    pending" in after.stdout
    assert "nothing was running" in cli("down", "--workdir", str(workdir)).stdout


def test_a_prompt_without_samples_fails_the_smoke_stage(tmp_path: Path, workdir: Path) -> None:
    """A zero-frame 8 kHz prompt: ``up`` records the smoke stage as failed and names the setting and the file."""
    import numpy as np
    import soundfile as sf

    wav = tmp_path / "empty.wav"
    sf.write(str(wav), np.zeros(0, dtype=np.float32), 8000)
    cfg = write_config(tmp_path, f'[smoke]\nprompt_wav = "{wav}"\nprompt_text = "hi"\n')
    up = cli("up", "--config", str(cfg), "--workdir", str(workdir))
    assert up.returncode == 2, up.stdout + up.stderr
    assert "Traceback" not in up.stderr
    assert f"[smoke] prompt_wav: prompt audio {wav} has no samples" in up.stderr
    smoke = state(workdir)["stages"]["emulator"]["smoke"]
    assert smoke["status"] == "failed" and "has no samples" in smoke["detail"]
    assert "FAILED: [smoke] prompt_wav" in (workdir / "logs" / "smoke.log").read_text()
    assert cli("down", "--workdir", str(workdir)).returncode == 0


def test_a_stage_raising_an_unexpected_error_is_marked_failed(tmp_path: Path, workdir: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A bug in a stage (here an injected ValueError while the repository is built): ``up`` still records the
    stage as failed and says which stage, what and where its log is, with no traceback."""
    from server_bootstrap import model_repository

    def bug(*args: object, **kwargs: object) -> None:
        raise ValueError("an injected bug")

    monkeypatch.setattr(model_repository, "build_emulator_repository", bug)
    assert main(["up", "--config", str(write_config(tmp_path)), "--workdir", str(workdir)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "repo failed unexpectedly (ValueError: an injected bug)" in err
    assert f"stage log {workdir / 'logs' / 'repo.log'}" in err
    repo = state(workdir)["stages"]["emulator"]["repo"]
    assert repo["status"] == "failed" and repo["detail"] == "ValueError: an injected bug"
    assert "FAILED: ValueError: an injected bug" in (workdir / "logs" / "repo.log").read_text()


def test_two_offline_servers_and_a_changed_knob(tmp_path: Path, workdir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, "[triton]\nbls_instances = 1\n", top='mode = "offline"')
    up = cli("up", "--config", str(cfg), "--workdir", str(workdir), "--gpus", "0,1")
    assert up.returncode == 0, up.stdout + up.stderr
    first = state(workdir)["servers"]
    assert len(first) == 2 and len({r["grpc_port"] for r in first}) == 2
    grpcs = [f"127.0.0.1:{r['grpc_port']}" for r in first]
    assert f"endpoints: {grpcs[0]} {grpcs[1]}" in up.stdout
    assert f"--server {grpcs[0]} --server {grpcs[1]} --mode offline" in up.stdout
    assert up.stdout.count("cosyvoice2 offline via grpc") == 2

    cfg.write_text(cfg.read_text().replace("bls_instances = 1", "bls_instances = 2"))
    assert main(["plan", "--config", str(cfg), "--workdir", str(workdir), "--gpus", "0,1"]) == 0
    plan = capsys.readouterr().out
    assert "5. repo      [inputs changed: will redo]" in plan and "6. launch    [will redo: after repo]" in plan
    again = cli("up", "--config", str(cfg), "--workdir", str(workdir), "--gpus", "0,1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "stopped server 0" in again.stdout and "stopped server 1" in again.stdout
    second = state(workdir)["servers"]
    assert all(not subprocesses.alive(r["pid"], r["start_time"]) for r in first)
    assert all(subprocesses.alive(r["pid"], r["start_time"]) for r in second)
    # the same servers also diagnosed for streaming clients: the mismatch and its fix
    doctor, wrong = clis(("doctor", "--workdir", str(workdir)), ("doctor", "--workdir", str(workdir), "--mode",
                                                                  "streaming"))
    assert doctor.returncode == 0, doctor.stdout
    assert doctor.stdout.count("cosyvoice2: 2 instance(s)") == 2
    assert "HTTP /infer accepts requests" in doctor.stdout
    assert wrong.returncode == 1
    assert "is not decoupled (offline only) but clients will call it streaming" in wrong.stdout
    assert "fix:   redeploy with mode = \"streaming\"" in wrong.stdout
    assert cli("down", "--workdir", str(workdir)).stdout.strip() == "stopped 2 server(s)"


@pytest.fixture
def gated_tritonserver(tmp_path: Path) -> tuple[Path, Path]:
    """A tritonserver that starts only once a gate file exists, so a test can interrupt ``up`` mid-launch.

    It is the real bundled binary behind a two-line wrapper, with the Python backend laid out next to it.
    """
    real = find_tritonserver()
    if real.bundle_root is None:
        pytest.skip("needs the nvidia-pytriton bundle")  # pragma: no cover
    root = tmp_path / "gated"
    (root / "bin").mkdir(parents=True)
    # The Python backend and its stub's python3 and libpython as the launcher sets them up for the bundle.
    python = stub_python.choose()
    launcher._prepare_bundle_backends(real, root, python)
    stub_env = (f'export PATH="{launcher._python3_dir(python.python, root)}:$PATH" '
                f'LD_LIBRARY_PATH="{root / "stub-lib"}:{python.libdir}:{real.libs}:$LD_LIBRARY_PATH"')
    gate = tmp_path / "gate"
    wrapper = root / "bin" / "tritonserver"
    wrapper.write_text(f'#!/bin/sh\n{stub_env}\nwhile [ ! -e "{gate}" ]; do sleep 0.02; done\n'
                       f'exec "{real.binary}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, gate


def start_up(cfg: Path, workdir: Path) -> subprocess.Popen[str]:
    # Ctrl-C as a terminal delivers it: a suite started in the background by a shell script (`make test &`) runs
    # with SIGINT ignored, which every child inherits, and Python then never raises KeyboardInterrupt.
    return subprocess.Popen([sys.executable, "-m", "server_bootstrap", "up", "--config", str(cfg), "--workdir",
                             str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def launching(workdir: Path) -> bool:
    try:
        s = state(workdir)
    except (FileNotFoundError, ValueError):
        return False
    return s["stages"].get("emulator", {}).get("launch", {}).get("status") == "running" and bool(s["servers"])


def test_interrupted_and_killed_up_resume(tmp_path: Path, workdir: Path, gated_tritonserver: tuple[Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    wrapper, gate = gated_tritonserver
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("metrics_port = 0\n", f'metrics_port = 0\ntritonserver = "{wrapper}"\n'))

    # 1. Ctrl-C while the server starts: the half-started server is stopped, the stage marked interrupted
    up = start_up(cfg, workdir)
    subprocesses.wait_until(lambda: launching(workdir), 20, what="launch to start")
    pid = state(workdir)["servers"][0]["pid"]
    up.send_signal(signal.SIGINT)
    out, err = up.communicate(timeout=60)
    assert up.returncode == 130, out + err
    assert "interrupted" in err and "Traceback" not in err
    assert state(workdir)["stages"]["emulator"]["launch"]["status"] == "interrupted"
    assert state(workdir)["servers"] == [] and not subprocesses.alive(pid, None)

    # 2. kill -9 while the server starts: the orphan stays recorded, the stage stays "running"
    up = start_up(cfg, workdir)
    subprocesses.wait_until(lambda: launching(workdir), 20, what="launch to start again")
    orphan = state(workdir)["servers"][0]
    up.kill()
    up.communicate(timeout=30)
    assert subprocesses.alive(orphan["pid"], orphan["start_time"])
    assert main(["plan", "--config", str(cfg), "--workdir", str(workdir)]) == 0
    plan = capsys.readouterr().out
    assert "5. repo      [done]" in plan and "6. launch    [interrupted: will redo]" in plan

    # 3. the next up keeps the repository, stops the orphan and launches again
    gate.touch()
    done = cli("up", "--config", str(cfg), "--workdir", str(workdir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[5/7] repo: done, skipped" in done.stdout
    assert "[6/7] launch: tritonserver in the background (interrupted: will redo)" in done.stdout
    assert f"stopped server 0 (pid {orphan['pid']})" in done.stdout
    assert not subprocesses.alive(orphan["pid"], orphan["start_time"])
    fresh = state(workdir)["servers"][0]
    assert fresh["pid"] != orphan["pid"] and subprocesses.alive(fresh["pid"], fresh["start_time"])
    assert "first chunk" in done.stdout
    assert cli("down", "--workdir", str(workdir)).returncode == 0


def test_doctor_on_unreachable_and_mismatched_servers(emulator, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    from cvload.triton.launcher import free_port

    port = free_port()
    assert main(["doctor", "--server", f"127.0.0.1:{port}"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  http port" in out and "no server listens there" in out and "fix:" in out
    server = emulator.server
    args = ["doctor", "--server", server.http_url, "--grpc-port", str(server.grpc_port), "--metrics-port",
            str(server.metrics_port), "--workdir", "/nonexistent-cvload-workdir"]
    assert main([*args, "--model", "cosyvoice2_offline", "--mode", "offline"]) == 0
    assert "all checks passed" in capsys.readouterr().out
    assert main([*args, "--model", "cosyvoice2", "--mode", "offline"]) == 1
    out = capsys.readouterr().out
    assert "cause: HTTP 501 on infer = a streaming-only deployment" in out
    assert "models          " in out and "cosyvoice2_faulty READY" in out


def test_doctor_names_a_model_stuck_loading(tmp_path: Path) -> None:
    """Triton opens no port until every model loaded: doctor reads the log of the live process instead."""
    from cvload.settings.address import Ports
    from cvload.triton.launcher import TritonServer
    from server_bootstrap import doctor

    repo = tmp_path / "repo" / "hang"
    (repo / "1").mkdir(parents=True)
    (repo / "1" / "model.py").write_text(
        "import threading\n\nclass TritonPythonModel:\n    def initialize(self, args):\n"
        "        threading.Event().wait()  # a stub that never finishes starting\n\n"
        "    def execute(self, requests):\n        return []\n")
    (repo / "config.pbtxt").write_text(
        'name: "hang"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        "instance_group [ { count: 1, kind: KIND_CPU } ]\n")

    class NoWait(TritonServer):
        def wait_ready(self) -> None:  # start the real server, diagnose it while it loads
            return None

    server = NoWait(tmp_path / "repo", workdir=tmp_path / "srv", stop_timeout=3)
    server.start()
    try:
        assert server.process is not None and server.log_path is not None
        log = server.log_path
        subprocesses.wait_until(lambda: "loading: hang:1" in log.read_text(errors="replace"), 20,
                           what="the model to start loading")
        ports = Ports(int(server.http_port), int(server.grpc_port), int(server.metrics_port))
        ep = doctor.Endpoint("127.0.0.1", ports,
                             pid=server.process.pid, start_time=subprocesses.start_time(server.process.pid), log=log)
        findings = doctor.diagnose(ep, doctor.Expectations())
        http = next(f for f in findings if f.name == "http port")
        assert http.status == "FAIL" and "still loading: hang" in http.cause
        assert "Python-backend stub that cannot start" in http.fix and str(log) in http.fix
        os.kill(server.process.pid, 0)
    finally:
        server.stop()


def test_gpu_metrics_as_an_h100_server_reports_them() -> None:
    """Lines scraped from the bundled tritonserver on an H100 (--allow-gpu-metrics=true), read by
    cvload.telemetry.prometheus into doctor's memory-headroom finding."""
    from cvload.telemetry.prometheus import parse_metrics
    from server_bootstrap import doctor

    text = """# TYPE nv_gpu_memory_total_bytes gauge
nv_energy_consumption{gpu_uuid="GPU-299a1631-9295-7353-18d6-20673fb6dd08"} 260.284
nv_gpu_utilization{gpu_uuid="GPU-299a1631-9295-7353-18d6-20673fb6dd08"} 0
nv_gpu_memory_total_bytes{gpu_uuid="GPU-299a1631-9295-7353-18d6-20673fb6dd08"} 85520809984
nv_gpu_memory_used_bytes{gpu_uuid="GPU-299a1631-9295-7353-18d6-20673fb6dd08"} 618659840
nv_gpu_power_limit{gpu_uuid="GPU-299a1631-9295-7353-18d6-20673fb6dd08"} 700
nv_inference_count{model="cosyvoice2",version="1"} 0
"""
    gpus = parse_metrics(text).gpus
    findings = doctor.gpu_findings(gpus, "http://h100:8002/metrics", doctor.Expectations(target="trtllm"))
    assert [(f.name, f.status) for f in findings] == [("gpu memory", "ok")]
    assert findings[0].detail == "GPU-299a1631: 0.6 of 79.6 GiB used, 79.1 GiB free, utilization 0%"
    nearly_full = {uuid: dict(g, mem_used_bytes=g["mem_total_bytes"] - 2**29) for uuid, g in gpus.items()}
    tight = doctor.gpu_findings(nearly_full, "http://h100:8002/metrics", doctor.Expectations(target="trtllm"))
    assert tight[0].status == "warn" and "little headroom" in tight[0].cause
    none = doctor.gpu_findings({}, "http://cpu:8002/metrics", doctor.Expectations(target="trtllm"))
    assert none[0].status == "FAIL" and "no nv_gpu_* metrics at http://cpu:8002/metrics" in none[0].detail


def test_smoke_sends_through_cvload_targets(emulator) -> None:  # noqa: ANN001
    """The smoke request on the real server: an offline answer timed, a mode mismatch and an unknown model named."""
    from cvload.errors import ServerError
    from server_bootstrap import smoke

    prompt, text = smoke.builtin_prompt()
    result = smoke.smoke_request(emulator.grpc, "cosyvoice2_offline", "offline", text="Hello there.", prompt=prompt,
                                 prompt_text=text, timeout=30)
    assert (result.mode, result.chunks, result.first_chunk_s) == ("offline", 1, None) and result.audio_s > 0
    assert result.line().startswith(f"cosyvoice2_offline offline via grpc {emulator.grpc}: 1 chunk(s)")
    with pytest.raises(ServerError, match=r"smoke: model 'cosyvoice2_offline' on .* is not decoupled") as info:
        smoke.smoke_request(emulator.grpc, "cosyvoice2_offline", "streaming", text="Hi.", prompt=None,
                            prompt_text=None, timeout=30)
    assert "run `cvload bootstrap up` again" in (info.value.hint or "")
    with pytest.raises(ServerError, match=r"smoke: model 'nope' not found on .*cosyvoice2_offline") as info:
        smoke.smoke_request(emulator.grpc, "nope", "streaming", text="Hi.", prompt=None, prompt_text=None, timeout=30)
    assert info.value.hint == "cvload bootstrap doctor"
