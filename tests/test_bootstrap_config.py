"""The deployment config: every knob typed, every mistake named by file, section and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvload.errors import UsageError
from server_bootstrap.config import PINNED_COMMIT, load_config, parse_gpus


def write(tmp_path: Path, text: str, name: str = "deploy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_upstream_ones() -> None:
    c = load_config()
    assert (c.target, c.mode, c.decoupled) == ("trtllm", "streaming", True)
    assert (c.engine.max_batch_size, c.engine.max_num_tokens, c.gemm_plugin) == (16, 32768, "bfloat16")
    assert (c.triton.bls_instances, c.triton.max_batch_size, c.triton.kv_cache_free_gpu_mem_fraction) == (4, 16, 0.5)
    assert c.triton.max_tokens_in_paged_kv_cache == 2560
    assert c.source.commit == PINNED_COMMIT
    assert c.server_ports(0) == (8000, 8001, 8002)
    assert c.host == "0.0.0.0"


def test_every_section_loads_with_types_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "checkout").mkdir()
    path = write(tmp_path, """
target = "trtllm"
mode = "offline"
workdir = "deploy"
[source]
path = "checkout"
commit = "abcdef1"
[model]
dtype = "float16"
cosyvoice_hub = "huggingface"
cosyvoice_repo = "FunAudioLLM/CosyVoice2-0.5B"
[engine]
max_batch_size = 32
max_num_tokens = 16384
tp_size = 2
[triton]
max_batch_size = 32
bls_instances = 8
token2wav_instances = 2
kv_cache_free_gpu_mem_fraction = 1   # an int is fine for a float
use_spk2info_cache = true
decoupled = false
[server]
http_port = 18000
grpc_port = 18001
metrics_port = 18002
gpus = [0, 1, 2, 3]
[docker]
image = "soar97/triton-cosyvoice:25.06"
""")
    c = load_config(path)
    assert c.mode == "offline" and not c.decoupled
    assert c.workdir == str((tmp_path / "deploy").resolve())
    assert c.source.path == str((tmp_path / "checkout").resolve())
    assert c.gemm_plugin == "float16"
    assert c.triton.kv_cache_free_gpu_mem_fraction == 1.0
    assert c.server_gpus() == [[0, 1], [2, 3]]  # tp_size 2: one server per two GPUs
    assert [c.server_ports(i) for i in range(2)] == [(18000, 18001, 18002), (18010, 18011, 18012)]


@pytest.mark.parametrize(("text", "expected"), [
    ("[triton]\nbls_instance = 4\n", "unknown key 'bls_instance' in [triton] of config FILE (did you mean "
                                     "'bls_instances'?)"),
    ("[tritonn]\nx = 1\n", "unknown key 'tritonn' in config FILE (did you mean 'triton'?)"),
    ("triton = 3\n", "key 'triton' in config FILE must be a table ([triton]), got int 3"),
    ("origin = \"x\"\n", "key 'origin' in config FILE: set by cvload"),
    ("[engine]\nmax_batch_size = \"16\"\n", "key 'max_batch_size' in [engine] of config FILE must be an integer, "
                                            "got str '16'"),
    ("[triton]\nuse_spk2info_cache = 1\n", "key 'use_spk2info_cache' in [triton] of config FILE must be true or "
                                           "false, got int 1"),
    ("[server]\ngpus = \"0,1\"\n", "key 'gpus' in [server] of config FILE must be a list of integers, got str"),
    ("[server]\ngpus = [0, \"1\"]\n", "must be a list of integers, got list [0, '1']"),
    ("mode = \"stream\"\n", "mode: 'stream' is not a client mode"),
    ("[triton]\ndecoupled = true\n[model]\n", None),  # agrees with the default streaming mode
    ("mode = \"offline\"\n[triton]\ndecoupled = true\n", "decoupled = true contradicts mode = 'offline'"),
    ("[triton]\nmax_batch_size = 32\n", "32 exceeds the engine's [engine] max_batch_size 16"),
    ("[triton]\nkv_cache_free_gpu_mem_fraction = 1.5\n", "1.5 is not a fraction"),
    ("[engine]\ntp_size = 2\n[server]\ngpus = [0, 1, 2]\n", "3 GPU(s) do not split into servers of"),
    ("[server]\ngpus = [0, 0]\n", "GPU ids must be distinct"),
    ("[server]\ngpus = [0, 1]\nport_stride = 1\n", "colliding or invalid ports"),
    ("[server]\ngrpc_port = 8000\n", "ports must differ"),
    ("[source]\ncommit = \"main\"\n", "'main' is not a git commit hash"),
    ("[model]\ndtype = \"int4\"\n", "[model] dtype: 'int4'"),
    ("target = \"emulator\"\n[emulator]\nprofile = \"nope\"\n", "unknown emulator profile 'nope'"),
    ("target = \"emulator\"\n[docker]\nenabled = true\n", "--docker is for trtllm"),
    ("[server\n", "not valid TOML"),
])
def test_mistakes_name_file_section_and_key(tmp_path: Path, text: str, expected: str | None) -> None:
    path = write(tmp_path, text)
    if expected is None:
        load_config(path)
        return
    with pytest.raises(UsageError) as info:
        load_config(path)
    message = str(info.value)
    assert expected.replace("FILE", str(path)) in message
    assert str(path) in message


def test_missing_file_and_flag_overrides(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="config file .*nope.toml not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(UsageError, match=r"key 'gpus' in \[server\] of command-line settings \(config defaults\) "
                                         "must be a list of integers"):
        load_config(None, {"server.gpus": "0"})
    c = load_config(None, {"target": "emulator", "server.gpus": [0, 1], "docker.enabled": None})
    assert c.target == "emulator" and len(c.server_gpus()) == 2 and c.host == "127.0.0.1"
    assert parse_gpus("0, 2") == [0, 2]
    with pytest.raises(UsageError, match="--gpus 'a,b'"):
        parse_gpus("a,b")


def test_the_documented_config_is_valid_and_matches_the_defaults(tmp_path: Path) -> None:
    """docs/bootstrap.md's reference config loads, and documents the real defaults."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "bootstrap.md").read_text()
    block = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    documented = load_config(write(tmp_path, block))
    defaults = load_config(None, {"workdir": documented.workdir})
    assert documented.to_dict() == defaults.to_dict()
