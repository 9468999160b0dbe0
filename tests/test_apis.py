"""The API registry (``cvload.apis``): every spec names classes that exist and fit, and one label function
names every run, sweep and target of every API."""

from __future__ import annotations

import pytest

from cvload.apis import APIS, REGISTRY, api_spec, run_label, target_label
from cvload.emulator.launch import Emulator
from cvload.errors import UsageError
from cvload.settings.config import RunConfig
from cvload.targets import make_target
from cvload.targets.base import Target


@pytest.mark.parametrize("name", APIS)
def test_every_spec_names_targets_options_and_an_emulator_that_fit(name: str) -> None:
    spec = api_spec(name)
    options_class = None
    for protocol in spec.protocols:
        for mode in spec.modes or ("streaming",):
            cls = spec.target_class(protocol, mode)
            assert issubclass(cls, Target) and cls.protocol == protocol
            options = spec.target_options(None, protocol)
            options_class = options_class or type(options)
            assert type(options) is options_class  # one typed options class per API
            target = cls("127.0.0.1:1" if not spec.endpoint_url else "http://127.0.0.1:1/v1/audio/speech",
                         options=options)
            assert target.options is options
    emulator = spec.emulated(None)
    assert isinstance(emulator, Emulator)


def test_targets_get_their_api_s_typed_options_from_the_run_settings() -> None:
    runtime = make_target("grpc", "streaming", "127.0.0.1:1", config=RunConfig(
        api="cosyvoice", inference="instruct", instruct_text="calm", spk_id="s1", sample_rate=22050))
    assert (runtime.options.inference, runtime.options.spk_id, runtime.sample_rate) == ("instruct", "s1", 22050)
    speech = make_target("http", "streaming", "http://127.0.0.1:1/v1/audio/speech", config=RunConfig(
        api="openai", voice="alloy", response_format="wav", instruct_text="slowly"))
    assert (speech.voice, speech.response_format, speech.instructions, speech.mode) == (
        "alloy", "wav", "slowly", "offline")
    with pytest.raises(UsageError, match="--inference instruct2: the runtime's gRPC service has no such request"):
        make_target("grpc", "streaming", "127.0.0.1:1", config=RunConfig(api="cosyvoice", inference="instruct2",
                                                                       instruct_text="x"))
    with pytest.raises(UsageError, match="no target for --protocol 'websocket'"):
        make_target("websocket", "streaming", "127.0.0.1:1")


def test_one_label_per_run_sweep_and_target() -> None:
    assert run_label("triton", "grpc", "streaming") == "streaming-grpc"
    assert run_label(None, "http", "offline", "nightly") == "offline-http-nightly"
    assert run_label("cosyvoice", "grpc", "streaming") == "cosyvoice-grpc"
    assert run_label("openai", "http", "streaming") == "openai-http"  # a sweep's folder: sweep-openai-http
    assert target_label("triton", "grpc", "streaming", "cosyvoice2", ["h:8001"]) == (
        "cosyvoice2 @ h:8001 (grpc streaming)")
    assert target_label("cosyvoice", "grpc", "sentence", "cosyvoice2", ["h:50000"]) == (
        "cosyvoice2 @ h:50000 (cosyvoice runtime, grpc zero_shot/sft; chunk = sentence)")
    assert target_label("openai", "http", "streaming", "m", []) == "m @ ? (openai http)"


def test_addresses_take_each_api_s_default_port() -> None:
    assert RunConfig(server=["h"]).validate().addresses() == ["h:8001"]
    assert RunConfig(server=["h"], protocol="http").validate().addresses() == ["h:8000"]
    assert RunConfig(server=["h"], api="cosyvoice").validate().addresses() == ["h:50000"]
    assert RunConfig(server=["h:9"], api="openai").validate().addresses() == ["http://h:9/v1/audio/speech"]
    with pytest.raises(UsageError, match="--api 'grpc': use one of triton, cosyvoice, openai"):
        RunConfig(server=["h"], api="grpc").validate()
    assert set(REGISTRY) == set(APIS)
