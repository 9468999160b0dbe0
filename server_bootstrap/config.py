"""The deployment config of ``cvload bootstrap``: every knob of a CosyVoice Triton + TensorRT-LLM deployment.

One TOML file, one typed section per concern; a key that does not exist or a value of the wrong type is an error
naming the file, the section and the key, never a silently ignored setting. Relative paths are relative to the
config file. Defaults are the upstream ones (runtime/triton_trtllm/run.sh), see docs/protocol.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvload.errors import UsageError
from cvload.settings.address import TRITON_PORTS
from cvload.settings.typed_toml import Rules, Where, build, merge, read_table, read_toml

TARGETS = ("trtllm", "emulator", "python-runtime")
RUNTIME_SERVERS = ("grpc", "fastapi")  # the folders of CosyVoice's runtime/python
MODES = ("streaming", "offline")
DTYPES = ("bfloat16", "float16", "float32")
HUBS = ("modelscope", "huggingface")
# A CosyVoice commit whose runtime/triton_trtllm/model_repo has the templates model_repository.py knows (optional prompt
# inputs on cosyvoice2, token2wav with streaming inputs, speaker_embedding). Override with [source] commit.
PINNED_COMMIT = "4d60ff6abcc890c4dae01ea982aba62adb1fdbd4"
TRTLLM_IMAGE = "nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3"
# Emulator profile knobs that are deployment settings: profile knob -> [triton] key that sets them.
TRITON_KNOBS = {"bls_instances": "bls_instances", "token2wav_instances": "token2wav_instances",
                "max_batch_size": "max_batch_size"}
DEFAULT_HOME = Path(os.environ.get("CVLOAD_BOOTSTRAP_HOME", Path.home() / ".cache" / "cvload" / "bootstrap"))


@dataclass
class SourceConfig:
    """Where CosyVoice's runtime code comes from: a clone at a pinned commit, or a checkout you already have."""

    repo: str = "https://github.com/FunAudioLLM/CosyVoice.git"
    commit: str = PINNED_COMMIT
    path: str | None = None  # existing checkout: used as is (its commit is checked, never changed)


@dataclass
class ModelConfig:
    """Which checkpoints to download and serve."""

    name: str = "cosyvoice2"  # the front model clients call
    llm_repo: str = "yuekai/cosyvoice2_llm"  # Hugging Face repo of the LLM checkpoint + tokenizer
    cosyvoice_repo: str = "iic/CosyVoice2-0.5B"  # flow, hift, speech tokenizer, campplus
    cosyvoice_hub: str = "modelscope"  # modelscope | huggingface
    spk2info_url: str = "https://raw.githubusercontent.com/qi-hua/async_cosyvoice/main/CosyVoice2-0.5B/spk2info.pt"
    dtype: str = "bfloat16"
    hf_cli: str = "huggingface-cli"
    modelscope_cli: str = "modelscope"


@dataclass
class EngineConfig:
    """Checkpoint conversion and ``trtllm-build`` flags."""

    max_batch_size: int = 16
    max_num_tokens: int = 32768
    gemm_plugin: str | None = None  # default: the model dtype
    tp_size: int = 1
    pp_size: int = 1
    python: str = "python3"  # runs CosyVoice's scripts/convert_checkpoint.py
    trtllm_build: str = "trtllm-build"


@dataclass
class TritonConfig:
    """The model repository's template values."""

    max_batch_size: int = 16  # triton_max_batch_size
    bls_instances: int = 4  # cosyvoice2 instances: requests the front model works on at once
    token2wav_instances: int = 1
    kv_cache_free_gpu_mem_fraction: float = 0.5
    max_tokens_in_paged_kv_cache: int = 2560
    max_attention_window_size: int = 2560
    max_queue_delay_microseconds: int = 0
    decoupled: bool | None = None  # follows `mode`; set it only to state it, a contradiction is an error
    use_spk2info_cache: bool = False  # serve the cached speaker only (no audio_tokenizer / speaker_embedding)


@dataclass
class ServerConfig:
    """Where the servers listen: one per GPU (or per tp*pp GPUs), ports shifted by ``port_stride``."""

    host: str | None = None  # default 0.0.0.0 (trtllm), 127.0.0.1 (emulator)
    http_port: int = TRITON_PORTS.http  # 0 = any free port (picked at launch)
    grpc_port: int = TRITON_PORTS.grpc
    metrics_port: int = TRITON_PORTS.metrics
    port_stride: int = 10
    gpus: list[int] = field(default_factory=lambda: [0])
    ready_timeout: float | None = None  # default 900 s (trtllm: engine load), 60 s (emulator)
    tritonserver: str | None = None  # binary; default PATH, /opt/tritonserver, nvidia-pytriton


@dataclass
class DockerConfig:
    """``--docker``: a compose file running the NVIDIA Triton TRT-LLM image."""

    enabled: bool = False
    image: str = TRTLLM_IMAGE
    shm_size: str = "1gb"
    project: str = "cvload-cosyvoice"


@dataclass
class EmulatorConfig:
    """``--target emulator``: the CosyVoice emulator's latency profile (cvload.emulator), and its shape: one model,
    or the real repository's five (``pipeline``: instance counts and batch size from [triton])."""

    profile: str = "demo"
    profile_set: dict[str, Any] = field(default_factory=dict)
    pipeline: bool = False


@dataclass
class RuntimeConfig:
    """``--target python-runtime``: CosyVoice's own Python server (runtime/python) in the image its Dockerfile
    builds; ``server`` picks the gRPC or the FastAPI folder. It serves one request per --max_conc slot."""

    server: str = "grpc"  # grpc | fastapi
    port: int = 50000
    max_conc: int = 4  # grpc only: the FastAPI server has no such flag
    image: str = "cosyvoice:v1.0"
    container: str = "cvload-cosyvoice-runtime"


@dataclass
class SmokeConfig:
    """The one request ``up`` sends at the end."""

    text: str = "Hello from cvload: one short sentence to check the whole pipeline."
    prompt_wav: str | None = None  # read as 16 kHz mono; default CosyVoice's asset/zero_shot_prompt.wav (trtllm),
    # cvload's first built-in prompt (emulator)
    prompt_text: str | None = None
    timeout: float = 120.0


@dataclass
class DeploymentConfig:
    """Everything ``cvload bootstrap`` needs; TOML top-level keys plus one table per section."""

    target: str = "trtllm"
    mode: str = "streaming"  # how clients will call the front model; sets decoupled_mode
    workdir: str | None = None
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    triton: TritonConfig = field(default_factory=TritonConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    emulator: EmulatorConfig = field(default_factory=EmulatorConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    smoke: SmokeConfig = field(default_factory=SmokeConfig)
    origin: str = field(default="defaults", compare=False)  # the file it came from, for messages

    # ---- derived values ------------------------------------------------------------------------------------
    @property
    def decoupled(self) -> bool:
        return self.mode == "streaming"

    @property
    def world_size(self) -> int:
        return self.engine.tp_size * self.engine.pp_size

    @property
    def gemm_plugin(self) -> str:
        return self.engine.gemm_plugin or self.model.dtype

    @property
    def host(self) -> str:
        return self.server.host or ("127.0.0.1" if self.target == "emulator" else "0.0.0.0")

    @property
    def ready_timeout(self) -> float:
        if self.server.ready_timeout is not None:
            return self.server.ready_timeout
        return 60.0 if self.target == "emulator" else 900.0

    def server_gpus(self) -> list[list[int]]:
        """GPU ids of each server: one server per ``world_size`` GPUs, in the order given."""
        gpus, n = self.server.gpus, self.world_size
        return [gpus[i : i + n] for i in range(0, len(gpus), n)]

    def server_ports(self, index: int) -> tuple[int, int, int]:
        """(http, grpc, metrics) of server ``index``; 0 stays 0 (a free port is picked at launch)."""
        shift = index * self.server.port_stride
        http, grpc, metrics = (p + shift if p else 0 for p in
                               (self.server.http_port, self.server.grpc_port, self.server.metrics_port))
        return http, grpc, metrics

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("origin")
        return data

    # ---- validation ----------------------------------------------------------------------------------------
    def validate(self) -> DeploymentConfig:
        def bad(key: str, message: str, hint: str | None = None) -> UsageError:
            return UsageError(f"{self.origin}: {key}: {message}", hint=hint)

        if self.target not in TARGETS:
            raise bad("target", f"{self.target!r} is not a target", "use " + ", ".join(TARGETS))
        if self.mode not in MODES:
            raise bad("mode", f"{self.mode!r} is not a client mode", "use streaming (decoupled) or offline")
        t, e, s = self.triton, self.engine, self.server
        if t.decoupled is not None and t.decoupled != self.decoupled:
            raise bad("[triton] decoupled", f"decoupled = {str(t.decoupled).lower()} contradicts mode = "
                      f"{self.mode!r}: a {'decoupled' if t.decoupled else 'non-decoupled'} front model serves "
                      f"only {'streaming' if t.decoupled else 'offline'} clients (HTTP infer on a decoupled "
                      "model answers 501)", "drop [triton] decoupled and set mode to how clients will call")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.model.name):
            raise bad("[model] name", f"{self.model.name!r} is not a valid Triton model name",
                      "use letters, digits, '_', '-' or '.'")
        if self.model.dtype not in DTYPES:
            raise bad("[model] dtype", f"{self.model.dtype!r}", "use one of " + ", ".join(DTYPES))
        if self.model.cosyvoice_hub not in HUBS:
            raise bad("[model] cosyvoice_hub", f"{self.model.cosyvoice_hub!r}", "use modelscope or huggingface")
        if self.gemm_plugin not in DTYPES + ("auto", "disable"):
            raise bad("[engine] gemm_plugin", f"{self.gemm_plugin!r}", "use auto, disable or a dtype")
        if not re.fullmatch(r"[0-9a-fA-F]{7,40}", self.source.commit):
            raise bad("[source] commit", f"{self.source.commit!r} is not a git commit hash",
                      "pin a commit (7 to 40 hex digits) so every deployment runs the same templates")
        positive = {
            "[engine] max_batch_size": e.max_batch_size, "[engine] max_num_tokens": e.max_num_tokens,
            "[engine] tp_size": e.tp_size, "[engine] pp_size": e.pp_size,
            "[triton] max_batch_size": t.max_batch_size, "[triton] bls_instances": t.bls_instances,
            "[triton] token2wav_instances": t.token2wav_instances,
            "[triton] max_tokens_in_paged_kv_cache": t.max_tokens_in_paged_kv_cache,
            "[triton] max_attention_window_size": t.max_attention_window_size,
            "[smoke] timeout": self.smoke.timeout, "[server] ready_timeout": self.ready_timeout,
        }
        for key, value in positive.items():
            if value <= 0:
                raise bad(key, f"must be positive, got {value}")
        if t.max_queue_delay_microseconds < 0:
            raise bad("[triton] max_queue_delay_microseconds", "must not be negative")
        if not 0 < t.kv_cache_free_gpu_mem_fraction <= 1:
            raise bad("[triton] kv_cache_free_gpu_mem_fraction",
                      f"{t.kv_cache_free_gpu_mem_fraction} is not a fraction in (0, 1]",
                      "0.5 leaves half the free GPU memory to token2wav and the other models")
        if t.max_batch_size > e.max_batch_size:
            raise bad("[triton] max_batch_size", f"{t.max_batch_size} exceeds the engine's [engine] "
                      f"max_batch_size {e.max_batch_size}: TensorRT-LLM would reject the larger batches",
                      "build the engine with at least the Triton batch size")
        for key in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(s, key)
            if not 0 <= port <= 65535:
                raise bad(f"[server] {key}", f"{port} is not a port number")
        fixed = [p for p in (s.http_port, s.grpc_port, s.metrics_port) if p]
        if len(set(fixed)) != len(fixed):
            raise bad("[server]", f"http/grpc/metrics ports must differ, got {s.http_port}/{s.grpc_port}/"
                      f"{s.metrics_port}")
        if not s.gpus:
            raise bad("[server] gpus", "needs at least one GPU id")
        if any(g < 0 for g in s.gpus) or len(set(s.gpus)) != len(s.gpus):
            raise bad("[server] gpus", f"{s.gpus}: GPU ids must be distinct and not negative")
        if len(s.gpus) % self.world_size:
            raise bad("[server] gpus", f"{len(s.gpus)} GPU(s) do not split into servers of tp_size*pp_size = "
                      f"{self.world_size} GPUs each", "give a multiple of tp_size*pp_size GPU ids")
        servers = len(self.server_gpus())
        every = [p for i in range(servers) for p in self.server_ports(i) if p]
        if len(set(every)) != len(every) or any(p > 65535 for p in every):
            raise bad("[server] port_stride", f"{s.port_stride} gives {servers} servers colliding or invalid "
                      f"ports ({', '.join(map(str, every))})", "use a stride larger than the port span (default 10)")
        r = self.runtime
        if r.server not in RUNTIME_SERVERS:
            raise bad("[runtime] server", f"{r.server!r} is not a server of CosyVoice's runtime/python",
                      "use grpc (runtime/python/grpc/server.py) or fastapi (runtime/python/fastapi/server.py)")
        if not 1 <= r.port <= 65535:
            raise bad("[runtime] port", f"{r.port} is not a port number", "the runtime's default is 50000")
        if r.max_conc <= 0:
            raise bad("[runtime] max_conc", f"must be positive, got {r.max_conc}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", r.container):
            raise bad("[runtime] container", f"{r.container!r} is not a valid container name",
                      "use letters, digits, '_', '-' or '.'")
        if self.docker.enabled and self.target == "python-runtime":
            raise bad("docker", "the python-runtime target always runs in Docker (its own image); --docker is "
                      "for trtllm", "drop --docker")
        if self.docker.enabled and self.target == "emulator":
            raise bad("docker", "the emulator target runs the local bundled server; --docker is for trtllm",
                      "drop --docker, or use --target trtllm")
        if self.docker.enabled and len(fixed) != 3:
            raise bad("[server] ports", "docker mode publishes fixed ports: 0 (any free port) cannot be mapped",
                      "set http_port, grpc_port and metrics_port")
        if self.target == "emulator":
            from cvload.emulator import get_profile

            try:
                get_profile(self.emulator.profile, dict(self.emulator.profile_set))
            except UsageError as exc:
                raise bad("[emulator] profile / profile_set", exc.message, exc.hint) from None
            taken = sorted(set(self.emulator.profile_set) & set(TRITON_KNOBS))
            if taken:
                raise bad("[emulator] profile_set", f"{', '.join(taken)}: the deployment sets these",
                          "set " + ", ".join(f"[triton] {TRITON_KNOBS[k]}" for k in taken) + " instead")
        return self


# ---- loading -------------------------------------------------------------------------------------------------
RULES = Rules(paths={"workdir", "source.path", "server.tritonserver", "smoke.prompt_wav"}, reserved={"origin"},
              blank_is_none=True)


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None,
                ) -> DeploymentConfig:
    """Defaults, then the TOML file, then ``overrides`` (flat "section.key" or top-level keys); validated."""
    values: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        file = Path(path)
        data = read_toml(file, "config", hint="see docs/bootstrap.md for an example deployment config")
        origin = str(file)
        values = read_table(data, DeploymentConfig, Where(f"config {file}"), base=file.resolve().parent,
                            rules=RULES)
    flags: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, _, key = dotted.rpartition(".")
            merge(flags, {section: {key: value}} if section else {key: value})
    merge(values, read_table(flags, DeploymentConfig, Where(f"command-line settings (config {origin})"),
                             base=Path.cwd(), rules=RULES))
    config: DeploymentConfig = build(DeploymentConfig, values)
    config.origin = origin
    return config.validate()


def parse_gpus(text: str) -> list[int]:
    """``--gpus 0,1`` -> [0, 1]."""
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--gpus {text!r}: expected GPU ids separated by commas, e.g. 0,1") from None
    if not gpus:
        raise UsageError(f"--gpus {text!r}: expected at least one GPU id")
    return gpus


def config_from_dict(data: dict[str, Any], origin: str) -> DeploymentConfig:
    """A config saved in the state file (paths there are already absolute)."""
    config: DeploymentConfig = build(DeploymentConfig, read_table(data, DeploymentConfig, Where(f"saved config {origin}"),
                                                                  rules=RULES))
    config.origin = origin
    return config.validate()
