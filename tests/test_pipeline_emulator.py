"""The pipeline emulator: the real repository's five models calling each other in a real server. Its tensors and
knobs, a zero-shot and a cached-speaker stream, `cvload run --emulator --pipeline` naming token2wav as the queue
that grows at concurrency 8 (and a second token2wav instance shrinking it), and doctor's cross-model checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from cvload import subprocesses
from cvload.cli import main
from cvload.emulator import build_pipeline_repository, get_profile, pipeline_models
from cvload.emulator.single_model import SAMPLES_PER_TOKEN, speech_tokens
from cvload.errors import ServerError, UsageError
from cvload.settings.address import Ports
from cvload.targets.checks import decoupled_of
from cvload.triton import stub_python
from cvload.triton.launcher import TritonServer
from server_bootstrap import doctor
from server_bootstrap.model_repository import model_config

ROOT = Path(__file__).resolve().parent.parent
FAST_EXIT = ["--exit-timeout-secs=0"]
TEXT = "The quick brown fox jumps over the lazy dog, then it rests in the warm afternoon sun."


def configs(repo: Path) -> dict[str, dict]:
    return {d.name: model_config(d / "config.pbtxt") for d in sorted(repo.iterdir())}


def io_names(config: dict, kind: str) -> list[str]:
    return [t["name"] for t in config.get(kind, [])]


def instances(config: dict) -> int:
    return sum(int(g.get("count", 1)) for g in config["instance_group"])


def test_repository_has_the_real_models_tensors_and_knobs(tmp_path: Path) -> None:
    profile = get_profile("demo", {"bls_instances": "3", "token2wav_instances": "2", "max_batch_size": "8"})
    repo = build_pipeline_repository(tmp_path, profile)
    cfg = configs(repo)
    assert sorted(cfg) == sorted(pipeline_models()) == sorted(
        ["cosyvoice2", "audio_tokenizer", "speaker_embedding", "tensorrt_llm", "token2wav"])
    front, llm, t2w = cfg["cosyvoice2"], cfg["tensorrt_llm"], cfg["token2wav"]
    assert io_names(front, "input") == ["reference_wav", "reference_wav_len", "reference_text", "target_text"]
    assert io_names(front, "output") == ["waveform"]
    assert io_names(cfg["audio_tokenizer"], "output") == ["prompt_speech_tokens"]
    assert io_names(cfg["speaker_embedding"], "output") == ["prompt_spk_embedding"]
    assert io_names(t2w, "input") == ["target_speech_tokens", "prompt_speech_tokens", "prompt_speech_feat",
                                      "prompt_spk_embedding", "token_offset", "finalize"]
    assert {"input_ids", "input_lengths", "request_output_len", "end_id", "streaming"} <= set(io_names(llm, "input"))
    assert io_names(llm, "output") == ["output_ids", "sequence_length"]
    assert decoupled_of(front) and decoupled_of(llm) and not decoupled_of(t2w)
    assert (instances(front), instances(t2w), instances(llm), instances(cfg["audio_tokenizer"])) == (3, 2, 1, 1)
    assert {c["max_batch_size"] for c in cfg.values()} == {8}

    offline = build_pipeline_repository(tmp_path / "off", profile, name="tts", mode="offline", prompt_models=False)
    cfg = configs(offline)
    assert sorted(cfg) == ["tensorrt_llm", "token2wav", "tts"]  # the cached-speaker deployment's models
    assert not decoupled_of(cfg["tts"]) and not decoupled_of(cfg["tensorrt_llm"])
    with pytest.raises(UsageError, match="token2wav_instances must be at least 1"):
        get_profile("demo", {"token2wav_instances": "0"})
    with pytest.raises(UsageError, match="taken by a sub-model"):
        build_pipeline_repository(tmp_path / "x", profile, name="token2wav")


def stream(url: str, request_id: str, prompt: np.ndarray | None) -> list[np.ndarray]:
    """One streaming request; the waveform chunks (fails on an error response)."""
    import queue

    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    inputs = [grpcclient.InferInput("target_text", [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[TEXT.encode()]], dtype=object))
    if prompt is not None:
        for name, dtype, value in (("reference_wav", "FP32", prompt.reshape(1, -1)),
                                   ("reference_wav_len", "INT32", np.array([[prompt.size]], np.int32)),
                                   ("reference_text", "BYTES", np.array([[b"a prompt"]], dtype=object))):
            tensor = grpcclient.InferInput(name, list(value.shape), dtype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
    client.async_stream_infer("cosyvoice2", inputs, request_id=request_id, enable_empty_final_response=True)
    chunks = []
    try:
        while True:
            result, error = got.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            if response.outputs:
                chunks.append(result.as_numpy("waveform").reshape(-1))
            if response.parameters["triton_final_response"].bool_param:
                return chunks
    finally:
        client.stop_stream()
        client.close()


def test_streams_call_the_sub_models(tmp_path: Path) -> None:
    """A zero-shot request goes through all four sub-models, a cached-speaker one skips the prompt models; the
    chunks follow the profile's schedule (one token2wav call each) and their audio adds up to the speech."""
    repo = build_pipeline_repository(tmp_path, get_profile("instant", {"first_hop_tokens": "10"}))
    with TritonServer(repo, workdir=tmp_path / "server", extra_args=FAST_EXIT) as server:
        prompt = (np.random.default_rng(0).standard_normal(32000) * 0.1).astype(np.float32)
        zero_shot = stream(server.grpc_url, "zs-1", prompt)
        cached = stream(server.grpc_url, "cache-1", None)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        stats: dict = {}

        def counted() -> bool:  # a decoupled model's statistics land a moment after its final response
            stats.update({m["name"]: m for m in client.get_inference_statistics(as_json=True)["model_stats"]})
            # Statistics JSON leaves zero counts out until the first success lands.
            success = stats.get("cosyvoice2", {}).get("inference_stats", {}).get("success", {})
            return int(success.get("count", 0)) == 2

        subprocesses.wait_until(counted, 10, what="the front model's statistics")
        client.close()
    tokens = speech_tokens(TEXT)
    for chunks in (zero_shot, cached):
        assert [c.size // SAMPLES_PER_TOKEN for c in chunks][:3] == [10, 20, 40]
        assert sum(c.size for c in chunks) == tokens * SAMPLES_PER_TOKEN and all(np.abs(c).max() > 0 for c in chunks)

    def count(model: str) -> int:
        return int(stats[model]["inference_stats"]["success"]["count"])

    assert (count("audio_tokenizer"), count("speaker_embedding")) == (1, 1)
    assert count("cosyvoice2") == 2 and count("tensorrt_llm") == 2
    assert count("token2wav") == len(zero_shot) + len(cached)
    trace = [json.loads(line) for line in (tmp_path / "cosyvoice2.trace.jsonl").read_text().splitlines()]
    assert [(t["id"], len(t["sends"]), len(t["vocoder"]), t["error"]) for t in trace] == [
        ("zs-1", len(zero_shot), len(zero_shot), None), ("cache-1", len(cached), len(cached), None)]


def run_c8(out: Path, *extra: str) -> tuple[dict, dict]:
    """`cvload run --emulator --pipeline` at concurrency 8, 8 requests after 8 of warm-up (server_stats rows by model,
    summary stages by model). Four runs with 8 requests gave token2wav queues of 297-323 ms with one instance
    against 87-104 ms with two; one run with 24 gave 395 against 121."""
    code = main(["run", "--quiet", "--emulator", "--pipeline", "--profile", "demo", "--profile-set",
                 "bls_instances=8", "--num-tasks", "8", "--requests", "16", "--warmup", "8", "--spk-cache",
                 "--telemetry-interval", "0.25", "--out", str(out), *extra])
    assert code == 0
    stats = {r["model"]: r for r in json.loads((out / "server_stats.json").read_text())["models"]}
    stages = {r["model"]: r for r in json.loads((out / "summary.json").read_text())["telemetry"]["stages"]}
    return stats, stages


def biggest_queue(rows: dict) -> str:
    return max(rows, key=lambda m: rows[m]["queue_ms"] or 0.0)


@pytest.mark.paired  # the queues of a pipeline computing on this host's CPUs
def test_token2wav_is_the_growing_queue_and_a_second_instance_moves_it(tmp_path: Path) -> None:
    one, one_stages = run_c8(tmp_path / "one")
    assert set(one) >= {"cosyvoice2", "tensorrt_llm", "token2wav"}
    assert biggest_queue(one) == "token2wav" and biggest_queue(one_stages) == "token2wav"
    two, _ = run_c8(tmp_path / "two", "--profile-set", "token2wav_instances=2")
    assert two["token2wav"]["queue_ms"] < 0.5 * one["token2wav"]["queue_ms"], (one["token2wav"], two["token2wav"])
    assert two["token2wav"]["busy_share"] < one["token2wav"]["busy_share"]


def test_pipeline_without_emulator_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--server", "127.0.0.1:1", "--pipeline"]) == 2
    assert "--pipeline shapes the embedded emulator's repository: add --emulator" in capsys.readouterr().err


def test_doctor_cross_model_checks(tmp_path: Path) -> None:
    """A front that streams over a tensorrt_llm that does not, and a token2wav count the deployment did not ask
    for: doctor names both against the running pipeline."""
    repo = build_pipeline_repository(tmp_path, get_profile("instant"))
    llm = repo / "tensorrt_llm" / "config.pbtxt"
    llm.write_text(llm.read_text().replace("decoupled: true", "decoupled: false"))
    with TritonServer(repo, workdir=tmp_path / "server", extra_args=FAST_EXIT) as server:
        ports = Ports(int(server.http_port), int(server.grpc_port), int(server.metrics_port))
        ep = doctor.Endpoint("127.0.0.1", ports)
        expect = doctor.Expectations(target="emulator", pipeline=True, token2wav_instances=2, bls_instances=4,
                                     use_spk2info_cache=False)
        findings = {f.name: f for f in doctor.diagnose(ep, expect)}
    assert findings["llm decoupled"].status == "FAIL"
    assert findings["llm decoupled"].detail == "cosyvoice2 is decoupled but tensorrt_llm is not decoupled"
    assert findings["token2wav instances"].status == "warn"
    assert findings["token2wav instances"].detail == "1, the config asks for 2"
    assert findings["instances"].detail.startswith("cosyvoice2: 4 instance(s)")
    assert all(findings[f"model {m}"].status != "FAIL" for m in ("tensorrt_llm", "token2wav")
               if f"model {m}" in findings)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server_bootstrap", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_bootstrap_emulator_pipeline_up_doctor_down(tmp_path: Path) -> None:
    cfg = tmp_path / "deploy.toml"
    cfg.write_text('target = "emulator"\n[server]\nhttp_port = 0\ngrpc_port = 0\nmetrics_port = 0\n'
                   '[triton]\ntoken2wav_instances = 2\n[emulator]\nprofile = "instant"\npipeline = true\n')
    workdir = tmp_path / "deploy"
    up = cli("up", "--config", str(cfg), "--workdir", str(workdir))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "first chunk" in up.stdout
        repo = workdir / "emulator" / "server0" / "model_repository"
        assert sorted(p.name for p in repo.iterdir()) == sorted(pipeline_models())
        doc = cli("doctor", "--workdir", str(workdir))
        assert doc.returncode == 0, doc.stdout
        assert "tensorrt_llm is decoupled, as cosyvoice2" in doc.stdout
        assert "token2wav instances" in doc.stdout and "2 (the vocoder every stream waits on)" in doc.stdout
    finally:
        down = cli("down", "--workdir", str(workdir))
    assert down.returncode == 0 and "stopped 1 server(s)" in down.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text('target = "emulator"\n[emulator]\npipeline = true\nprofile_set = { token2wav_instances = 2 }\n')
    plan = cli("plan", "--config", str(bad), "--workdir", str(tmp_path / "w2"))
    assert plan.returncode == 2 and "set [triton] token2wav_instances instead" in plan.stderr


def _pythons_312() -> list[Path]:
    """python3.12 interpreters here: on PATH, and pyenv's builds (its shim on PATH fails unless 3.12 is selected)."""
    found = [Path(p) for p in [shutil.which("python3.12")] if p]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found += sorted(pyenv.glob("3.12*/bin/python3.12"))
    return found


@pytest.fixture(scope="module")
def stub_312(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python 3.12 environment with numpy 1.26 for the stub (made with pip, from a wheel); skips when none can
    be made here."""
    chosen = stub_python.choose()
    if chosen.version == "3.12":
        return chosen.python
    why = "no python3.12 here"
    for base in _pythons_312():
        try:
            if stub_python.inspect(base).version != "3.12":
                continue
            made = stub_python.make_private_env(base, tmp_path_factory.mktemp("stub312") / "env", log=lambda _: None)
        except ServerError as err:
            why = err.message.splitlines()[0]
            continue
        if made.problem() is None:
            return made.python
        why = made.problem() or why
    pytest.skip(f"no Python 3.12 environment with numpy {stub_python.STUB_NUMPY} for the stub: {why}")


def test_pipeline_streams_on_the_python_312_stub(tmp_path: Path, stub_312: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stream's decoupled BLS iterator must be dropped by the front model after the stub's cleanup thread
    let go of it: dropped first, the stub frees its numpy arrays without the GIL, which Python 3.12 answers with
    a segfault ("Stub process 'cosyvoice2_0_1' is not healthy" for the requests of that instance)."""
    monkeypatch.setenv(stub_python.ENV_VAR, str(stub_312))
    out = tmp_path / "run"
    code = main(["run", "--quiet", "--emulator", "--pipeline", "--profile", "demo", "--num-tasks", "2",
                 "--requests", "16", "--out", str(out)])
    stub = out / "emulator" / "backends" / "python" / "triton_python_backend_stub"
    assert stub.resolve().parent.name == "3.12", stub.resolve()
    summary = json.loads((out / "summary.json").read_text())
    assert (code, summary["requests"]["ok"], summary["requests"]["failed"]) == (0, 16, 0), summary["errors"]
