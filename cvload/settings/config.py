"""The resolved settings of one run: defaults, then a scenario file, then command-line flags.

One typed model (``RunConfig``) is shared by ``cvload run``, ``cvload tui`` and scenario files: a scenario key is
a field name, a flag is the same name with dashes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from cvload.apis import PROTOCOLS, api_spec
from cvload.errors import UsageError
from cvload.settings.transport import parse_header, redact_header

MODES = ("streaming", "offline")
ARRIVALS = ("poisson", "constant")
INFERENCES = ("sft", "zero_shot", "cross_lingual", "instruct", "instruct2")  # the Python runtime's request kinds
SERVER_LOSS = ("abort", "continue")  # when the server goes away mid-run: stop the run, or ride out the outage
RESPONSE_FORMATS = ("pcm", "wav")  # OpenAI-style speech: raw int16 (may stream) or a whole WAV file

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
    if not math.isfinite(seconds):  # TOML has nan and inf
        raise UsageError(f"{what} {text!r} is not a finite duration", hint="use e.g. 500ms, 30s, 2m or 1h")
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
        if s.isascii() and s.isdigit():  # str.isdigit takes '²', which int() refuses
            return cls(requests=int(s))
        return cls(seconds=parse_duration(s, what="warmup"))


SEARCHES = ("bisect",)
CAPACITY_BY = ("objectives", "audible")
# --capacity-by audible: a level passes when (besides the objectives given) requests are heard in time, play
# without a stall at --prebuffer, and 95% of them are good on all of it: right words (content_mismatch fails a
# request) and clean audio included. An objective the user gave on the same metric replaces its default here.
AUDIBLE_OBJECTIVES = ("first_audible.p95<400ms", "stalls.p95<1", "goodput.share>=95%")
LEVELS_HINT = "e.g. 1,2,4,8 (a list), 1:64 (doubling from 1 to 64) or 1:64:4 (a step of 4)"


def parse_levels(text: str | list[float] | tuple[float, ...], what: str) -> list[float]:
    """A sweep's levels: ``"1,2,4,8"`` or a list, ``"1:64"`` (doubling), ``"1:64:4"`` (a step); strictly
    ascending, at least one. ``what``: ``num_tasks`` (whole numbers >= 1) or ``rate`` (positive)."""
    flag = "--" + what.replace("_", "-")
    closed = what == "num_tasks"

    def number(part: Any) -> float:
        try:
            value = float(part)
        except (TypeError, ValueError):
            raise UsageError(f"{flag} {text!r}: {part!r} is not a number", hint=LEVELS_HINT) from None
        if closed and (value != int(value) or value < 1):
            raise UsageError(f"{flag} {text!r}: {part!r} is not a whole number of streams >= 1", hint=LEVELS_HINT)
        if value <= 0:
            raise UsageError(f"{flag} {text!r}: levels must be positive, got {part!r}", hint=LEVELS_HINT)
        return float(int(value)) if closed else value

    if isinstance(text, list | tuple):
        levels = [number(v) for v in text]
    elif ":" in str(text):
        parts = str(text).split(":")
        if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
            raise UsageError(f"{flag} {text!r} is not a range START:END or START:END:STEP", hint=LEVELS_HINT)
        start, end = number(parts[0]), number(parts[1])
        if end < start:
            raise UsageError(f"{flag} {text!r}: the range ends below its start", hint=LEVELS_HINT)
        step = number(parts[2]) if len(parts) == 3 else None
        levels, value = [], start
        while value <= end * (1 + 1e-9):
            levels.append(round(value, 9))
            value = value + step if step is not None else value * 2
    else:
        levels = [number(p) for p in str(text).split(",") if p.strip()]
    if not levels:
        raise UsageError(f"{flag} {text!r}: no levels given", hint=LEVELS_HINT)
    for low, high in zip(levels, levels[1:]):
        if high <= low:
            raise UsageError(f"{flag} {text!r}: levels must be strictly ascending ({high:g} after {low:g})",
                             hint=LEVELS_HINT)
    return levels


@dataclass
class SweepSettings:
    """How ``cvload sweep`` steps through load levels (flags of the same names; a scenario's ``[sweep]`` table).

    Levels are ``"1,2,4,8"`` (a list), ``"1:64"`` (doubling from 1 to 64) or ``"1:64:4"`` (a step); in a scenario
    also a TOML list. The other run settings (duration, requests, warmup, objectives...) apply to each level.
    """

    num_tasks: str | list[float] | None = None  # closed-loop levels (concurrency)
    rate: str | list[float] | None = None  # open-loop levels (requests per second)
    search: str | None = None  # "bisect": refine between the last passing and the first failing level
    precision: float | None = None  # bisect's resolution for rates, req/s (default 0.1)
    keep_going: int = 0  # levels measured after the first one failing the objectives
    stop_error_rate: float = 0.5  # stop at once when a level's error rate passes this share
    min_capacity: float = 1.0  # exit 3 when the capacity found is below this
    stable: str | None = None  # "10%": measure a level until first-chunk p95 of its last three windows agree
    stable_max: float | None = None  # seconds a --stable level may last (default 5 windows)
    capacity_by: str = "objectives"  # or "audible": the audible objectives (AUDIBLE_OBJECTIVES) join the given ones

    def levels(self) -> tuple[str, list[float]] | None:
        """The kind and the parsed levels: ``("concurrency", ...)`` from num_tasks, else ``("rate", ...)``; None
        when neither is given."""
        if self.num_tasks is not None:
            return "concurrency", parse_levels(self.num_tasks, "num_tasks")
        if self.rate is not None:
            return "rate", parse_levels(self.rate, "rate")
        return None


@dataclass
class RunConfig:
    """Everything a run needs; field names double as scenario keys (TOML) and flags (dashes for underscores)."""

    # Target
    server: list[str] = field(default_factory=list)  # HOST[:PORT]; several -> round-robin
    api: str = "triton"  # which server API: triton | cosyvoice (Python runtime, :50000) | openai (/v1/audio/speech)
    protocol: str | None = None  # grpc | http; None: the API's own (its spec's first), set by validate()
    mode: str = "streaming"
    model: str = "cosyvoice2"
    # Triton gRPC streaming: requests one ModelStreamInfer stream carries before the next opens (1: a stream per
    # request, as clients behind a proxy limiting a stream's body need; 0: no bound). None: the target's default.
    requests_per_stream: int | None = None
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
    # After the window: wait for requests in flight at most this long, then record them incomplete
    # (None: each gets its --request-timeout).
    drain: float | None = None
    on_server_loss: str = "abort"  # abort | continue (requests fail fast while it is down; resumes when back)
    # Barge-in load (cvload/load/barge_in.py): SHARE@WHEN of requests their listener abandons, e.g. "30%@1.5s"
    barge_in: str | None = None
    barge_in_baseline: bool = False  # first run the same load without barge-in, for the survivors' comparison
    # Triton's request trace for the server's side of each abandoned request (cvload/telemetry/server_release.py): the trace
    # file as this host reads it; "" = the file the server names in its trace settings
    triton_trace: str | None = None
    # Results
    out: str | None = None
    save_audio: bool = False
    slo: list[str] = field(default_factory=list)
    # Listening (docs/speech.md): where speech starts (a VAD), the player's prebuffer, the words heard (an ASR)
    onset: bool = False  # find where speech starts in every response (first_audible, leading_silence)
    prebuffer: float = 0.0  # seconds of audio the imagined player holds before it starts (stalls, first audible)
    check_content: str | None = None  # "100%", "25%", "8s/s": transcribe that sample live (implies onset)
    asr: str = "moonshine"  # NAME[:MODEL|URL] (cvload.listen.asr)
    max_content_error: float | None = None  # above it: content_mismatch (None: cvload.listen.content.DEFAULT_MAX_ERROR)
    check_workers: int = 1  # helper processes transcribing
    language: str | None = None  # en | zh for every item (None: from each text's script)
    # Telemetry
    metrics_url: str | None = None
    telemetry_interval: float = 1.0
    gpu_source: str = "auto"  # auto | server | nvml | none
    # Prometheus (cvload.results.exporter): cvload's own live metrics on a port and/or pushed to a Pushgateway
    prometheus_port: int | None = None  # 0: any free port
    prometheus_address: str = "0.0.0.0"
    prometheus_linger: float | None = None  # seconds the endpoint stays up after the run (None: 15)
    prometheus_push: str | None = None  # Pushgateway URL
    # TLS and credentials (docs/tls.md); header values are secrets: no repr, config.json keeps the names only
    tls: bool = False  # also implied by an https:// server
    ca_cert: str | None = None  # PEM CA(s) to verify the server with (default: the system's)
    client_cert: str | None = None  # mutual TLS: PEM client certificate (and key, unless client_key)
    client_key: str | None = None
    tls_server_name: str | None = None  # the name to verify and send as SNI instead of the server's host
    insecure: bool = False  # skip verification (tests only; the summary warns)
    header: list[str] = field(default_factory=list, repr=False)  # "Name: value", HTTP headers and gRPC metadata
    header_file: str | None = None  # one "Name: value" a line
    # Scale-out: the load in several processes (cvload.load.process_fleet), each with its own event loop and connections
    processes: int | str = 1  # N, or "auto" (from the load and the CPUs, one core left for the dashboard)
    ray_address: str | None = None  # place the load processes on a Ray cluster: auto | HOST:PORT | ray://HOST:10001
    ray_resource: str | None = None  # only on nodes that offer this custom Ray resource (e.g. a node label)
    # Scenario bookkeeping
    scenario: str | None = None
    name: str | None = None  # scenario's display name
    # cvload sweep (ignored by run and tui without sweep options)
    sweep: SweepSettings = field(default_factory=SweepSettings)

    def validate(self) -> RunConfig:
        spec = api_spec(self.api)  # an unknown API is a UsageError
        if self.inference is not None and self.inference not in INFERENCES:
            raise UsageError(f"--inference {self.inference!r}: use one of {', '.join(INFERENCES)}")
        if self.response_format not in RESPONSE_FORMATS:
            raise UsageError(f"--response-format {self.response_format!r}: use one of {', '.join(RESPONSE_FORMATS)}")
        if self.max_conc is not None and self.max_conc < 1:
            raise UsageError(f"--max-conc must be at least 1, got {self.max_conc}")
        if self.requests_per_stream is not None and self.requests_per_stream < 0:
            raise UsageError(f"--requests-per-stream must be 0 (no bound) or more, got {self.requests_per_stream}")
        if self.sample_rate is not None and self.sample_rate <= 0:
            raise UsageError(f"--sample-rate must be positive, got {self.sample_rate}")
        protocols = spec.protocols
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
        if self.drain is not None and self.drain < 0:
            raise UsageError(f"--drain must not be negative, got {self.drain}")
        if self.on_server_loss not in SERVER_LOSS:
            raise UsageError(f"--on-server-loss {self.on_server_loss!r}: use one of {', '.join(SERVER_LOSS)}")
        if not self.server and not self.emulator:
            raise UsageError("no server given", hint="pass --server HOST[:PORT] or --emulator to start the "
                             "embedded CosyVoice emulator")
        if self.server and self.emulator:
            raise UsageError("--server and --emulator exclude each other: the emulator picks its own address")
        if self.pipeline and not self.emulator:
            raise UsageError("--pipeline shapes the embedded emulator's repository: add --emulator")
        Warmup.parse(self.warmup)
        self._validate_listening()
        self._validate_prometheus()
        self._validate_transport()
        self._validate_processes()
        return self

    def _validate_transport(self) -> None:
        schemes = {s.split("://", 1)[0].strip().lower() for s in self.server if "://" in s}
        if "https" in schemes:
            self.tls = True
        if self.tls and "http" in schemes:
            raise UsageError("an http:// --server in a run with TLS (--tls or an https:// server)",
                             hint="give every server as https://, or leave out --tls for plain HTTP")
        if self.tls and self.emulator:
            raise UsageError("--tls: the embedded emulator speaks no TLS", hint="leave out --tls or --emulator")
        if not self.tls:
            given = [flag for flag, value in (("--ca-cert", self.ca_cert), ("--client-cert", self.client_cert),
                                              ("--client-key", self.client_key),
                                              ("--tls-server-name", self.tls_server_name),
                                              ("--insecure", self.insecure)) if value]
            if given:
                raise UsageError(f"{', '.join(given)} only apply with TLS",
                                 hint="add --tls, or give the server as https://HOST:PORT")
        if self.client_key and not self.client_cert:
            raise UsageError("--client-key without --client-cert", hint="pass the client certificate too")
        if self.insecure and self.ca_cert:
            raise UsageError("--insecure verifies no certificate, so --ca-cert would not be used",
                             hint="leave out --insecure to verify with --ca-cert")
        for i, text in enumerate(self.header, 1):
            parse_header(text, where=f"--header #{i}")

    def _validate_listening(self) -> None:
        if isinstance(self.prebuffer, str):
            self.prebuffer = parse_duration(self.prebuffer, what="--prebuffer")
        if not math.isfinite(self.prebuffer) or self.prebuffer < 0:
            raise UsageError(f"--prebuffer must be a duration >= 0, got {self.prebuffer!r}")
        if isinstance(self.max_content_error, str):
            text = self.max_content_error.strip()
            try:
                self.max_content_error = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            except ValueError:
                raise UsageError(f"--max-content-error {text!r} is not a share", hint="e.g. 30% or 0.3") from None
        if self.max_content_error is not None and not 0 <= self.max_content_error <= 1:
            raise UsageError(f"--max-content-error must be within 0..100%, got {self.max_content_error!r}")
        if self.check_workers < 1:
            raise UsageError(f"--check-workers must be at least 1, got {self.check_workers}")
        if self.language is not None and self.language not in ("en", "zh"):
            raise UsageError(f"--language {self.language!r}: use en or zh (or leave it out: from each text's script)")
        # (a load process rebuilds its config from JSON: there ``sweep`` is still a dict)
        capacity_by = self.sweep.get("capacity_by", "objectives") if isinstance(self.sweep, dict) \
            else self.sweep.capacity_by
        if capacity_by not in CAPACITY_BY:
            raise UsageError(f"--capacity-by {capacity_by!r}: use one of {', '.join(CAPACITY_BY)}")
        if capacity_by == "audible":
            self.onset = True
        if self.check_content is not None:
            from cvload.listen.asr import make_recognizer
            from cvload.listen.live import Sampling

            Sampling.parse(self.check_content)
            make_recognizer(self.asr)  # an unknown backend fails here, before anything starts
            self.onset = True

    def _validate_prometheus(self) -> None:
        if self.prometheus_port is not None and not 0 <= self.prometheus_port <= 65535:
            raise UsageError(f"--prometheus-port {self.prometheus_port}: use a port 1-65535 (0: any free one)")
        if self.prometheus_linger is not None and self.prometheus_linger < 0:
            raise UsageError(f"--prometheus-linger must not be negative, got {self.prometheus_linger}")
        push = self.prometheus_push
        if push is not None and not push.lower().startswith(("http://", "https://")):
            raise UsageError(f"--prometheus-push {push!r}: give the Pushgateway's URL",
                             hint="e.g. --prometheus-push http://pushgateway:9091")

    def _validate_processes(self) -> None:
        if isinstance(self.processes, str) and self.processes.strip().isascii() and self.processes.strip().isdigit():
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

    @property
    def protocol_used(self) -> str:
        """--protocol, or the API's own when it was left out (as validate() sets it)."""
        return self.protocol or api_spec(self.api).protocols[0]

    def addresses(self) -> list[str]:
        """Servers as HOST:PORT, the API's and protocol's default port filled in (--api openai: the speech
        endpoint's URL)."""
        spec = api_spec(self.api)
        return [spec.address(s, self.protocol_used, tls=self.tls) for s in self.server]

    def to_json(self) -> dict[str, Any]:
        """Every setting as it is (header values included): for handing the run to another process."""
        return dataclasses.asdict(self)

    def public_json(self) -> dict[str, Any]:
        """The settings as a results file may show them: header values replaced by ``***``."""
        out = self.to_json()
        out["header"] = [redact_header(h) for h in self.header]
        return out

    def merged(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with the given (already typed) values replaced; None values are ignored."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise UsageError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
