"""The resolved settings of one run: defaults, then a scenario file, then command-line flags.

One typed model (``RunConfig``) is shared by ``cvload run``, ``cvload tui`` and scenario files: a scenario key is
a field name, a flag is the same name with dashes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from cvload.address import RUNTIME_PORT, server_address, speech_url
from cvload.errors import UsageError

APIS = ("triton", "cosyvoice", "openai")  # Triton (+TRT-LLM), CosyVoice's Python runtime, OpenAI-style speech
PROTOCOLS = ("grpc", "http")
MODES = ("streaming", "offline")
ARRIVALS = ("poisson", "constant")
INFERENCES = ("sft", "zero_shot", "cross_lingual", "instruct", "instruct2")  # the Python runtime's request kinds
RESPONSE_FORMATS = ("pcm", "wav")  # OpenAI-style speech: raw int16 (may stream) or a whole WAV file
API_PROTOCOLS = {"openai": ("http",)}  # protocols of an API, the first its default (unlisted: grpc, http)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str | float | int, *, what: str = "duration") -> float:
    """'60s', '2m', '500ms', '1.5' (seconds) -> seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise UsageError(f"{what} {text!r} is not a duration", hint="use e.g. 500ms, 30s, 2m or 1h")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds < 0:
        raise UsageError(f"{what} {text!r} must not be negative")
    return seconds


@dataclass
class Warmup:
    """Requests (count) or seconds excluded from statistics at the start of a run."""

    requests: int = 0
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str | int | float | None) -> Warmup:
        if text is None or text == "" or text == 0:
            return cls()
        if isinstance(text, int) and not isinstance(text, bool):
            return cls(requests=text)
        s = str(text).strip()
        if s.isdigit():
            return cls(requests=int(s))
        return cls(seconds=parse_duration(s, what="warmup"))


@dataclass
class RunConfig:
    """Everything a run needs; field names double as scenario keys (TOML) and flags (dashes for underscores)."""

    # Target
    server: list[str] = field(default_factory=list)  # HOST[:PORT]; several -> round-robin
    api: str = "triton"  # which server API: triton | cosyvoice (Python runtime, :50000) | openai (/v1/audio/speech)
    protocol: str | None = None  # grpc | http; None: the API's own (see API_PROTOCOLS), set by validate()
    mode: str = "streaming"
    model: str = "cosyvoice2"
    # Request details of the non-Triton APIs
    inference: str | None = None  # cosyvoice: sft | zero_shot | cross_lingual | instruct | instruct2
    spk_id: str | None = None  # cosyvoice sft/instruct: the server's speaker id
    instruct_text: str | None = None  # cosyvoice instruct/instruct2
    sample_rate: int | None = None  # rate of audio a server sends without saying it (None: the API's default)
    voice: str | None = None  # openai: the voice name
    response_format: str = "pcm"  # openai: pcm | wav
    # Embedded server
    emulator: bool = False
    profile: str | None = None
    profile_set: dict[str, Any] = field(default_factory=dict)
    max_conc: int | None = None  # emulated cosyvoice runtime: its --max_conc (calls past it are refused; default 4)
    pipeline: bool = False  # emulate the real five-model repository (cosyvoice2 calling its sub-models)
    # Load shape: closed loop (num_tasks) or open loop (rate)
    num_tasks: int | None = None
    rate: float | None = None  # requests per second
    arrival: str = "poisson"
    max_inflight: int = 256
    requests: int | None = None  # stop after this many (measured + warmup)
    duration: float | None = None  # seconds
    warmup: str | int | None = None  # N requests or a duration
    ramp: float | None = None  # seconds over which closed-loop workers start; None = about one request
    seed: int = 0
    # Inputs
    inputs: str | None = None  # manifest (utt|prompt_text|prompt_wav|target_text) or .jsonl; None = built in
    spk_cache: bool = False  # send target_text only (server's cached speaker)
    pad_prompt: bool = False  # zero-pad prompts like the upstream client (10 s streaming, 1 s offline)
    request_timeout: float = 60.0
    # Results
    out: str | None = None
    save_audio: bool = False
    slo: list[str] = field(default_factory=list)
    # Telemetry
    metrics_url: str | None = None
    telemetry_interval: float = 1.0
    gpu_source: str = "auto"  # auto | server | nvml | none
    # Scale-out: the load in several processes (cvload.multiproc), each with its own event loop and connections
    processes: int | str = 1  # N, or "auto" (from the load and the CPUs, one core left for the dashboard)
    ray_address: str | None = None  # place the load processes on a Ray cluster: auto | HOST:PORT | ray://HOST:10001
    ray_resource: str | None = None  # only on nodes that offer this custom Ray resource (e.g. a node label)
    # Scenario bookkeeping
    scenario: str | None = None
    name: str | None = None  # scenario's display name

    def validate(self) -> RunConfig:
        if self.api not in APIS:
            raise UsageError(f"--api {self.api!r}: use one of {', '.join(APIS)}")
        if self.inference is not None and self.inference not in INFERENCES:
            raise UsageError(f"--inference {self.inference!r}: use one of {', '.join(INFERENCES)}")
        if self.response_format not in RESPONSE_FORMATS:
            raise UsageError(f"--response-format {self.response_format!r}: use one of {', '.join(RESPONSE_FORMATS)}")
        if self.max_conc is not None and self.max_conc < 1:
            raise UsageError(f"--max-conc must be at least 1, got {self.max_conc}")
        if self.sample_rate is not None and self.sample_rate <= 0:
            raise UsageError(f"--sample-rate must be positive, got {self.sample_rate}")
        protocols = API_PROTOCOLS.get(self.api, PROTOCOLS)
        if self.protocol is None:
            self.protocol = protocols[0]
        elif self.protocol in PROTOCOLS and self.protocol not in protocols:
            raise UsageError(f"--api {self.api} speaks {' or '.join(protocols)}, not --protocol {self.protocol}",
                             hint=f"leave --protocol out (--api {self.api} implies {protocols[0]})")
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"--protocol {self.protocol!r}: use one of {', '.join(PROTOCOLS)}")
        if self.mode not in MODES:
            raise UsageError(f"--mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.arrival not in ARRIVALS:
            raise UsageError(f"--arrival {self.arrival!r}: use one of {', '.join(ARRIVALS)}")
        if self.num_tasks is not None and self.rate is not None:
            raise UsageError("--num-tasks (closed loop) and --rate (open loop) exclude each other: pick one")
        if self.num_tasks is not None and self.num_tasks < 1:
            raise UsageError(f"--num-tasks must be at least 1, got {self.num_tasks}")
        if self.rate is not None and self.rate <= 0:
            raise UsageError(f"--rate must be positive, got {self.rate}")
        if self.max_inflight < 1:
            raise UsageError(f"--max-inflight must be at least 1, got {self.max_inflight}")
        if self.requests is not None and self.requests < 1:
            raise UsageError(f"--requests must be at least 1, got {self.requests}")
        if self.request_timeout <= 0:
            raise UsageError(f"--request-timeout must be positive, got {self.request_timeout}")
        if not self.server and not self.emulator:
            raise UsageError("no server given", hint="pass --server HOST[:PORT] or --emulator to start the "
                             "embedded CosyVoice emulator")
        if self.server and self.emulator:
            raise UsageError("--server and --emulator exclude each other: the emulator picks its own address")
        if self.pipeline and not self.emulator:
            raise UsageError("--pipeline shapes the embedded emulator's repository: add --emulator")
        Warmup.parse(self.warmup)
        self._validate_processes()
        return self

    def _validate_processes(self) -> None:
        if isinstance(self.processes, str) and self.processes.strip().isdigit():
            self.processes = int(self.processes)
        if self.ray_resource and not self.ray_address:
            raise UsageError("--ray-resource picks Ray nodes: add --ray-address")
        if self.processes == "auto":
            return
        if isinstance(self.processes, bool) or not isinstance(self.processes, int) or self.processes < 1:
            raise UsageError(f"--processes {self.processes!r}: use a number of processes (1 or more) or auto")
        if self.processes > 1 and self.save_audio:
            raise UsageError("--save-audio writes audio from one process: leave --processes out (or use 1)")

    @property
    def closed_loop(self) -> bool:
        return self.rate is None

    @property
    def concurrency(self) -> int:
        return self.num_tasks if self.num_tasks is not None else 1

    def warmup_spec(self) -> Warmup:
        return Warmup.parse(self.warmup)

    def addresses(self) -> list[str]:
        """Servers as HOST:PORT, the API's and protocol's default port filled in (--api openai: the speech
        endpoint's URL)."""
        if self.api == "openai":
            return [speech_url(s) for s in self.server]
        port = RUNTIME_PORT if self.api == "cosyvoice" else None
        return [server_address(s, self.protocol or PROTOCOLS[0], default_port=port) for s in self.server]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with the given (already typed) values replaced; None values are ignored."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise UsageError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
