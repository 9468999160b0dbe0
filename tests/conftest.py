"""Shared real servers: one embedded Triton (CosyVoice emulator) per test session, more only where a test must
break its server. Nothing here mocks Triton or tritonclient."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cvload.emulator import EmulatedModel, build_repository, get_profile
from cvload.triton.launcher import TritonServer


@dataclass
class Emulator:
    """A started server, its gRPC and HTTP addresses, and the folder its repository and traces are in."""

    server: TritonServer
    root: Path
    grpc: str = field(init=False)
    http: str = field(init=False)

    def __post_init__(self) -> None:
        self.grpc, self.http = self.server.grpc_url, self.server.http_url

    def trace(self, model: str = "cosyvoice2") -> Path:
        return self.root / f"{model}.trace.jsonl"


# The session server's models: name -> (profile, mode, profile overrides)
SESSION_MODELS = [
    EmulatedModel(name="cosyvoice2", profile=get_profile("fixed"), mode="streaming"),
    EmulatedModel(name="cosyvoice2_offline", profile=get_profile("instant"), mode="offline"),
    EmulatedModel(name="cosyvoice2_instant", profile=get_profile("instant"), mode="streaming"),
    EmulatedModel(name="cosyvoice2_faulty", profile=get_profile("faulty", {"seed": 7}), mode="streaming"),
    EmulatedModel(name="cosyvoice2_demo", profile=get_profile("demo"), mode="streaming"),
]


# On stop, exit without unloading the models one by one (about a second per stub process, 5 s for this server):
# what these servers are for is serving; the clean stop itself is tested in test_launcher.py and test_serve_cli.py.
FAST_EXIT = ["--exit-timeout-secs=0"]


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    root = tmp_path_factory.mktemp("emulator")
    repo = build_repository(root, SESSION_MODELS)
    with TritonServer(repo, workdir=root / "server", die_with_parent=True, extra_args=FAST_EXIT) as server:
        yield Emulator(server, root)


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """Start a private server (for tests that kill or misconfigure it); stopped after the test."""
    started: list[TritonServer] = []

    def start(models: list[EmulatedModel], **kwargs: object) -> Emulator:
        root = tmp_path / f"emu{len(started)}"
        repo = build_repository(root, models)
        kwargs.setdefault("extra_args", FAST_EXIT)
        server = TritonServer(repo, workdir=root / "server", die_with_parent=True, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        server.start()
        return Emulator(server, root)

    yield start
    for server in started:
        server.stop()
