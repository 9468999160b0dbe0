"""The server APIs cvload can load, one declared spec each, and the registry that maps ``--api`` names to them.

A spec says everything the rest of cvload asks about an API: its protocols and default ports, its target
classes, the typed options its targets take, whether Triton's statistics and metrics stand beside the server,
what one timed chunk is, how a run of it is labelled, and the emulated server that stands in for it. Nothing
else compares API names: adding an API is adding one ``ApiSpec`` here, its targets (``cvload.targets``) and its
emulator (``cvload.emulator.launch``). Classes are named as ``"module:Class"`` and imported on use, so the
registry loads neither targets nor emulators (``compare`` and ``report`` read it too).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cvload.errors import UsageError
from cvload.settings.address import RUNTIME_PORT, server_address, speech_url

PROTOCOLS = ("grpc", "http")


def load(spec: str) -> Any:
    """The object a ``"module:name"`` string names."""
    module_name, name = spec.split(":")
    return getattr(importlib.import_module(module_name), name)


@dataclass(frozen=True)
class ApiSpec:
    """One server API. ``targets`` maps ``protocol`` or ``protocol/mode`` (an API with modes of its own) to
    the target class; ``options`` names the typed options its targets take, built from the run's settings by
    the class's ``of(config, protocol)``; ``emulator`` names the class that runs its emulated server."""

    name: str
    title: str
    protocols: tuple[str, ...]  # the first is the default
    targets: Mapping[str, str]
    options: str
    emulator: str
    modes: tuple[str, ...] = ()  # streaming/offline of its own (Triton's decoupled or not); else the target's
    default_port: int | None = None  # None: Triton's port of the protocol (8001 gRPC, 8000 HTTP)
    endpoint_url: bool = False  # --server names an HTTP endpoint (a URL with a route), not HOST:PORT
    triton_telemetry: bool = False  # Triton's statistics API and metrics endpoint (:8002) beside the server
    chunk: str = "one response"  # what one timed chunk is
    describe: str = "{api} {protocol}"  # the run's target in words: {api} {protocol} {mode} {inference} {chunk}
    folder: str = "{api}-{protocol}"  # the stem of a results folder's name
    default_inference: str = ""  # shown for {inference} when --inference is not given
    token_env: str | None = None  # an environment variable whose value is sent as a bearer token
    # summary.json's target names the API, its request kind and the target's own mode (off for Triton, so
    # results of Triton runs keep the shape they had before other APIs)
    in_summary: bool = True
    # What one request of a ``protocol/mode`` costs a load process beside a gRPC stream of binary audio (1.0):
    # ``--processes auto`` weighs the load by it (cvload.load.process_fleet.auto_processes)
    bytes_weight: Mapping[str, float] = field(default_factory=dict)

    # ---- targets -------------------------------------------------------------------------------------------
    def target_class(self, protocol: str, mode: str) -> Any:
        """The target class for ``protocol`` (and ``mode``, for an API with modes); a bad choice is a UsageError."""
        spec = self.targets.get(f"{protocol}/{mode}") if self.modes else self.targets.get(protocol)
        if spec is None:
            if self.modes:
                raise UsageError(f"no target for --protocol {protocol!r} --mode {mode!r}",
                                 hint=f"protocols: {', '.join(self.protocols)}; modes: {', '.join(self.modes)}")
            raise UsageError(f"no target for --api {self.name!r} --protocol {protocol!r}",
                             hint="combinations: " + ", ".join(f"{a.name}/{p}" for a in REGISTRY.values()
                                                               for p in a.protocols if not a.modes))
        return load(spec)

    def target_options(self, config: Any, protocol: str) -> Any:
        """This API's typed target options from a RunConfig (None: the defaults)."""
        return load(self.options).of(config, protocol)

    # ---- addresses -----------------------------------------------------------------------------------------
    def address(self, server: str, protocol: str, *, tls: bool = False) -> str:
        """One ``--server`` as its targets take it: ``HOST:PORT`` with the API's port filled in, or (an HTTP
        endpoint API) the endpoint's full URL."""
        if self.endpoint_url:
            url = speech_url(server)
            return f"https://{url[len('http://'):]}" if tls and url.startswith("http://") else url
        https = server.strip().lower().startswith("https://")
        return server_address(server, protocol, default_port=443 if https else self.default_port)

    # ---- words ---------------------------------------------------------------------------------------------
    def words(self, protocol: str | None, mode: str | None, inference: str | None = None) -> str:
        """The target in words, e.g. ``grpc streaming`` or ``cosyvoice runtime, grpc sft; chunk = sentence``."""
        return self.describe.format(api=self.name, protocol=protocol or self.protocols[0], mode=mode or "?",
                                    inference=inference or self.default_inference, chunk=self.chunk)

    def label(self, protocol: str | None, mode: str | None) -> str:
        """The stem of a results folder's name, e.g. ``streaming-grpc`` or ``openai-http``."""
        return self.folder.format(api=self.name, protocol=protocol or self.protocols[0], mode=mode or "streaming")

    def emulated(self, settings: Any) -> Any:
        """The emulated server that stands in for this API (``cvload.emulator.launch``), not yet started."""
        return load(self.emulator)(settings)


REGISTRY: dict[str, ApiSpec] = {spec.name: spec for spec in (
    ApiSpec(
        name="triton", title="Triton + TensorRT-LLM, the cosyvoice2 front model",
        protocols=PROTOCOLS, modes=("streaming", "offline"),
        targets={"grpc/streaming": "cvload.targets.triton_grpc:TritonGrpcStreaming",
                 "grpc/offline": "cvload.targets.triton_grpc:TritonGrpcOffline",
                 "http/streaming": "cvload.targets.triton_http:TritonHttpStreaming",
                 "http/offline": "cvload.targets.triton_http:TritonHttpOffline"},
        options="cvload.targets.triton_options:TritonOptions", emulator="cvload.emulator.launch:TritonEmulator",
        triton_telemetry=True, in_summary=False,
        # HTTP streaming: audio as JSON text (~3x the bytes, cut into events on the loop) and ~0.6 MB JSON prompts;
        # one process at 64 such streams: p99 +11 to +33 ms over a bare client on the H100 host, gRPC -0.35 ms
        bytes_weight={"http/streaming": 4.0},
        chunk="one decoupled response (streaming) or the whole answer (offline)",
        describe="{protocol} {mode}", folder="{mode}-{protocol}",
    ),
    ApiSpec(
        name="cosyvoice", title="CosyVoice's Python runtime, gRPC or FastAPI on :50000",
        protocols=PROTOCOLS, default_port=RUNTIME_PORT,
        targets={"grpc": "cvload.targets.cosyvoice_grpc:CosyVoiceGrpc",
                 "http": "cvload.targets.cosyvoice_http:CosyVoiceHttp"},
        options="cvload.targets.cosyvoice_common:RuntimeOptions", emulator="cvload.emulator.launch:RuntimeEmulator",
        chunk="sentence", describe="cosyvoice runtime, {protocol} {inference}; chunk = {chunk}",
        default_inference="zero_shot/sft",
    ),
    ApiSpec(
        name="openai", title="OpenAI-style speech, POST /v1/audio/speech",
        protocols=("http",), endpoint_url=True, token_env="OPENAI_API_KEY",
        targets={"http": "cvload.targets.openai_speech:OpenAISpeech"},
        options="cvload.targets.openai_speech:SpeechOptions", emulator="cvload.emulator.launch:OpenAIEmulator",
        chunk="one HTTP chunk (a response with a length: one network read)",
    ),
)}
DEFAULT_API = "triton"
APIS = tuple(REGISTRY)


def api_spec(name: str | None) -> ApiSpec:
    """The spec of ``--api NAME`` (None: the default, Triton); an unknown name is a UsageError."""
    spec = REGISTRY.get(name or DEFAULT_API)
    if spec is None:
        raise UsageError(f"--api {name!r}: use one of {', '.join(APIS)}")
    return spec


def api_help() -> str:
    """The ``--api`` choices in words, the default first, for ``--help``."""
    return "; ".join(f"{spec.name} ({spec.title}{', the default' if spec.name == DEFAULT_API else ''})"
                     for spec in REGISTRY.values())


def run_label(api: str | None, protocol: str | None, mode: str | None, name: str | None = None) -> str:
    """A run's results folder stem (a sweep's gets ``sweep-`` before it): ``streaming-grpc``, ``openai-http``,
    then the scenario's name."""
    return api_spec(api).label(protocol, mode) + (f"-{name}" if name else "")


def target_label(api: str | None, protocol: str | None, mode: str | None, model: str, servers: list[str],
                 inference: str | None = None) -> str:
    """The target of a run in one line, as the console and the dashboard show it:
    ``cosyvoice2 @ host:8001 (grpc streaming)``."""
    return f"{model} @ {', '.join(servers) or '?'} ({api_spec(api).words(protocol, mode, inference)})"
