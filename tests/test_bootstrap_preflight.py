"""Preflight on this machine reports exactly what is missing (and how to fix it); the GPU stages stop with a
clear message where TensorRT-LLM is absent. Expectations are probed independently, so the same tests hold on a
GPU machine inside NVIDIA's container."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest

from cvload.errors import CvloadError
from cvload.triton.launcher import free_ports
from server_bootstrap.cli import main
from server_bootstrap.config import load_config
from server_bootstrap.layout import Layout
from server_bootstrap.pipeline import context
from server_bootstrap.stages import Build, StageLog, require_tensorrt_llm


def free_ports_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "deploy.toml"
    ports = free_ports(3)
    path.write_text(extra + f"\n[server]\nhttp_port = {ports[0]}\ngrpc_port = {ports[1]}\nmetrics_port = {ports[2]}\n")
    return path


def report_line(out: str, name: str) -> str:
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and " ".join(parts[1:1 + len(name.split())]) == name:
            return line
    raise AssertionError(f"no preflight line for {name!r} in:\n{out}")


def test_trtllm_preflight_reports_what_this_machine_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = tmp_path / "w"
    code = main(["up", "--config", str(free_ports_config(tmp_path)), "--workdir", str(w)])
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    has_trtllm = importlib.util.find_spec("tensorrt_llm") is not None
    has_nvml = importlib.util.find_spec("pynvml") is not None
    expectations = {
        "tensorrt_llm": not has_trtllm,
        "trtllm-build": shutil.which("trtllm-build") is None,
        "git": shutil.which("git") is None,
        "huggingface-cli": shutil.which("huggingface-cli") is None,
        "modelscope": shutil.which("modelscope") is None,
        "curl": shutil.which("curl") is None,
        "disk": False,
        "/dev/shm": False,
    }
    if not has_nvml:
        expectations["nvml"] = True
        expectations["driver"] = not Path("/proc/driver/nvidia/version").exists()
    for name, should_fail in expectations.items():
        line = report_line(out, name)
        assert line.split()[0] == ("FAIL" if should_fail else "ok"), line
    if not has_trtllm:
        assert "fix:   run inside nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3" in out
    if not has_nvml:
        assert "fix:   pip install 'cvload[gpu]' (nvidia-ml-py)" in out
    if not Path("/opt/tritonserver/backends/tensorrtllm").is_dir():
        assert report_line(out, "tritonserver").split()[0] == "FAIL" and "no TensorRT-LLM backend" in out
    failed = [name for name, bad in expectations.items() if bad]
    assert code == 1
    assert "preflight:" in err and all(name in err for name in failed) and "Traceback" not in err
    # nothing after preflight ran, and the state says so
    assert not (w / "CosyVoice").exists()
    state = json.loads((w / "bootstrap-state.json").read_text())
    assert state["stages"]["trtllm"]["preflight"]["status"] == "failed"


def test_busy_port_fails_preflight_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "deploy.toml"
        cfg.write_text(f'target = "emulator"\n[server]\nhttp_port = {port}\ngrpc_port = 0\nmetrics_port = 0\n')
        code = main(["up", "--config", str(cfg), "--workdir", str(tmp_path / "w")])
    out = capsys.readouterr().out
    assert code == 1
    line = report_line(out, "ports server 0")
    assert line.split()[0] == "FAIL" and f"in use: http {port}" in line
    assert "fix:   stop what listens there" in out
    assert "skip  gpu" in out  # the emulator needs no GPU


def test_missing_tensorrt_llm_stops_the_build_stage_clearly(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt_llm") is not None:
        require_tensorrt_llm()  # inside NVIDIA's container: nothing to complain about
        return
    with pytest.raises(CvloadError) as info:
        require_tensorrt_llm()
    assert "tensorrt_llm is not importable" in info.value.message
    assert "nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3" in (info.value.hint or "")
    assert "--target emulator" in (info.value.hint or "")
    # the stage itself refuses before touching anything
    config = load_config()
    layout = Layout(tmp_path / "w", config)
    build = Build(context(config, layout, sys.stdout))
    layout.engine_dir.mkdir(parents=True)
    (layout.engine_dir / "keep").write_text("an earlier engine")
    with pytest.raises(CvloadError, match="tensorrt_llm is not importable"):
        build.run(StageLog(layout.stage_log("build"), sys.stdout))
    assert (layout.engine_dir / "keep").exists()
