"""``cvload bootstrap plan``: every stage with its exact commands and whether it is done; it runs nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server_bootstrap.cli import main
from server_bootstrap.config import PINNED_COMMIT, load_config
from server_bootstrap.layout import Layout
from server_bootstrap.pipeline import context
from server_bootstrap.stages import Download, build_stages


def plan(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["plan", *args]) == 0
    return capsys.readouterr().out


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    return path


def test_default_plan_lists_the_exact_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = tmp_path / "w"
    out = plan(capsys, "--workdir", str(w))
    expected = [
        f"$ git clone --recursive https://github.com/FunAudioLLM/CosyVoice.git {w}/CosyVoice",
        f"$ git -C {w}/CosyVoice checkout --detach {PINNED_COMMIT}",
        f"$ git -C {w}/CosyVoice submodule update --init --recursive",
        f"$ huggingface-cli download yuekai/cosyvoice2_llm --local-dir {w}/models/cosyvoice2_llm",
        f"$ modelscope download --model iic/CosyVoice2-0.5B --local_dir {w}/models/CosyVoice2-0.5B",
        f"$ curl --location --fail --retry 3 --continue-at - --output {w}/models/CosyVoice2-0.5B/spk2info.pt.part "
        "https://raw.githubusercontent.com/qi-hua/async_cosyvoice/main/CosyVoice2-0.5B/spk2info.pt",
        f"$ python3 {w}/CosyVoice/runtime/triton_trtllm/scripts/convert_checkpoint.py --model_dir "
        f"{w}/models/cosyvoice2_llm --output_dir {w}/trt_weights_bfloat16 --dtype bfloat16 --tp_size 1 --pp_size 1",
        f"$ trtllm-build --checkpoint_dir {w}/trt_weights_bfloat16 --output_dir {w}/trt_engines_bfloat16 "
        "--max_batch_size 16 --max_num_tokens 32768 --gemm_plugin bfloat16",
        "decoupled_mode=true", "bls_instance_num=4", "kv_cache_free_gpu_mem_fraction=0.5",
        "max_tokens_in_paged_kv_cache=2560", f"engine_dir={w}/trt_engines_bfloat16",
        f"--model-repository={w}/model_repository --http-address=0.0.0.0",
        "--http-port=8000 --grpc-port=8001 --metrics-port=8002", "--allow-gpu-metrics=true",
        "CUDA_VISIBLE_DEVICES=0", "one streaming request (prompt + text) over gRPC stream",
    ]
    for line in expected:
        assert line in out, line
    for n, name in enumerate(("preflight", "source", "download", "build", "repo", "launch", "smoke"), 1):
        assert f"{n}. {name}" in out
    assert "[pending]" in out and "[will redo: after source, download]" in out
    assert not w.exists()  # plan runs nothing, writes nothing


def test_tensor_parallel_multi_gpu_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, '[model]\ndtype = "float16"\n[engine]\ntp_size = 2\nmax_batch_size = 32\n'
                          "max_num_tokens = 8192\n[triton]\nmax_batch_size = 32\n")
    w = tmp_path / "w"
    out = plan(capsys, "--config", str(cfg), "--workdir", str(w), "--gpus", "0,1,2,3")
    assert "2 server(s)" in out
    assert "--dtype float16 --tp_size 2 --pp_size 1" in out
    assert "--max_batch_size 32 --max_num_tokens 8192 --gemm_plugin float16" in out
    assert "--http-port=8000 --grpc-port=8001 --metrics-port=8002" in out
    assert "--http-port=8010 --grpc-port=8011 --metrics-port=8012" in out
    assert "server 0 environment: CUDA_VISIBLE_DEVICES=0,1" in out and "server 1 environment: CUDA_VISIBLE_DEVICES=2,3" in out
    assert "TRTLLM_ORCHESTRATOR=1" in out and "gpu_device_ids=0,1" in out


def test_docker_plan_builds_and_serves_in_the_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = tmp_path / "w"
    out = plan(capsys, "--workdir", str(w), "--docker")
    compose = f"docker compose -f {w}/docker-compose.yaml"
    assert f"$ {compose} run --rm build python3 {w}/CosyVoice/runtime/triton_trtllm/scripts/convert_checkpoint.py" in out
    assert f"$ {compose} run --rm build trtllm-build --checkpoint_dir" in out
    assert f"$ {compose} up -d" in out
    assert "image nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3, shm 1gb" in out
    assert "docker engine + compose" in out


def test_offline_existing_checkout_huggingface_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkout = tmp_path / "CosyVoice"
    cfg = write(tmp_path, f'mode = "offline"\n[source]\npath = "{checkout}"\n[model]\ncosyvoice_hub = "huggingface"\n'
                          'cosyvoice_repo = "FunAudioLLM/CosyVoice2-0.5B"\n[triton]\nuse_spk2info_cache = true\n')
    w = tmp_path / "w"
    out = plan(capsys, "--config", str(cfg), "--workdir", str(w))
    assert f"$ git -C {checkout} rev-parse HEAD" in out and "git clone" not in out
    assert f"$ huggingface-cli download FunAudioLLM/CosyVoice2-0.5B --local-dir {w}/models/CosyVoice2-0.5B" in out
    assert "decoupled_mode=false" in out and "{cosyvoice2,tensorrt_llm,token2wav}" in out
    assert "convert_checkpoint.py" in out and f"{checkout}/runtime/triton_trtllm/scripts" in out
    assert "one offline request (target_text only (cached speaker)) over gRPC infer" in out


def test_emulator_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = tmp_path / "w"
    out = plan(capsys, "--target", "emulator", "--workdir", str(w), "--gpus", "0,1")
    assert "1. preflight" in out and "5. repo" in out and "6. launch" in out and "7. smoke" in out
    assert "2. source" not in out and "trtllm-build" not in out
    assert "stages 2-4, source, download and build, are the real deployment's" in out
    assert f"--model-repository={w}/emulator/server0/model_repository --http-address=127.0.0.1" in out
    assert f"--model-repository={w}/emulator/server1/model_repository" in out
    assert "--http-port=8010" in out and "--allow-gpu-metrics=false" in out


def test_plan_shows_what_is_already_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkout at the pinned commit and downloaded files count as done; the rest still runs."""
    checkout = tmp_path / "CosyVoice"
    (checkout / "runtime" / "triton_trtllm" / "model_repo").mkdir(parents=True)
    (checkout / "runtime" / "triton_trtllm" / "model_repo" / "README").write_text("templates\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(checkout)]
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    w = tmp_path / "w"
    for f in ("cosyvoice2.yaml", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx", "spk2info.pt"):
        (w / "models" / "CosyVoice2-0.5B").mkdir(parents=True, exist_ok=True)
        (w / "models" / "CosyVoice2-0.5B" / f).write_bytes(b"x")
    (w / "models" / "cosyvoice2_llm").mkdir(parents=True)
    (w / "models" / "cosyvoice2_llm" / "config.json").write_text("{}")
    cfg = write(tmp_path, f'[source]\npath = "{checkout}"\ncommit = "{head}"\n')
    out = plan(capsys, "--config", str(cfg), "--workdir", str(w))
    assert "2. source    [done (files already there)]" in out
    assert "3. download  [done (files already there)]" in out
    assert "4. build     [pending]" in out
    assert "5. repo      [will redo: after build]" in out
    # an unfinished Hugging Face download is not done
    (w / "models" / "cosyvoice2_llm" / ".cache" / "huggingface").mkdir(parents=True)
    (w / "models" / "cosyvoice2_llm" / ".cache" / "huggingface" / "model.safetensors.incomplete").write_bytes(b"")
    assert "3. download  [pending]" in plan(capsys, "--config", str(cfg), "--workdir", str(w))


def test_config_values_stay_single_arguments(tmp_path: Path) -> None:
    """Commands are argument lists: a hostile value is one argument, never shell syntax."""
    cfg = write(tmp_path, '[model]\nllm_repo = "x; rm -rf ~ #"\n')
    config = load_config(cfg)
    ctx = context(config, Layout(tmp_path / "w", config), sys.stdout)
    download = next(s for s in build_stages(ctx) if isinstance(s, Download))
    assert download.commands()[0][:3] == ["huggingface-cli", "download", "x; rm -rf ~ #"]


def test_bad_flags_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "one", "--workdir", str(tmp_path)]) == 2
    assert "--gpus 'one'" in capsys.readouterr().err
    assert main(["plan", "--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert f"config file {tmp_path / 'missing.toml'} not found" in err and "Traceback" not in err


def test_cvload_bootstrap_is_the_same_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cvload.cli import main as cvload_main

    assert cvload_main(["bootstrap", "plan", "--target", "emulator", "--workdir", str(tmp_path / "w")]) == 0
    assert "6. launch" in capsys.readouterr().out
    assert cvload_main(["bootstrap", "status", "--workdir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cvload: error: no deployment recorded in") and "hint: run `cvload bootstrap up`" in err
