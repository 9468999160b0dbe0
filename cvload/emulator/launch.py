"""The emulated server that stands in for each server API, started one way for ``serve`` and ``--emulator``.

``cvload serve`` runs it in the foreground on given ports; a run's ``--emulator`` in the results folder on free
ports.

Each API's spec (``cvload.apis``) names its class here. An ``Emulator`` starts and stops its server, says which
address a run of each protocol points at and where its metrics are, and what ``serve`` prints once it is ready,
down to the exact ``cvload run`` line that measures it (with ``--metrics-url`` where the server has metrics: a
guess from the gRPC port is wrong as soon as the ports are not Triton's neighbours).
"""

from __future__ import annotations

import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvload.emulator.profiles import Profile


@dataclass
class EmulatorSettings:
    """What starting an emulated server takes: from ``cvload serve``'s flags or a run's settings."""

    profile: Profile
    model: str = "cosyvoice2"
    mode: str = "streaming"  # Triton: a decoupled (streaming) or offline front model
    pipeline: bool = False  # Triton: the real repository's five models
    max_conc: int | None = None  # cosyvoice: its --max_conc (default 4); openai: a 429 cap (default none)
    sample_rate: int | None = None  # cosyvoice: the rate the model speaks at
    host: str = "127.0.0.1"
    http_port: int | None = None  # None: a free port
    grpc_port: int | None = None
    metrics_port: int | None = None
    workdir: Path | None = None  # None: a temporary folder, removed after a clean stop
    server_folder: str | None = None  # Triton: its log and backend files in workdir/<this> (None: workdir)
    tritonserver: str | None = None
    ready_timeout: float | None = None  # None: the server's own default
    token: str | None = None  # openai: the bearer token it wants
    die_with_parent: bool = True
    # Triton: unload the models on stop, a clean exit (about a second per model instance, one after another: over
    # ten for a pipeline with eight front instances); False exits at once and the launcher's stop ends the stubs
    # and removes their memory: for a run's --emulator, stopped only once its results are written.
    unload_on_stop: bool = True
    texts: tuple[str, ...] = ()  # spoken into the speech cache before the start, with the built-in set


class Emulator(ABC):
    """One API's emulated server, not yet started; ``start()`` returns once it serves."""

    what = "the emulator"  # in messages: "stopping the emulator...", "the emulator exited unexpectedly"

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.server: Any = None

    @abstractmethod
    def start(self) -> Emulator:
        """Start the server and wait until it serves (a failed start stops what it began and raises)."""

    def _start(self) -> None:
        if self.settings.ready_timeout:  # else the server's own default
            self.server.ready_timeout = self.settings.ready_timeout
        self.server.start()

    def stop(self, *, keep_failed: bool = True) -> None:
        """Stop the server; safe to call twice. ``keep_failed``: keep a failed server's folder for its log."""
        if self.server is not None:
            self.server.stop()

    def alive(self) -> bool:
        return self.server is not None and bool(self.server.alive())

    @property
    def log_path(self) -> Path | None:
        return getattr(self.server, "log_path", None)

    @property
    def failed(self) -> bool:
        """The server failed to start, died, or needed killing."""
        return self.server is not None and self.server.clean_exit is False

    @abstractmethod
    def address(self, protocol: str) -> str:
        """What a run of ``protocol`` passes as ``--server``."""

    @property
    def metrics_url(self) -> str | None:
        """The server's Prometheus endpoint (None: it has none)."""
        return None

    @property
    def trace_path(self) -> Path | None:
        """Where the server writes one JSON line per request (arrival, sends, the client's cancellation): the
        truth ``--barge-in`` reads the server's release time from. None: it keeps none."""
        return None

    @abstractmethod
    def ready_lines(self) -> list[str]:
        """What ``serve`` prints once the server is ready: a headline, then one line per endpoint."""

    @abstractmethod
    def run_line(self) -> str:
        """The ``cvload run`` command that measures this server, every address and port spelled out."""

    def _max_conc(self, default: int, least: int) -> int:
        from cvload.errors import UsageError

        max_conc = self.settings.max_conc or default
        if max_conc < least:
            raise UsageError(f"--max-conc must be at least {least}, got {max_conc}")
        return max_conc


class TritonEmulator(Emulator):
    """The embedded tritonserver with the CosyVoice emulator's model repository (one model or the pipeline)."""

    what = "tritonserver"

    def __init__(self, settings: EmulatorSettings) -> None:
        super().__init__(settings)
        self.root: Path | None = None
        self.kept: Path | None = None  # a temporary folder kept after a failure, for its log
        self._own_root = False

    def start(self) -> TritonEmulator:
        from cvload.emulator import EmulatedModel, build_pipeline_repository, build_repository
        from cvload.triton.launcher import TritonServer, trace_args

        s = self.settings
        self._own_root = s.workdir is None
        self.root = root = Path(tempfile.mkdtemp(prefix="cvload-serve-")) if s.workdir is None else s.workdir
        if s.pipeline:
            repo = build_pipeline_repository(root, s.profile, name=s.model, mode=s.mode, texts=s.texts)
        else:
            repo = build_repository(root, [EmulatedModel(name=s.model, profile=s.profile, mode=s.mode)],
                                    texts=s.texts)
        self.server = TritonServer(repo, host=s.host, http_port=s.http_port, grpc_port=s.grpc_port,
                                   metrics_port=s.metrics_port, tritonserver=s.tritonserver,
                                   workdir=root / s.server_folder if s.server_folder else root,
                                   die_with_parent=s.die_with_parent,
                                   extra_args=[*trace_args(root / "triton_trace.json"),
                                               *([] if s.unload_on_stop else ["--exit-timeout-secs=0"])])
        self._start()
        return self

    def stop(self, *, keep_failed: bool = True) -> None:
        super().stop()
        if self._own_root and self.root is not None:  # a folder of our own: kept after a failure, for its log
            log = self.log_path
            if keep_failed and self.failed and log is not None and log.exists():
                self.kept = self.root
            else:
                shutil.rmtree(self.root, ignore_errors=True)
            self._own_root = False

    def address(self, protocol: str) -> str:
        return str(self.server.grpc_url if protocol == "grpc" else self.server.http_url)

    @property
    def metrics_url(self) -> str | None:
        return str(self.server.metrics_url)

    @property
    def trace_path(self) -> Path | None:
        return None if self.root is None else self.root / f"{self.settings.model}.trace.jsonl"

    def ready_lines(self) -> list[str]:
        from cvload.emulator import pipeline_models

        s, ep = self.settings, self.server.endpoints()
        shape = f", pipeline: {s.model} calling {', '.join(pipeline_models(s.model)[1:])}" if s.pipeline else ""
        return [f"cvload emulator ready: model {s.model} ({s.mode}, profile {s.profile.name}{shape})",
                f"  grpc     {ep['grpc']}", f"  http     {ep['http']}", f"  metrics  {ep['metrics']}",
                f"  log      {ep['log']}"]

    def run_line(self) -> str:
        return (f"cvload run --server {self.server.grpc_url} --mode {self.settings.mode} "
                f"--metrics-url {self.server.metrics_url} --requests 20")


class RuntimeEmulator(Emulator):
    """CosyVoice's Python runtime, emulated: its gRPC service and its FastAPI app on their own ports."""

    what = "the emulated runtime"

    def start(self) -> RuntimeEmulator:
        from cvload.emulator.runtime_server import DEFAULT_MAX_CONC, RuntimeServer

        s = self.settings
        self.server = RuntimeServer(s.profile, host=s.host, grpc_port=s.grpc_port, http_port=s.http_port,
                                    max_conc=self._max_conc(DEFAULT_MAX_CONC, 1),
                                    sample_rate=s.sample_rate or 24000, workdir=s.workdir,
                                    die_with_parent=s.die_with_parent, texts=s.texts)
        self._start()
        return self

    def address(self, protocol: str) -> str:
        return str(self.server.grpc_url if protocol == "grpc" else self.server.http_url)

    @property
    def trace_path(self) -> Path | None:
        return Path(self.server.trace_path)

    def ready_lines(self) -> list[str]:
        s, ep = self.settings, self.server.endpoints()
        return [f"cvload emulator ready: CosyVoice Python runtime (profile {s.profile.name}, max_conc "
                f"{self.server.max_conc}, {self.server.sample_rate} Hz; one response per sentence)",
                f"  grpc     {ep['grpc']}",
                f"  http     {ep['http']}  (FastAPI: /inference_sft, _zero_shot, _cross_lingual, _instruct, "
                "_instruct2)",
                f"  log      {ep['log']}"]

    def run_line(self) -> str:
        return f"cvload run --api cosyvoice --server {self.server.grpc_url} --requests 20"


class OpenAIEmulator(Emulator):
    """An OpenAI-style speech server (``POST /v1/audio/speech``) with the CosyVoice emulator's timing."""

    what = "the OpenAI-style emulator"

    def start(self) -> OpenAIEmulator:
        from cvload.emulator.openai_server import OpenAIServer

        s = self.settings
        self.server = OpenAIServer(s.profile, model=s.model, host=s.host, port=s.http_port,
                                   max_conc=self._max_conc(0, 0), token=s.token, workdir=s.workdir,
                                   die_with_parent=s.die_with_parent, texts=s.texts)
        self._start()
        return self

    def address(self, protocol: str) -> str:
        return str(self.server.url)

    @property
    def trace_path(self) -> Path | None:
        return Path(self.server.trace_path)

    def ready_lines(self) -> list[str]:
        from cvload.emulator.openai_server import TOKEN_ENV

        s, ep = self.settings, self.server.endpoints()
        cap = f", at most {self.server.max_conc} in flight" if self.server.max_conc else ""
        token = f", bearer token from {TOKEN_ENV}" if self.server.token else ""
        return [f"cvload openai emulator ready: model {s.model} (profile {s.profile.name}{cap}{token})",
                f"  speech   POST {ep['speech']}", f"  log      {ep['log']}"]

    def run_line(self) -> str:
        return f"cvload run --api openai --server {self.server.url} --requests 20"
