"""``--api cosyvoice``: CosyVoice's Python runtime over gRPC and HTTP, against the emulated runtime, a real grpcio
server and a real FastAPI app under uvicorn in a child process (no mocks, no fake protocol servers).

The runtime answers one whole sentence at a time. With the ``fixed`` profile the first sentence leaves exactly
200 ms after the request arrived and one more every 100 ms; the emulator's audio depends only on the text, so
the same text must come back sample for sample over both protocols.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from runs import records_of

from cvload.cosyvoice_runtime import cosyvoice_pb2
from cvload.emulator import get_profile
from cvload.emulator.runtime_server import RuntimeServer, sentences, speech_seconds
from cvload.errors import UsageError
from cvload.results.records import ERR_PROTOCOL, ERR_REJECTED, ERR_SERVER
from cvload.settings.config import RunConfig
from cvload.targets import make_target
from cvload.targets.base import SynthesisRequest, Target, TargetError
from cvload.targets.cosyvoice_http import status_error

ROOT = Path(__file__).resolve().parent.parent
TEXT = "Hello there. This is a test of the broadcast system! A third sentence ends here."
PROMPT = (0.1 * np.sin(np.arange(48000) * 2 * np.pi * 220 / 16000)).astype(np.float32)  # 3 s at 16 kHz
KINDS = {"grpc": ("sft", "zero_shot", "cross_lingual", "instruct"),
         "http": ("sft", "zero_shot", "cross_lingual", "instruct", "instruct2")}
_ids = iter(range(10**9))


def expected_samples(text: str, rate: int = 24000) -> list[int]:
    return [max(1, round(speech_seconds(s) * rate)) for s in sentences(text)]


def request(text: str = TEXT, prompt: bool = True) -> SynthesisRequest:
    return SynthesisRequest(request_id=f"t{next(_ids)}", target_text=text, item_id="item",
                            reference_text="a prompt" if prompt else None, reference_wav=PROMPT if prompt else None)


@pytest.fixture(scope="module")
def runtime() -> Iterator[RuntimeServer]:
    with RuntimeServer(get_profile("fixed"), max_conc=8, die_with_parent=True, texts=(TEXT,)) as server:
        yield server


def target(server: RuntimeServer, protocol: str, **options: object) -> Target:
    address = server.grpc_url if protocol == "grpc" else server.http_url
    return make_target(protocol, "streaming", address, api="cosyvoice", timeout=10.0,
                       config=RunConfig(**options))  # type: ignore[arg-type]


async def synthesize(t: Target, req: SynthesisRequest) -> tuple[float, list]:
    sent = time.monotonic()
    return sent, [chunk async for chunk in t.synthesize(req)]


@pytest.mark.alone
@pytest.mark.parametrize("protocol,kind", [(p, k) for p, kinds in KINDS.items() for k in kinds])
async def test_every_request_kind_answers_one_chunk_per_sentence(runtime, protocol, kind):
    t = target(runtime, protocol, inference=kind, instruct_text="slowly, please")
    info = await t.open()
    try:
        sent, chunks = await synthesize(t, request())
    finally:
        await t.close()
    assert info.protocol == protocol and info.mode == "sentence"
    assert [c.samples for c in chunks] == expected_samples(TEXT)
    assert not any(c.decoded for c in chunks)  # counted by length, nothing decoded on the way
    offsets = [c.t - sent for c in chunks]
    for i, offset in enumerate(offsets):  # sentence i leaves 200 + 100 i ms after arrival (a server's first
        assert 0.2 + 0.1 * i <= offset < 0.2 + 0.1 * i + 0.15, offsets  # request may arrive late: a slow CPU)
    assert all(c.sample_rate == 24000 for c in chunks)


async def test_both_protocols_carry_the_same_samples(runtime):
    audio = {}
    for protocol in ("grpc", "http"):
        t = target(runtime, protocol, inference="sft")
        await t.open()
        try:
            _, chunks = await synthesize(t, request(prompt=False))
        finally:
            await t.close()
        audio[protocol] = np.concatenate([c.audio for c in chunks])
    assert audio["grpc"].size == sum(expected_samples(TEXT))
    assert np.array_equal(audio["grpc"], audio["http"])
    assert 0.01 < float(np.abs(audio["grpc"]).mean()) < 0.5


async def test_default_kind_follows_the_prompt(runtime):
    t = target(runtime, "http")
    await t.open()
    try:
        for prompt in (True, False):  # zero_shot with a prompt, sft without: both answered
            _, chunks = await synthesize(t, request(prompt=prompt))
            assert len(chunks) == 3
        with pytest.raises(TargetError) as err:  # a kind that needs a prompt, for an item without one
            await synthesize(target(runtime, "http", inference="cross_lingual"), request(prompt=False))
        assert err.value.kind == ERR_PROTOCOL and "no prompt audio" in err.value.message
    finally:
        await t.close()


def test_request_options_the_protocol_cannot_send_are_usage_errors(runtime):
    with pytest.raises(UsageError, match="(?s)instruct2.*--protocol http"):
        target(runtime, "grpc", inference="instruct2", instruct_text="x")
    with pytest.raises(UsageError, match="--instruct-text"):
        target(runtime, "http", inference="instruct")


async def test_fastapi_takes_get_with_a_form_body_as_upstreams_client_sends(runtime):
    form = aiohttp.FormData()
    form.add_field("tts_text", "One sentence only.")
    form.add_field("prompt_text", "a prompt")
    from cvload.targets.cosyvoice_common import pcm16, wav_file

    form.add_field("prompt_wav", wav_file(pcm16(PROMPT)), filename="prompt_wav",
                   content_type="application/octet-stream")
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://{runtime.http_url}/inference_zero_shot", data=form) as resp:
        body = await resp.read()
        assert resp.status == 200 and "content-type" not in resp.headers  # raw int16, no content type
    assert len(body) == 2 * expected_samples("One sentence only.")[0]


async def test_http_refusals_name_the_route_and_field(runtime):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{runtime.http_url}/inference_sft", data={"tts_text": "hi"}) as resp:
            error = status_error(resp.status, await resp.read(), "POST", "/inference_sft")
        assert error.kind == ERR_SERVER
        assert "HTTP 422 on POST /inference_sft" in error.message and "field spk_id" in error.message
        async with session.post(f"http://{runtime.http_url}/inference_nope", data={"tts_text": "hi"}) as resp:
            error = status_error(resp.status, await resp.read(), "POST", "/inference_nope")
        assert "HTTP 404 on POST /inference_nope" in error.message and "no such route" in error.message


async def test_odd_byte_http_chunks_carry_the_half_sample_over(runtime):
    """Each sentence sent in 1001-byte HTTP chunks: every chunk but the last of a sentence splits a sample."""
    t = target(runtime, "http", inference="sft")
    await t.open()
    try:
        _, whole = await synthesize(t, request(prompt=False))
    finally:
        await t.close()
    with RuntimeServer(get_profile("instant"), split_bytes=1001, die_with_parent=True) as split:
        t = target(split, "http", inference="sft")
        await t.open()
        try:
            _, parts = await synthesize(t, request(prompt=False))
        finally:
            await t.close()
    assert len(parts) > 3 * len(whole)  # one chunk per HTTP chunk
    assert {c.samples for c in parts[:5]} == {500, 501}  # 1001 bytes: 500 samples and a byte, then 501 ...
    assert sum(c.samples for c in parts) == sum(c.samples for c in whole)
    assert np.array_equal(np.concatenate([c.audio for c in parts]), np.concatenate([c.audio for c in whole]))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_calls_past_max_conc_are_rejected(protocol):
    # Each accepted call holds its slot for 1.2 s (first sentence at 1 s), so all four calls reach the server while
    # the first ones are in flight even on a busy machine.
    slow = get_profile("fixed", {"fixed_first_s": 1.0})
    with RuntimeServer(slow, max_conc=2, die_with_parent=True) as server:
        t = target(server, protocol, inference="sft")
        await t.open()
        try:
            results = await asyncio.gather(*(synthesize(t, request(prompt=False)) for _ in range(4)),
                                           return_exceptions=True)
        finally:
            await t.close()
    rejected = [r for r in results if isinstance(r, TargetError)]
    # Never more than --max_conc served; grpcio frees a finished call's slot a moment late, so on a busy machine
    # the slot of open()'s probe call was once still taken and a third call was refused.
    assert 2 <= len(rejected) <= (3 if protocol == "grpc" else 2) and len(rejected) < len(results), results
    assert all(r.kind == ERR_REJECTED and "--max_conc" in r.message for r in rejected)
    assert ("RESOURCE_EXHAUSTED" if protocol == "grpc" else "HTTP 503") in rejected[0].message


async def test_the_wrong_api_says_which_api_the_server_looks_like(emulator, runtime):
    for protocol, triton in (("grpc", emulator.grpc), ("http", emulator.http)):
        t = make_target(protocol, "streaming", triton, api="cosyvoice")
        with pytest.raises(UsageError) as err:
            await t.open()
        assert "Triton server" in str(err.value) and "--api triton" in str(err.value)
        await t.close()
    for protocol, address in (("grpc", runtime.grpc_url), ("http", runtime.http_url)):
        t = make_target(protocol, "streaming", address)  # --api triton (the default)
        with pytest.raises(UsageError) as err:
            await t.open()
        assert "not a Triton server" in str(err.value) and "--api cosyvoice" in str(err.value)
        await t.close()


def run_cli(tmp_path: Path, *args: str) -> tuple[int, dict, list[dict]]:
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "cvload", "run", "--emulator", "--api", "cosyvoice", "--quiet",
                           "--out", str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    records = records_of(out) if (out / "records.jsonl").exists() else []
    assert summary, proc.stdout + proc.stderr
    return proc.returncode, summary, records


def test_run_counts_refusals_as_rejected_and_names_the_api(tmp_path):
    code, summary, records = run_cli(tmp_path, "--protocol", "grpc", "--profile", "fixed", "--max-conc", "2",
                                     "--num-tasks", "4", "--requests", "12", "--ramp", "0")
    assert code == 0
    assert summary["errors"]["rejected"] > 0 and summary["requests"]["ok"] > 0
    assert summary["errors"]["rejected"] + summary["requests"]["ok"] == 12
    assert summary["target"]["api"] == "cosyvoice" and summary["target"]["mode"] == "sentence"
    ok = [r for r in records if r["error_kind"] is None]
    assert all(len(r["chunk_offsets"]) == len(sentences(r["text"])) for r in ok)  # chunks per request: sentences
    assert summary["telemetry"]["sources"]["metrics"]["url"] is None  # no Triton metrics beside this API


def test_sample_rate_override_sets_the_audio_seconds(tmp_path):
    """An emulated CosyVoice-300M (22050 Hz) measured with --sample-rate 22050: audio seconds match the text."""
    code, _, records = run_cli(tmp_path, "--protocol", "http", "--profile", "instant", "--sample-rate", "22050",
                               "--requests", "3", "--gpu-source", "none", "--metrics-url", "none")
    assert code == 0
    for r in records:
        assert r["sample_rate"] == 22050
        assert r["chunk_samples"] == expected_samples(r["text"], 22050)
        assert sum(r["chunk_samples"]) / r["sample_rate"] == pytest.approx(
            sum(speech_seconds(s) for s in sentences(r["text"])), abs=0.01)


def test_serve_runs_the_runtime_in_the_foreground_and_stops_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "cvload", "serve", "--emulator", "--api", "cosyvoice",
                             "--max-conc", "3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1"))
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("try:"):
                break
        text = "".join(lines)
        assert "CosyVoice Python runtime" in text and "max_conc 3" in text, text
        grpc_address = next(ln.split()[1] for ln in lines if ln.strip().startswith("grpc"))

        async def one() -> int:
            t = make_target("grpc", "streaming", grpc_address, api="cosyvoice", config=RunConfig(inference="sft"))
            await t.open()
            try:
                return len([c async for c in t.synthesize(request(prompt=False))])
            finally:
                await t.close()

        assert asyncio.run(one()) == 3
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=20)[0]
        assert proc.returncode == 0 and "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_generated_stubs_match_the_proto_and_keep_to_their_package(tmp_path):
    assert cosyvoice_pb2.DESCRIPTOR.name == "cvload/cosyvoice_runtime/cosyvoice.proto"  # no clash with upstream's
    assert cosyvoice_pb2.DESCRIPTOR.services_by_name["CosyVoice"].full_name == "cosyvoice.CosyVoice"
    request_fields = {f.name: f.number for f in cosyvoice_pb2.Request.DESCRIPTOR.fields}
    assert request_fields == {"sft_request": 1, "zero_shot_request": 2, "cross_lingual_request": 3,
                              "instruct_request": 4}
    protoc = pytest.importorskip("grpc_tools.protoc")
    folder = "cvload/cosyvoice_runtime"
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / "cosyvoice.proto").write_bytes((ROOT / folder / "cosyvoice.proto").read_bytes())
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert protoc.main(["protoc", "-I.", "--python_out=.", "--pyi_out=.", "--grpc_python_out=.",
                            f"{folder}/cosyvoice.proto"]) == 0
    finally:
        os.chdir(cwd)
    for name in ("cosyvoice_pb2.py", "cosyvoice_pb2.pyi", "cosyvoice_pb2_grpc.py"):
        fresh = (tmp_path / folder / name).read_text()
        committed = (ROOT / folder / name).read_text()
        # Only the generator's version stamps may differ: regenerate after editing the proto.
        strip = [ln for ln in fresh.splitlines() if "ersion" not in ln]
        assert strip == [ln for ln in committed.splitlines() if "ersion" not in ln], f"{name} is stale"
