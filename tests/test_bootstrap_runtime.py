"""``cvload bootstrap --target python-runtime``: CosyVoice's own server in its Docker image. Docker and a GPU
are not here, so it is tested to that boundary: the exact plans, config errors, the preflight refusal without a
docker binary, and status/doctor against the real emulated runtime (and against a Triton server, which fails)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cvload.emulator import get_profile
from cvload.emulator.runtime_server import RuntimeServer
from server_bootstrap.cli import main
from server_bootstrap.config import PINNED_COMMIT, load_config
from server_bootstrap.layout import Layout
from server_bootstrap.state import ServerRecord, State


@pytest.fixture(scope="module")
def runtime() -> Iterator[RuntimeServer]:
    with RuntimeServer(get_profile("fixed"), max_conc=4, die_with_parent=True) as server:
        yield server


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text('target = "python-runtime"\n' + text)
    return path


@pytest.mark.parametrize("server", ["grpc", "fastapi"])
def test_plan_lists_the_exact_commands(tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]) -> None:
    w, m = tmp_path / "w", tmp_path / "w" / "models" / "CosyVoice2-0.5B"
    cfg = write(tmp_path, f'[runtime]\nserver = "{server}"\nport = 50010\nmax_conc = 8\n')
    assert main(["plan", "--config", str(cfg), "--workdir", str(w)]) == 0
    out = capsys.readouterr().out
    server_args = "--max_conc 8 " if server == "grpc" else ""  # the FastAPI server has no --max_conc
    expected = [
        f"target python-runtime, server {server} on port 50010, image cosyvoice:v1.0",
        f"2. source    [pending] CosyVoice source at the pinned commit\n"
        f"     $ git clone --recursive https://github.com/FunAudioLLM/CosyVoice.git {w}/CosyVoice\n"
        f"     $ git -C {w}/CosyVoice checkout --detach {PINNED_COMMIT}\n",
        f"3. download  [pending] model download (resumable)\n"
        f"     $ modelscope download --model iic/CosyVoice2-0.5B --local_dir {m}\n4. image",
        f"     $ docker build -t cosyvoice:v1.0 {w}/CosyVoice/runtime/python\n",
        "     $ docker rm -f cvload-cosyvoice-runtime\n",
        f"     $ docker run -d --name cvload-cosyvoice-runtime --runtime=nvidia -p 50010:50010 -v {m}:{m}:ro "
        f"cosyvoice:v1.0 /bin/bash -c 'cd /opt/CosyVoice/CosyVoice/runtime/python/{server} && python3 server.py "
        f"--port 50010 {server_args}--model_dir {m} && sleep infinity'\n",
    ]
    for text in expected:
        assert text in out, text
    assert "huggingface-cli" not in out and "spk2info" not in out and "trtllm" not in out  # no TRT-LLM parts
    assert "5. container [will redo: after download, image]" in out
    assert not w.exists()  # plan runs nothing


BAD = {
    "unknown server kind": ('[runtime]\nserver = "flask"\n', "[runtime] server: 'flask' is not a server",
                            "use grpc (runtime/python/grpc/server.py) or fastapi"),
    "bad port": ("[runtime]\nport = 70000\n", "[runtime] port: 70000 is not a port number", "default is 50000"),
    "no port": ("[runtime]\nport = 0\n", "[runtime] port: 0 is not a port number", "default is 50000"),
    "max_conc": ("[runtime]\nmax_conc = 0\n", "[runtime] max_conc: must be positive", None),
    "a typo": ("[runtime]\nmaxconc = 4\n", "maxconc", None),
}


@pytest.mark.parametrize("toml, message, hint", BAD.values(), ids=BAD.keys())
def test_config_errors_exit_2(tmp_path: Path, toml: str, message: str, hint: str | None,
                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, toml)
    assert main(["plan", "--config", str(cfg), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err and "Traceback" not in err
    if hint:
        assert hint in err


def test_preflight_reports_a_missing_docker_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no docker, git or modelscope on PATH
    cfg = write(tmp_path, "[runtime]\nport = 50011\n")
    assert main(["up", "--config", str(cfg), "--workdir", str(tmp_path / "w")]) == 1
    out, err = capsys.readouterr()
    assert "FAIL  docker " in out and "`docker` not on PATH" in out
    assert "install Docker Engine and the NVIDIA Container Toolkit" in out
    assert "docker compose" not in out  # this target runs no compose
    assert "preflight:" in err and "docker" in err and "Traceback" not in err
    state = State.load(tmp_path / "w" / "bootstrap-state.json")
    assert state.stage("python-runtime", "preflight").status == "failed"
    assert state.stage("python-runtime", "source") is None  # nothing ran past the refusal


def record(tmp_path: Path, cfg: Path, server: str, port: int) -> Path:
    """A deployment whose container runs: what ``up`` records after ``docker run -d`` (the emulated runtime
    stands in for the container)."""
    w = tmp_path / "w"
    config = load_config(cfg, {"workdir": str(w)})
    layout = Layout(w, config)
    state = State.load(layout.state_path)
    state.target, state.config = config.target, config.to_dict()
    state.servers = [ServerRecord(index=0, host="127.0.0.1", http_port=port if server == "fastapi" else 0,
                                  grpc_port=port if server == "grpc" else 0, metrics_port=0, gpus=[],
                                  log=str(layout.server_log(0)), model_repository=str(layout.model_dir),
                                  container="cvload-cosyvoice-runtime", runtime=server)]
    state.servers_target = config.target
    state.save()
    return w


@pytest.mark.parametrize("server", ["grpc", "fastapi"])
def test_status_and_doctor_pass_against_the_runtime(runtime: RuntimeServer, tmp_path: Path, server: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    port = runtime.grpc_port if server == "grpc" else runtime.http_port
    assert port is not None
    cfg = write(tmp_path, f'[runtime]\nserver = "{server}"\nport = {port}\n')
    w = record(tmp_path, cfg, server, port)
    assert main(["status", "--workdir", str(w)]) == 0
    out = capsys.readouterr().out
    assert f"server 0: ready (container cvload-cosyvoice-runtime, runtime {server})" in out
    assert "--api cosyvoice --protocol " + ("grpc" if server == "grpc" else "http") in out
    assert main(["doctor", "--workdir", str(w)]) == 0
    out = capsys.readouterr().out
    assert "ok    runtime api" in out and "CosyVoice's runtime" in out and "all checks passed" in out
    # and an arbitrary server, given by address
    assert main(["doctor", "--config", str(cfg), "--server", f"127.0.0.1:{port}"]) == 0


@pytest.mark.parametrize("server", ["grpc", "fastapi"])
def test_status_and_doctor_fail_against_triton(emulator, tmp_path: Path, server: str,  # noqa: ANN001
                                               capsys: pytest.CaptureFixture[str]) -> None:
    port = int((emulator.grpc if server == "grpc" else emulator.http).rsplit(":", 1)[1])
    cfg = write(tmp_path, f'[runtime]\nserver = "{server}"\nport = {port}\n')
    w = record(tmp_path, cfg, server, port)
    assert main(["status", "--workdir", str(w)]) == 1
    out = capsys.readouterr().out
    assert "not ready" in out and "this port speaks Triton, not the CosyVoice runtime" in out
    assert main(["doctor", "--workdir", str(w)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  runtime api" in out and "this port speaks Triton, not the CosyVoice runtime" in out
    assert "[runtime] port" in out and "docker logs cvload-cosyvoice-runtime" in out


def test_doctor_when_nothing_listens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cvload.triton.launcher import free_port

    port = free_port()
    cfg = write(tmp_path, f"[runtime]\nport = {port}\n")
    assert main(["doctor", "--config", str(cfg), "--server", f"127.0.0.1:{port}"]) == 1
    out = capsys.readouterr().out
    assert "refuses connections" in out and "cvload bootstrap logs server" in out


def test_down_removes_the_recorded_container(runtime: RuntimeServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, f"[runtime]\nport = {runtime.grpc_port}\n")
    w = record(tmp_path, cfg, "grpc", int(runtime.grpc_port or 0))
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker here: down must say it could not remove it
    assert main(["down", "--workdir", str(w)]) == 1
    err = capsys.readouterr().err
    assert "`docker` not found" in err
    assert State.load(w / "bootstrap-state.json").servers[0].container == "cvload-cosyvoice-runtime"  # kept


def test_logs_of_the_container_are_dockers(runtime: RuntimeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, f"[runtime]\nport = {runtime.grpc_port}\n")
    w = record(tmp_path, cfg, "grpc", int(runtime.grpc_port or 0))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["logs", "server", "-n", "5", "--workdir", str(w)]) == 1  # no docker here: said, not a traceback
    out, err = capsys.readouterr()
    assert "==> docker logs --tail 5 cvload-cosyvoice-runtime <==" in out and "`docker` not found" in err
