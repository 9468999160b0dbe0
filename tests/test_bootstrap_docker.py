"""``--docker``: the compose file (NVIDIA's Triton TRT-LLM image, ports, shm, GPU ids, the work folder mounted
at the same path) and the preflight that refuses to run it where no Docker engine answers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cvload.errors import UsageError
from cvload.triton.launcher import free_port
from server_bootstrap import compose
from server_bootstrap.cli import main
from server_bootstrap.config import load_config
from server_bootstrap.layout import Layout


def test_compose_file_for_two_gpus(tmp_path: Path) -> None:
    checkout = tmp_path / "elsewhere" / "CosyVoice"
    cfg = tmp_path / "deploy.toml"
    cfg.write_text(f'[source]\npath = "{checkout}"\n[docker]\nenabled = true\nshm_size = "2gb"\n')
    config = load_config(cfg, {"server.gpus": [2, 3]})
    w = tmp_path / "w"
    layout = Layout(w, config)
    spec = compose.compose_spec(config, layout)
    assert set(spec["services"]) == {"triton0", "triton1", "build"}
    t1 = spec["services"]["triton1"]
    assert t1["image"] == "nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3" and t1["shm_size"] == "2gb"
    assert t1["ports"] == ["8010:8010", "8011:8011", "8012:8012"]
    assert t1["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["3"]
    assert t1["volumes"] == [f"{w}:{w}", f"{checkout}:{checkout}"]  # absolute paths in the configs stay valid
    assert t1["command"][:2] == ["tritonserver", f"--model-repository={w}/model_repository"]
    assert spec["services"]["build"]["profiles"] == ["build"]  # `up -d` never starts it
    written = json.loads(compose.write(config, layout).read_text())  # JSON is YAML: what docker compose reads
    assert {k: v for k, v in written.items() if not k.startswith("x-")} == spec
    assert "cvload bootstrap up" in written["x-cvload"]
    assert compose.in_container(layout, ["trtllm-build", "--x"]) == [
        "docker", "compose", "-f", f"{w}/docker-compose.yaml", "run", "--rm", "build", "trtllm-build", "--x"]


def test_hostile_values_cannot_break_the_compose_file(tmp_path: Path) -> None:
    config = load_config(None, {"docker.enabled": True, "docker.image": 'img"\n  evil: [1'})
    text = compose.write(config, Layout(tmp_path, config)).read_text()
    assert '"image": "img\\"\\n  evil: [1"' in text
    assert "\n  evil" not in text
    assert json.loads(text)["services"]["triton0"]["image"] == 'img"\n  evil: [1'


def test_docker_mode_needs_fixed_ports() -> None:
    with pytest.raises(UsageError, match="docker mode publishes fixed ports"):
        load_config(None, {"docker.enabled": True, "server.http_port": 0})


def _engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_up_docker_refuses_without_an_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if _engine_answers():
        pytest.skip("a Docker engine answers here: the refusal cannot be observed")
    ports = [free_port() for _ in range(3)]
    cfg = tmp_path / "deploy.toml"
    cfg.write_text(f"[server]\nhttp_port = {ports[0]}\ngrpc_port = {ports[1]}\nmetrics_port = {ports[2]}\n")
    code = main(["up", "--docker", "--config", str(cfg), "--workdir", str(tmp_path / "w")])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    if shutil.which("docker") is None:
        assert "FAIL  docker " in out
    else:
        engine = next(line for line in out.splitlines() if "docker engine" in line or "docker compose" in line)
        assert engine.split()[0] == "FAIL"
        assert "docker" in err
    assert "skip  tensorrt_llm" in out and "runs inside nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3" in out
