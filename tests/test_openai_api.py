"""``--api openai`` against the real OpenAI-style emulator (an aiohttp.web server in its own process) and, for a
wrong ``--api``, against the session's real Triton server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from runs import records_of

from cvload.emulator.openai_server import OpenAIServer, wav_header
from cvload.emulator.profiles import get_profile
from cvload.emulator.single_model import SAMPLES_PER_TOKEN, chunk_schedule, speech_tokens
from cvload.errors import ServerError, UsageError
from cvload.load.session import Session
from cvload.results.records import ERR_REJECTED
from cvload.settings.address import speech_url
from cvload.settings.config import RunConfig
from cvload.targets import make_target
from cvload.targets.base import Chunk, SynthesisRequest
from cvload.targets.openai_speech import API_KEY_ENV, OpenAISpeech, WavHeader, error_detail

TEXT = "Hello there, this is a test of the speech system."
TOKEN = "s3cret-token-for-tests"
FIXED = get_profile("fixed")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    with OpenAIServer(FIXED, workdir=tmp_path_factory.mktemp("openai"), die_with_parent=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    """At most 2 requests in flight, and a bearer token required."""
    with OpenAIServer(FIXED, max_conc=2, token=TOKEN, workdir=tmp_path_factory.mktemp("guarded"),
                      die_with_parent=True) as srv:
        yield srv


def target(url: str, **options: object) -> OpenAISpeech:
    config = RunConfig(api="openai", server=[url], **options).validate()  # type: ignore[arg-type]
    made = make_target(config.protocol, config.mode, config.addresses()[0], config.model, timeout=10.0,
                       api="openai", config=config)
    assert isinstance(made, OpenAISpeech)
    return made


async def synthesize(t: OpenAISpeech, text: str = TEXT) -> tuple[float, list[Chunk]]:
    await t.open()
    try:
        sent = time.monotonic()
        return sent, [c async for c in t.synthesize(SynthesisRequest("r", text))]
    finally:
        await t.close()


def expected_chunks(text: str = TEXT) -> list[int]:
    return [n * SAMPLES_PER_TOKEN for n in chunk_schedule(speech_tokens(text), json.loads(FIXED.to_json()))]


def smooth(audio: np.ndarray) -> bool:
    """The emulator's voice moves a little from sample to sample; bytes read one off would jump wildly."""
    return bool(np.abs(np.diff(audio)).max() < 0.5)


# ---- settings ------------------------------------------------------------------------------------------------
def test_openai_implies_http_and_refuses_grpc() -> None:
    assert RunConfig(api="openai", server=["h"]).validate().protocol == "http"
    assert RunConfig(server=["h"]).validate().protocol == "grpc"
    with pytest.raises(UsageError, match="--api openai speaks http, not --protocol grpc"):
        RunConfig(api="openai", server=["h"], protocol="grpc").validate()


def test_speech_url_rules() -> None:
    assert speech_url("gpu-host") == "http://gpu-host:8000/v1/audio/speech"
    assert speech_url("http://gpu-host:8080") == "http://gpu-host:8080/v1/audio/speech"
    assert speech_url("https://api.example.com/v1") == "https://api.example.com:443/v1/audio/speech"
    assert speech_url("http://h:9/openai/v1/") == "http://h:9/openai/v1/audio/speech"
    assert speech_url("http://h:9/tts/speech") == "http://h:9/tts/speech"
    with pytest.raises(UsageError, match="--server 'grpc://h:1'"):
        speech_url("grpc://h:1")


def test_error_bodies_name_the_field() -> None:
    openai = b'{"error": {"message": "voice not found", "type": "invalid_request_error", "param": "voice"}}'
    assert error_detail(openai) == ("voice not found", "voice")
    fastapi = b'{"detail": [{"loc": ["body", "input"], "msg": "field required", "type": "missing"}]}'
    assert error_detail(fastapi) == ("body.input: field required", "input")
    assert error_detail(b"<html>oops</html>") == ("<html>oops</html>", None)


def test_wav_header_read_as_it_arrives() -> None:
    body = wav_header(8, rate=22050) + bytes(range(8))
    header, fed, samples = WavHeader(), [], b""
    for i in range(len(body)):  # one byte at a time; once the header is done, the rest is samples
        if header.done:
            samples += body[i:i + 1]
        else:
            fed.append(header.feed(body[i:i + 1]))
    assert fed == [None] * 43 + [b""] and header.rate == 22050 and header.dtype == "<i2"
    assert samples == bytes(range(8))


# ---- the measured request ------------------------------------------------------------------------------------
@pytest.mark.alone
def test_pcm_streams_one_chunk_per_emulated_chunk_at_the_profiles_times(server: OpenAIServer) -> None:
    sent, chunks = asyncio.run(synthesize(target(server.url)))
    assert [c.samples for c in chunks] == expected_chunks()
    assert not any(c.decoded for c in chunks)  # nothing decoded on the measuring path
    first = chunks[0].t - sent
    assert 0.200 <= first < 0.260  # fixed_first_s; the bound is loose for a busy 2-core machine
    gaps = np.diff([c.t for c in chunks])
    assert np.all(np.abs(gaps - 0.100) < 0.040)
    assert all(c.sample_rate == 24000 for c in chunks)
    assert smooth(np.concatenate([c.audio for c in chunks]))


def test_wav_first_sample_arrives_after_the_whole_synthesis(server: OpenAIServer) -> None:
    sent, chunks = asyncio.run(synthesize(target(server.url, response_format="wav")))
    n = len(expected_chunks())
    assert sum(c.samples for c in chunks) == sum(expected_chunks())
    assert chunks[0].t - sent >= 0.200 + (n - 1) * 0.100  # a whole file: sent when the last chunk is ready
    assert all(c.sample_rate == 24000 for c in chunks)
    assert smooth(np.concatenate([c.audio for c in chunks]))


def test_sample_rate_override_applies_to_pcm_not_to_wav_headers(server: OpenAIServer) -> None:
    _, pcm = asyncio.run(synthesize(target(server.url, sample_rate=22050)))
    assert {c.sample_rate for c in pcm} == {22050}
    _, wav = asyncio.run(synthesize(target(server.url, sample_rate=22050, response_format="wav")))
    assert {c.sample_rate for c in wav} == {24000}  # the file says its rate


def test_odd_byte_splits_are_carried_over(tmp_path: Path) -> None:
    with OpenAIServer(FIXED, odd_splits=True, workdir=tmp_path, die_with_parent=True) as odd:
        _, chunks = asyncio.run(synthesize(target(odd.url)))
    expected = expected_chunks()
    samples = [c.samples for c in chunks]
    assert len(chunks) == 2 * len(expected)  # one chunk per HTTP chunk, each cut inside a sample
    assert [a + b for a, b in zip(samples[::2], samples[1::2])] == expected
    assert smooth(np.concatenate([c.audio for c in chunks]))


# ---- errors ----------------------------------------------------------------------------------------------------
def test_over_the_cap_requests_count_as_rejected(guarded: OpenAIServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, TOKEN)
    config = RunConfig(api="openai", server=[guarded.url], num_tasks=4, requests=8, out=str(tmp_path / "run"),
                       gpu_source="none", metrics_url="none")
    session = Session(config)
    asyncio.run(session.run(_Quiet()))
    summary = session.summary
    assert summary is not None
    assert summary["errors"][ERR_REJECTED] > 0 and summary["requests"]["ok"] > 0
    records = records_of(tmp_path / "run")
    rejected = [r for r in records if r["error_kind"] == ERR_REJECTED]
    assert rejected and "HTTP 429: server at its concurrency cap" in rejected[0]["error"]
    for name in ("config.json", "records.jsonl", "summary.json"):  # the token is written nowhere
        assert TOKEN not in (tmp_path / "run" / name).read_text()


def test_missing_and_wrong_token_fail_before_load(guarded: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(UsageError, match="HTTP 401") as missing:
        asyncio.run(target(guarded.url).open())
    assert f"set {API_KEY_ENV}" in str(missing.value)
    monkeypatch.setenv(API_KEY_ENV, "wrong")
    with pytest.raises(UsageError, match="HTTP 401") as wrong:
        asyncio.run(target(guarded.url).open())
    assert "was not accepted" in str(wrong.value) and "wrong" not in str(wrong.value)


def test_bad_field_and_route_are_named(server: OpenAIServer) -> None:
    with pytest.raises(UsageError, match="rejected field 'model'") as bad:
        asyncio.run(target(server.url, model="nope").open())
    assert "--model" in str(bad.value)
    with pytest.raises(UsageError, match=r"no route POST /tts/speech \(HTTP 404"):
        asyncio.run(target(server.url + "/tts/speech").open())


def test_openai_against_a_triton_port_says_it_is_triton(emulator) -> None:  # noqa: ANN001 - conftest fixture
    with pytest.raises(UsageError, match="looks like a Triton server") as wrong:
        asyncio.run(target(emulator.http).open())
    assert "--api triton" in str(wrong.value)


def test_unreachable_server_fails_fast() -> None:
    from cvload.triton.launcher import free_port

    start = time.monotonic()
    with pytest.raises(ServerError, match="cannot reach an OpenAI-style speech endpoint"):
        asyncio.run(target(f"127.0.0.1:{free_port()}").open())
    assert time.monotonic() - start < 5


# ---- cvload run --emulator --api openai ----------------------------------------------------------------------
def test_run_with_the_embedded_openai_emulator(tmp_path: Path) -> None:
    config = RunConfig(api="openai", emulator=True, profile="fixed", num_tasks=2, requests=4,
                       out=str(tmp_path / "run"), gpu_source="none")
    session = Session(config)
    code = asyncio.run(session.run(_Quiet()))
    assert code == 0 and session.server is None  # stopped on close
    summary = session.summary
    assert summary is not None and summary["requests"]["ok"] == 4
    assert summary["target"]["protocol"] == "http" and summary["target"]["servers"][0].endswith("/v1/audio/speech")
    sources = summary["telemetry"]["sources"]
    assert sources["metrics"]["status"] == "off" and sources["stats"]["status"] == "off"  # no Triton scraping
    assert any("--api openai: no Triton statistics" in w for w in summary["telemetry"]["warnings"])
    assert summary["metrics"]["first_chunk_latency_ms"]["min"] >= 200.0  # the fixed profile's first chunk


class _Quiet:
    def preparing(self, config: RunConfig) -> None:
        pass

    def attach(self, session: Session) -> None:
        pass

    def detach(self, session: Session) -> None:
        pass

    def final(self, session: Session, summary: dict) -> None:
        pass


def test_a_sweep_s_folder_names_its_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --out, an OpenAI sweep's folder says openai-http (it said streaming-http, Triton's words)."""
    from cvload.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["sweep", "--api", "openai", "--emulator", "--profile", "instant", "--num-tasks", "1,2",
                 "--requests", "2", "--gpu-source", "none", "--quiet"])
    assert code == 0
    [folder] = (tmp_path / "results").iterdir()
    assert folder.name.endswith("-sweep-openai-http") and (folder / "sweep.json").is_file()
