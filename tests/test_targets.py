"""The protocol targets against a real Triton server running the CosyVoice emulator (no mocks of gRPC/HTTP).

Session models (tests/conftest.py): cosyvoice2 [fixed: first chunk 200 ms after arrival, then every 100 ms],
cosyvoice2_instant [streaming], cosyvoice2_offline [offline]. The emulator's audio depends only on the text and
the request id, so the same (id, text) must come back sample for sample through every protocol and mode.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from cvload.emulator import EmulatedModel, build_repository, get_profile
from cvload.errors import ServerError, UsageError
from cvload.results.records import ERR_CONNECTION, ERR_PROTOCOL, ERR_SERVER, ERR_TIMEOUT
from cvload.settings.config import RunConfig
from cvload.targets import make_target
from cvload.targets.base import Chunk, SynthesisRequest, Target, TargetError
from cvload.targets.sse import SseParser
from cvload.targets.tensors import PromptCache, request_tensors
from cvload.targets.triton_grpc import decode_waveform
from cvload.targets.triton_http import JsonAudio, decode_event, decode_infer_response, read_event
from cvload.targets.triton_options import TritonOptions
from cvload.triton.launcher import TritonServer, free_port

# 11 words and 2 pauses: 4.68 s of speech = 117 tokens -> chunks of 25, 50, 42 tokens (960 samples each).
TEXT = "Hello there, this is a test of the emergency broadcast system."
TEXT_CHUNKS = [24000, 48000, 40320]
PROMPT = (0.1 * np.sin(np.arange(48000) * 2 * np.pi * 220 / 16000)).astype(np.float32)  # 3 s at 16 kHz
STREAMING = [("grpc", "cosyvoice2_instant"), ("http", "cosyvoice2_instant")]
OFFLINE = [("grpc", "cosyvoice2_offline"), ("http", "cosyvoice2_offline")]
_ids = iter(range(10**9))


def rid(tag: str) -> str:
    return f"t-{os.getpid()}-{tag}-{next(_ids)}"


def address(server: object, protocol: str) -> str:
    return server.grpc if protocol == "grpc" else server.http  # type: ignore[attr-defined]


@asynccontextmanager
async def opened(protocol: str, mode: str, where: str, model: str, timeout: float | None = 10.0
                 ) -> AsyncIterator[Target]:
    target = make_target(protocol, mode, where, model, timeout=timeout)
    await target.open()
    try:
        yield target
    finally:
        await target.close()


async def collect(target: Target, request: SynthesisRequest) -> list[Chunk]:
    return [chunk async for chunk in target.synthesize(request)]


async def fails(target: Target, request: SynthesisRequest) -> TargetError:
    with pytest.raises(TargetError) as info:
        await collect(target, request)
    return info.value


def audio(chunks: list[Chunk]) -> np.ndarray:
    return np.concatenate([c.audio for c in chunks])


async def trace(path: Path, request_id: str) -> dict:
    """The server's record of a request (written just after its final response: wait for it)."""
    deadline = time.monotonic() + 5
    while True:
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = json.loads(line)
            if entry["id"] == request_id:
                return entry  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"request {request_id} not in the server's trace {path}")
        await asyncio.sleep(0.01)


# ---- chunks, samples, final response -------------------------------------------------------------------------
@pytest.mark.parametrize(("protocol", "model"), STREAMING)
async def test_streaming_yields_the_servers_chunks(emulator, protocol, model):
    async with opened(protocol, "streaming", address(emulator, protocol), model) as target:
        for request in (SynthesisRequest(rid("spk"), TEXT),  # spk-cache: target_text only
                        SynthesisRequest(rid("zs"), TEXT, "a prompt transcript", PROMPT)):
            started = time.monotonic()
            chunks = await collect(target, request)
            assert [c.audio.size for c in chunks] == TEXT_CHUNKS
            assert all(c.audio.dtype == np.float32 and c.sample_rate == 24000 for c in chunks)
            times = [c.t for c in chunks]
            assert started < times[0] and times == sorted(times)
            # The id reached the server, which sent exactly these chunks.
            assert len((await trace(emulator.trace(model), request.request_id))["sends"]) == len(TEXT_CHUNKS)


@pytest.mark.parametrize(("protocol", "model"), OFFLINE)
async def test_offline_yields_one_chunk_with_the_whole_waveform(emulator, protocol, model):
    async with opened(protocol, "offline", address(emulator, protocol), model) as target:
        for request in (SynthesisRequest(rid("spk"), TEXT),
                        SynthesisRequest(rid("zs"), TEXT, "a prompt transcript", PROMPT, pad_to_samples=16000)):
            chunks = await collect(target, request)
            assert len(chunks) == 1 and chunks[0].audio.size == sum(TEXT_CHUNKS)
            assert (await trace(emulator.trace(model), request.request_id))["error"] is None


async def test_every_target_decodes_the_same_samples(emulator):
    """Raw gRPC bytes, HTTP binary tensors and SSE JSON arrays all decode to the server's exact float32 audio."""
    request = SynthesisRequest(rid("same"), TEXT, "a prompt transcript", PROMPT)
    results = []
    for protocol, model in STREAMING:
        async with opened(protocol, "streaming", address(emulator, protocol), model) as target:
            results.append(audio(await collect(target, request)))
    for protocol, model in OFFLINE:
        async with opened(protocol, "offline", address(emulator, protocol), model) as target:
            results.append(audio(await collect(target, request)))
    assert results[0].size == sum(TEXT_CHUNKS) and np.abs(results[0]).max() > 0.01
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_chunks_are_stamped_on_arrival_after_the_server_sent_them(emulator, protocol):
    """Fixed model: each chunk leaves the server at a known time; its stamp is after it and in order."""
    async with opened(protocol, "streaming", address(emulator, protocol), "cosyvoice2") as target:
        request = SynthesisRequest(rid("fixed"), "Hello there world.")  # 38 tokens: 2 chunks, 200 and 300 ms
        chunks = await collect(target, request)
    entry = await trace(emulator.trace("cosyvoice2"), request.request_id)
    assert len(chunks) == len(entry["sends"]) == 2
    for chunk, send in zip(chunks, entry["sends"]):
        assert chunk.t >= entry["arrival"] + send
    assert entry["sends"][0] >= 0.2


# ---- concurrency on one stream ------------------------------------------------------------------------------
@pytest.mark.parametrize(("protocol", "model"), STREAMING)
async def test_concurrent_requests_keep_their_chunks_apart(emulator, protocol, model):
    texts = [" ".join(["word"] * n) + "." for n in (3, 9, 14, 22, 30, 5, 17, 11)]
    requests = [SynthesisRequest(rid(f"c{i}"), text) for i, text in enumerate(texts)]
    async with opened(protocol, "streaming", address(emulator, protocol), model) as target:
        streamed = await asyncio.gather(*(collect(target, r) for r in requests))
        if protocol == "grpc":
            assert target.streams_opened == 1  # type: ignore[attr-defined]
    async with opened("grpc", "offline", emulator.grpc, "cosyvoice2_offline") as offline:
        whole = await asyncio.gather(*(collect(offline, r) for r in requests))
    sizes = set()
    for chunks, reference in zip(streamed, whole):
        np.testing.assert_array_equal(audio(chunks), reference[0].audio)
        sizes.add(reference[0].audio.size)
    assert len(sizes) == len(texts)  # every request got its own audio, none got a neighbour's


async def test_a_cancelled_request_leaves_the_shared_stream_to_the_others(emulator):
    """Ctrl-C or a caller's timeout cancels one request, even mid-send; the others on the stream finish."""
    async with opened("grpc", "streaming", emulator.grpc, "cosyvoice2_instant") as target:
        requests = [SynthesisRequest(rid(f"x{i}"), TEXT, "a prompt transcript", PROMPT) for i in range(6)]
        tasks = [asyncio.create_task(collect(target, r)) for r in requests]
        await asyncio.sleep(0)  # each task has started sending
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results[::2])
        assert all([c.audio.size for c in r] == TEXT_CHUNKS for r in results[1::2])  # type: ignore[union-attr]
        assert [c.audio.size for c in await collect(target, SynthesisRequest(rid("y"), TEXT))] == TEXT_CHUNKS
        assert target.streams_opened == 1  # type: ignore[attr-defined]



async def test_requests_per_stream_bounds_what_a_stream_carries(emulator):
    """--requests-per-stream N: a stream is half-closed after its N-th request, ends once their responses are
    out, and the next request opens another; 1 is a stream per request (what a proxy limiting a stream's body
    needs)."""
    target = make_target("grpc", "streaming", emulator.grpc, "cosyvoice2_instant", timeout=10.0,
                         config=RunConfig(requests_per_stream=2))
    await target.open()
    try:
        for i in range(6):
            request = SynthesisRequest(rid(f"n{i}"), TEXT, "a prompt transcript", PROMPT)
            assert [c.audio.size for c in await collect(target, request)] == TEXT_CHUNKS
        assert target.streams_opened == 3  # type: ignore[attr-defined]
        target.options = TritonOptions(requests_per_stream=1)  # type: ignore[attr-defined]  # a Triton target's options
        requests = [SynthesisRequest(rid(f"own{i}"), TEXT, "a prompt transcript", PROMPT) for i in range(4)]
        results = await asyncio.gather(*(collect(target, r) for r in requests))
        assert all([c.audio.size for c in r] == TEXT_CHUNKS for r in results)
        assert target.streams_opened == 3 + 4  # type: ignore[attr-defined]
        # A half-closed stream ends once its responses are out: none is left open behind the requests.
        streams = target._connections.get().streams  # type: ignore[attr-defined]
        await asyncio.wait_for(asyncio.gather(*(s._reader for s in streams)), 5.0)
        assert all(s.finished and not s.inboxes for s in streams)
    finally:
        await target.close()

# ---- server errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("protocol", "mode", "model"),
                         [(p, "streaming", m) for p, m in STREAMING] + [(p, "offline", m) for p, m in OFFLINE])
async def test_error_responses_fail_the_request_only(emulator, protocol, mode, model):
    async with opened(protocol, mode, address(emulator, protocol), model) as target:
        error = await fails(target, SynthesisRequest(rid("empty"), "   "))
        assert error.kind == ERR_SERVER and "target_text is empty" in error.message
        error = await fails(target, SynthesisRequest(rid("half"), TEXT, reference_text="transcript only"))
        assert error.kind == ERR_SERVER and "without reference_wav" in error.message
        chunks = await collect(target, SynthesisRequest(rid("after"), TEXT))  # the connection lives on
        assert sum(c.audio.size for c in chunks) == sum(TEXT_CHUNKS)
        if protocol == "grpc" and mode == "streaming":
            assert target.streams_opened == 1  # type: ignore[attr-defined]


# ---- timeouts -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_streaming_timeout_then_the_target_goes_on(emulator, protocol):
    async with opened(protocol, "streaming", address(emulator, protocol), "cosyvoice2", timeout=0.05) as target:
        late = SynthesisRequest(rid("late"), TEXT)
        error = await fails(target, late)
        assert error.kind == ERR_TIMEOUT
        # The late request's chunks keep arriving on the shared stream; none may reach the next request.
        target.timeout = 10.0
        chunks = await collect(target, SynthesisRequest(rid("next"), TEXT))
        assert [c.audio.size for c in chunks] == TEXT_CHUNKS
        if protocol == "grpc":
            assert target.streams_opened == 1  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A private server: an offline model with the fixed schedule, and a model in the repository not loaded."""
    root = tmp_path_factory.mktemp("slow")
    repo = build_repository(root, [
        EmulatedModel(name="slow_offline", profile=get_profile("fixed"), mode="offline", instances=1),
        EmulatedModel(name="parked", profile=get_profile("instant"), mode="streaming"),
    ])
    # --exit-timeout-secs=0: on stop, exit without unloading model by model (about a second per stub process).
    args = ["--model-control-mode=explicit", "--load-model=slow_offline", "--exit-timeout-secs=0"]
    with TritonServer(repo, workdir=root / "server", extra_args=args) as server:
        yield server


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_offline_timeout(slow_server, protocol):
    where = slow_server.grpc_url if protocol == "grpc" else slow_server.http_url
    async with opened(protocol, "offline", where, "slow_offline", timeout=0.05) as target:
        error = await fails(target, SynthesisRequest(rid("late"), TEXT))
        assert error.kind == ERR_TIMEOUT


# ---- open(): actionable errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(("protocol", "mode"), [("grpc", "streaming"), ("grpc", "offline"),
                                                ("http", "streaming"), ("http", "offline")])
async def test_open_reports_server_and_model(emulator, protocol, mode):
    model = "cosyvoice2" if mode == "streaming" else "cosyvoice2_offline"
    target = make_target(protocol, mode, address(emulator, protocol), model)
    try:
        info = await target.open()
        stats = await target.statistics()
    finally:
        await target.close()
    assert (info.protocol, info.mode, info.model, info.decoupled) == (protocol, mode, model, mode == "streaming")
    assert info.server_version == "2.51.0" and info.address == address(emulator, protocol)
    assert info.model_config["name"] == model and info.model_config["max_batch_size"] == 16
    assert {t["name"] for t in info.model_config["input"]} >= {"target_text", "reference_wav"}
    entry = next(m for m in stats["model_stats"] if m["name"] == model)
    assert isinstance(entry["inference_count"], int) and "success" in entry["inference_stats"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_open_unreachable_server_fails_fast(protocol):
    where = f"127.0.0.1:{free_port()}"
    target = make_target(protocol, "streaming", where)
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        await target.open()
    assert time.monotonic() - started < 5
    assert where in str(info.value) and "--emulator" in str(info.value)


async def test_open_grpc_on_the_http_port_is_unreachable_not_a_crash(emulator):
    with pytest.raises(ServerError) as info:
        await make_target("grpc", "streaming", emulator.http).open()
    assert emulator.http in str(info.value)
    with pytest.raises(ServerError) as info:
        await make_target("http", "streaming", emulator.grpc).open()
    assert "--protocol grpc" in str(info.value)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_open_unknown_model_lists_the_servers_models(emulator, protocol):
    with pytest.raises(UsageError) as info:
        await make_target(protocol, "streaming", address(emulator, protocol), "nosuchmodel").open()
    message = str(info.value)
    assert "nosuchmodel" in message and "cosyvoice2_offline" in message and "cosyvoice2_instant" in message


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_open_mode_mismatch_suggests_the_other_mode(emulator, protocol):
    with pytest.raises(UsageError) as info:
        await make_target(protocol, "offline", address(emulator, protocol), "cosyvoice2").open()
    assert "decoupled" in str(info.value) and "--mode streaming" in str(info.value)
    with pytest.raises(UsageError) as info:
        await make_target(protocol, "streaming", address(emulator, protocol), "cosyvoice2_offline").open()
    assert "not decoupled" in str(info.value) and "--mode offline" in str(info.value)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_open_model_not_ready(slow_server, protocol):
    where = slow_server.grpc_url if protocol == "grpc" else slow_server.http_url
    with pytest.raises(ServerError) as info:
        await make_target(protocol, "streaming", where, "parked").open()
    message = str(info.value)
    assert "'parked'" in message and "not ready (not loaded)" in message and "/v2/repository/models/parked/load" in message


def test_bad_address_and_protocol_are_usage_errors():
    with pytest.raises(UsageError, match="HOST:PORT"):
        make_target("grpc", "streaming", "localhost")
    with pytest.raises(UsageError, match="HOST:PORT"):
        make_target("http", "offline", "localhost:99999")
    with pytest.raises(UsageError, match="--protocol 'websocket'"):
        make_target("websocket", "streaming", "localhost:8001")


async def test_statistics_count_the_run(emulator):
    """Both protocols read the same per-model counters, as integers, so a run can diff them."""
    async with opened("grpc", "offline", emulator.grpc, "cosyvoice2_offline") as grpc_target, \
            opened("http", "offline", emulator.http, "cosyvoice2_offline") as http_target:

        async def count(target: Target) -> int:
            stats = await target.statistics()
            assert stats is not None
            return next(m for m in stats["model_stats"] if m["name"] == "cosyvoice2_offline")["inference_count"]

        before = await count(grpc_target)
        assert await count(http_target) >= before
        await collect(grpc_target, SynthesisRequest(rid("stats"), TEXT))
        await collect(http_target, SynthesisRequest(rid("stats"), TEXT))
        deadline = time.monotonic() + 15  # Triton counts a request just after sending its response
        while await count(grpc_target) < before + 2:
            assert time.monotonic() < deadline, "the two requests never reached the statistics"
            await asyncio.sleep(0.02)


async def test_a_statistics_call_cut_by_its_channel_closing_is_a_connection_error(emulator):
    """grpcio ends a call whose channel closes (a reconnect probe dropping the connection) with CancelledError, as
    if the caller had been cancelled: one escaped a run's closing statistics read and ended it with a traceback.
    It is a connection error; a caller that is cancelled still gets CancelledError."""
    target = make_target("grpc", "offline", emulator.grpc, "cosyvoice2_offline")
    await target.open()
    call = asyncio.create_task(target.statistics())
    await asyncio.sleep(0)  # the call is out
    await target.close()
    with pytest.raises(TargetError) as err:
        await call
    assert err.value.kind == ERR_CONNECTION and "its connection was closed" in err.value.message

    target = make_target("grpc", "offline", emulator.grpc, "cosyvoice2_offline")
    await target.open()
    try:
        call = asyncio.create_task(target.statistics())
        await asyncio.sleep(0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        await target.close()


# ---- the server dies mid-stream ------------------------------------------------------------------------------
async def test_server_killed_mid_stream_fails_in_flight_requests_with_connection(start_emulator):
    # A chunk a second: every stream is still open when the last of the four has had its first chunk (with the
    # fixed profile's 0.1 s a busy host once started the HTTP one after the first gRPC stream had ended).
    slow = get_profile("fixed", {"fixed_interval_s": 1.0})
    server = start_emulator([EmulatedModel(name="cosyvoice2", profile=slow, mode="streaming")])
    long_text = TEXT * 4
    grpc_target = make_target("grpc", "streaming", server.grpc, timeout=30)
    http_target = make_target("http", "streaming", server.http, timeout=30)
    await grpc_target.open()
    await http_target.open()
    started = [asyncio.Event() for _ in range(4)]

    async def stream(target: Target, i: int) -> TargetError | None:
        try:
            async for _ in target.synthesize(SynthesisRequest(rid(f"kill{i}"), long_text)):
                started[i].set()
        except TargetError as exc:
            return exc
        return None

    try:
        tasks = [asyncio.create_task(stream(grpc_target if i < 3 else http_target, i)) for i in range(4)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 10)
        os.killpg(server.server.process.pid, signal.SIGKILL)
        errors = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert [e.kind if e else None for e in errors] == [ERR_CONNECTION] * 4
        assert all(server.server.grpc_url in e.message or server.server.http_url in e.message for e in errors)
        # The next request opens a new stream, which fails the same way while the server is down.
        error = await fails(grpc_target, SynthesisRequest(rid("after"), TEXT))
        assert error.kind == ERR_CONNECTION and grpc_target.streams_opened == 2  # type: ignore[attr-defined]
        assert (await fails(http_target, SynthesisRequest(rid("after"), TEXT))).kind == ERR_CONNECTION
    finally:
        await grpc_target.close()
        await http_target.close()


# ---- decoding and request building (pure functions, real protobuf messages) ------------------------------------
def _response(name: str = "waveform", datatype: str = "FP32", shape: tuple[int, ...] = (1, 4),
              raw: bytes | None = None) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(id="x")
    response.outputs.add(name=name, datatype=datatype, shape=shape)
    response.raw_output_contents.append(np.arange(4, dtype="<f4").tobytes() if raw is None else raw)
    return response


def test_decode_waveform_views_raw_bytes_and_rejects_malformed_tensors():
    np.testing.assert_array_equal(decode_waveform(_response()), np.arange(4, dtype=np.float32))
    for bad, words in ((_response(name="audio"), "no waveform"), (_response(datatype="INT16"), "INT16"),
                       (_response(raw=b"\0" * 12), "12 bytes")):
        with pytest.raises(TargetError) as info:
            decode_waveform(bad)
        assert info.value.kind == ERR_PROTOCOL and words in info.value.message


def test_decode_http_bodies():
    header = json.dumps({"outputs": [{"name": "waveform", "datatype": "FP32", "shape": [1, 3],
                                      "parameters": {"binary_data_size": 12}}]}).encode()
    body = header + np.array([1, 2, 3], "<f4").tobytes()
    np.testing.assert_array_equal(decode_infer_response(body, str(len(header))), [1, 2, 3])
    plain = json.dumps({"outputs": [{"name": "waveform", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1]}]})
    np.testing.assert_array_equal(decode_infer_response(plain.encode(), None), [0.5, 1])
    with pytest.raises(TargetError, match="binary data of 12 bytes"):
        decode_infer_response(header + b"\0" * 4, str(len(header)))
    np.testing.assert_array_equal(decode_event(b'{"waveform": [0.25, -1]}'), [0.25, -1])
    for payload, kind in ((b'{"error": "boom"}', ERR_SERVER), (b'{"model_name": "m"}', ERR_PROTOCOL),
                          (b'{"waveform": [', ERR_PROTOCOL), (b'{"waveform": ["a"]}', ERR_PROTOCOL)):
        with pytest.raises(TargetError) as info:
            decode_event(payload)
        assert info.value.kind == kind


def test_sse_parser_cuts_events_at_any_read_boundary():
    stream = b'data: {"a": 1}\n\n: comment\n\ndata: {"b":\r\ndata: 2}\r\n\r\ndata: {"c": 3}'
    for step in (1, 2, 5, len(stream)):
        parser = SseParser()
        events = []
        for i in range(0, len(stream), step):
            events += parser.feed(stream[i:i + step])
        events += parser.finish()
        assert [b"".join(parts) for parts in events] == [b'{"a": 1}', b'{"b":\n2}', b'{"c": 3}']


def test_an_event_kept_as_its_reads_reads_as_the_whole_event():
    """read_event on an event's reads (never joined): the same samples and count as the whole event, wherever the
    reads were cut (in the key, in the array, between its last two bytes), also after pickling (to a decoder)."""
    samples = np.linspace(-1, 1, 1000, dtype=np.float32)
    event = b'{"id":"1","model_name":"m","waveform":' + json.dumps(samples.tolist()).encode() + b"}"
    for cuts in ([5, 30], [len(event) - 1], [len(event) - 2, len(event) - 1], list(range(1, len(event), 997))):
        bounds = [0, *cuts, len(event)]
        audio = read_event([memoryview(event)[a:b] for a, b in zip(bounds, bounds[1:])])
        assert isinstance(audio, JsonAudio) and audio.count() == samples.size, cuts
        np.testing.assert_array_equal(audio.decode(), samples)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(audio, protocol=5)).decode(), samples)
    later = read_event([b'{"waveform":[1,', b'2],"x":[3]}'])  # the array is not the last member: parsed whole
    assert later.count() == 2 and later.decode().tolist() == [1, 2]
    with pytest.raises(TargetError) as info:
        read_event([b'{"err', b'or": "boom"}'])
    assert info.value.kind == ERR_SERVER


def test_request_tensors_pad_the_prompt_and_send_its_true_length():
    cache = PromptCache()
    request = SynthesisRequest("r", "text", "prompt", PROMPT, pad_to_samples=160000)
    tensors = {t.name: t for t in request_tensors(request, cache)}
    assert tensors["reference_wav"].shape == (1, 160000)
    wav = np.frombuffer(tensors["reference_wav"].raw, "<f4")
    np.testing.assert_array_equal(wav[:PROMPT.size], PROMPT)
    assert not wav[PROMPT.size:].any()
    assert np.frombuffer(tensors["reference_wav_len"].raw, "<i4").tolist() == [PROMPT.size]
    assert tensors["target_text"].raw == b"\x04\x00\x00\x00text"
    assert request_tensors(request, cache)[1].raw is tensors["reference_wav"].raw  # prepared once per prompt
    assert [t.name for t in request_tensors(SynthesisRequest("s", "text"), cache)] == ["target_text"]


def test_one_table_says_what_a_grpc_status_counts_as():
    """Every gRPC target counts a status the same way; a shared stream's other breakages fail its requests as
    ``connection``, one call's as the server's error."""
    import grpc

    from cvload.results.records import ERR_REJECTED
    from cvload.targets.grpc_errors import error_kind

    assert error_kind(grpc.StatusCode.UNAVAILABLE) == ERR_CONNECTION
    assert error_kind(grpc.StatusCode.DEADLINE_EXCEEDED) == ERR_TIMEOUT
    assert error_kind(grpc.StatusCode.RESOURCE_EXHAUSTED) == ERR_REJECTED
    assert error_kind(grpc.StatusCode.INTERNAL) == ERR_SERVER
    assert error_kind(grpc.StatusCode.INTERNAL, ERR_CONNECTION) == ERR_CONNECTION
