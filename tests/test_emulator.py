"""The CosyVoice emulator through tritonclient against the real server: protocol, audio, errors, faults, timing."""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from cvload.emulator import EmulatedModel, build_repository, get_profile, warm_speech
from cvload.emulator.single_model import (
    SAMPLE_RATE,
    SAMPLES_PER_TOKEN,
    RecordedVoice,
    chunk_schedule,
    speech_seconds,
    speech_tokens,
)
from cvload.triton.launcher import TritonServer

LATIN = "The quick brown fox jumps over the lazy dog, then it rests in the warm afternoon sun by the river."
CJK = "今天天气很好，我们一起去公园散步，然后在湖边喝一杯热茶，聊聊最近的生活。"
MIXED = "我们明天去 Shanghai 参加 machine learning 会议，大概下午三点出发。"


# ---- a small streaming client on tritonclient.grpc (start_stream + async_stream_infer) -------------------------
@dataclass
class Response:
    at: float  # time.monotonic() when it came in
    waveform: np.ndarray | None
    final: bool
    error: str | None


@dataclass
class Stream:
    """One gRPC stream; requests sent on it are told apart by request id."""

    url: str
    client: grpcclient.InferenceServerClient = field(init=False)
    responses: queue.Queue = field(default_factory=queue.Queue, init=False)

    def __post_init__(self) -> None:
        self.client = grpcclient.InferenceServerClient(self.url)
        self.client.start_stream(callback=self._callback)

    def _callback(self, result, error) -> None:
        now = time.monotonic()
        if error is not None:
            self.responses.put((None, Response(now, None, True, str(error))))
            return
        response = result.get_response()
        final = response.parameters.get("triton_final_response")
        waveform = result.as_numpy("waveform") if response.outputs else None
        self.responses.put((response.id, Response(now, waveform, bool(final and final.bool_param), None)))

    def send(self, model: str, inputs: list, request_id: str) -> float:
        sent = time.monotonic()
        self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)
        return sent

    def collect(self, count: int = 1, timeout: float = 30.0) -> dict[str | None, list[Response]]:
        """Responses until ``count`` requests have ended (final response or error)."""
        out: dict[str | None, list[Response]] = {}
        ended = 0
        deadline = time.monotonic() + timeout
        while ended < count:
            rid, response = self.responses.get(timeout=max(0.1, deadline - time.monotonic()))
            out.setdefault(rid, []).append(response)
            ended += response.final or response.error is not None
        return out

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


@pytest.fixture
def stream(emulator) -> Iterator[Stream]:
    s = Stream(emulator.grpc)
    yield s
    s.close()


def grpc_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def text_input(text: str) -> grpcclient.InferInput:
    return grpc_input("target_text", np.array([[text.encode()]], dtype=object), "BYTES")


_ids = iter(range(1, 1_000_000))


def new_id(prefix: str = "t") -> str:
    return f"{prefix}-{next(_ids)}"


def synthesize(s: Stream, model: str, text: str) -> list[Response]:
    """All responses of one request (an error response carries no request id, so nothing else may be in flight)."""
    rid = new_id()
    s.send(model, [text_input(text)], rid)
    return [r for responses in s.collect().values() for r in responses]


def window_rms(audio: np.ndarray, seconds: float = 0.1) -> np.ndarray:
    n = int(SAMPLE_RATE * seconds)
    return np.sqrt(np.mean(audio[: len(audio) // n * n].reshape(-1, n) ** 2, axis=1))


def assert_speech_like(audio: np.ndarray) -> None:
    """The speech voice: words most of the time, short pauses, a quiet tail, never clipped or digital zero."""
    assert audio.dtype == np.float32
    assert np.isfinite(audio).all()
    assert np.abs(audio).max() < 1.0, "no clipping"
    rms = window_rms(audio)
    assert (rms > 0.01).mean() >= 0.5, f"speech in only {(rms > 0.01).mean():.0%} of the 100 ms windows"
    assert rms[0] > 0.01, "speech starts at once (no leading_silence_s)"
    assert (rms > 0).all(), "quiet, never digital zero"


def assert_never_silent(audio: np.ndarray) -> None:
    """The tone voice: a speech-like signal that is never silent for 100 ms."""
    assert audio.dtype == np.float32 and np.isfinite(audio).all() and np.abs(audio).max() < 1.0
    for i, level in enumerate(window_rms(audio)):
        assert level > 0.005, f"silent 100 ms at sample {i * SAMPLE_RATE // 10}"


@pytest.fixture(scope="module", autouse=True)
def spoken() -> None:
    """The texts here spoken into the cache before any request (the built-in set is, by build_repository)."""
    texts = [LATIN, CJK, MIXED, "Hello there.", "Short one.", "Hello again.", "Hello", "This one ends it.",
             "Same id twice.", *(f"Request {i}." for i in range(8))]
    warm_speech([get_profile("instant")], texts, builtin=False)


# ---- streaming protocol ------------------------------------------------------------------------------------
def test_streaming_chunks_then_empty_final_response(stream: Stream) -> None:
    responses = synthesize(stream, "cosyvoice2_instant", LATIN)
    assert all(r.error is None for r in responses)
    *chunks, last = responses
    assert len(chunks) >= 3
    for r in chunks:
        assert not r.final
        assert r.waveform is not None and r.waveform.dtype == np.float32 and r.waveform.shape[0] == 1
    assert last.final and last.waveform is None, "the last response is empty and flagged triton_final_response"


@pytest.mark.parametrize("text", [LATIN, CJK, MIXED], ids=["latin", "cjk", "mixed"])
def test_waveform_length_matches_the_text(stream: Stream, text: str) -> None:
    responses = synthesize(stream, "cosyvoice2_instant", text)
    chunks = [r.waveform.reshape(-1) for r in responses if r.waveform is not None]
    tokens = speech_tokens(text)
    assert [len(c) for c in chunks] == [n * SAMPLES_PER_TOKEN for n in chunk_schedule(tokens, {})]
    audio = np.concatenate(chunks)
    assert len(audio) == tokens * SAMPLES_PER_TOKEN  # 24 kHz, 25 tokens per second
    seconds = len(audio) / SAMPLE_RATE
    assert abs(seconds - speech_seconds(text)) <= 1 / 25
    assert_speech_like(audio)


def test_speech_rate_is_realistic() -> None:
    cjk_chars = sum(1 for ch in CJK if "\u4e00" <= ch <= "\u9fff")
    assert 3.0 <= cjk_chars / speech_seconds(CJK) <= 6.0  # Mandarin: about 4-5 characters per second
    words = len(LATIN.split())
    assert 2.0 <= words / speech_seconds(LATIN) <= 4.0  # English: about 2.5-3 words per second
    assert speech_seconds(LATIN + " " + LATIN) > 1.8 * speech_seconds(LATIN)


def test_same_text_same_speech(stream: Stream) -> None:
    a = np.concatenate([r.waveform.reshape(-1) for r in synthesize(stream, "cosyvoice2_instant", CJK) if r.waveform is not None])
    b = np.concatenate([r.waveform.reshape(-1) for r in synthesize(stream, "cosyvoice2_instant", CJK) if r.waveform is not None])
    np.testing.assert_array_equal(a, b)
    assert_speech_like(a)


def test_tone_voice_differs_between_requests_but_never_silent(private: Private) -> None:
    s = Stream(private.server.grpc_url)
    try:
        a, b = (np.concatenate([r.waveform.reshape(-1) for r in synthesize(s, "tone", CJK) if r.waveform is not None])
                for _ in range(2))
    finally:
        s.close()
    assert len(a) == len(b) == speech_tokens(CJK) * SAMPLES_PER_TOKEN and not np.array_equal(a, b)
    assert_never_silent(a)
    assert_never_silent(b)


@pytest.mark.alone
def test_fixed_profile_trace_is_ground_truth(emulator, stream: Stream) -> None:
    """<root>/<model>.trace.jsonl: first send 200 ms +- 2 ms after arrival, then every 100 ms (host monotonic clock).

    The schedule is checked on three requests; on a machine busy enough to delay a thread's wake-up past 2 ms,
    the batch is tried again (at most three times) before the timing counts as failed."""
    text = LATIN  # 4 chunks
    expected_chunks = len(chunk_schedule(speech_tokens(text), {}))
    worst: list[float] = []
    for _attempt in range(3):
        worst = []
        for _ in range(3):
            rid = new_id("fixed")
            sent = stream.send("cosyvoice2", [text_input(text)], rid)
            received = [r.at for r in stream.collect()[rid] if r.waveform is not None]
            traced = {}
            for raw in emulator.trace("cosyvoice2").read_text().splitlines():
                line = json.loads(raw)
                traced[line["id"]] = line
            line = traced[rid]  # written before the final response goes out
            assert line["error"] is None and line["model"] == "cosyvoice2"
            # host monotonic clock: the server saw the request after we sent it, before the first chunk came back
            assert sent <= line["arrival"] <= received[0]
            sends = line["sends"]
            assert len(sends) == len(received) == expected_chunks
            # what the client saw follows the trace, within transport time
            for at, offset in zip(received, sends):
                assert 0 <= at - (line["arrival"] + offset) < 0.1
            due = [0.200 + 0.100 * i for i in range(len(sends))]
            worst.append(max(abs(a - b) for a, b in zip(sends, due)))
        if max(worst) <= 0.002:
            return
    pytest.fail(f"trace sends off the 200 ms + 100 ms schedule by up to {max(worst) * 1000:.2f} ms (> 2 ms)")


def test_duplicate_in_flight_request_id_is_rejected(stream: Stream) -> None:
    stream.send("cosyvoice2", [text_input(LATIN)], "dup-1")  # fixed profile: in flight for ~0.5 s
    time.sleep(0.05)
    stream.send("cosyvoice2", [text_input(CJK)], "dup-1")
    out = stream.collect(count=2)
    responses = out.get("dup-1", [])
    errors = [r.error for r in responses if r.error] + [r.error for r in out.get(None, []) if r.error]
    assert len(errors) == 1 and "already in flight" in errors[0]
    chunks = [r for r in responses if r.waveform is not None]
    assert len(chunks) == len(chunk_schedule(speech_tokens(LATIN), {})), "the first request is untouched"
    # once finished, the id may be used again
    stream.send("cosyvoice2_instant", [text_input("Hello again.")], "dup-1")
    again = stream.collect()["dup-1"]
    assert again[-1].final and all(r.error is None for r in again)


# ---- offline and HTTP --------------------------------------------------------------------------------------
def test_offline_grpc_infer(emulator) -> None:
    client = grpcclient.InferenceServerClient(emulator.grpc)
    result = client.infer("cosyvoice2_offline", [text_input(CJK)], request_id=new_id())
    audio = result.as_numpy("waveform")
    assert audio.dtype == np.float32 and audio.shape == (1, speech_tokens(CJK) * SAMPLES_PER_TOKEN)
    assert_speech_like(audio.reshape(-1))


def test_offline_http_infer(emulator) -> None:
    client = httpclient.InferenceServerClient(emulator.http)
    tensor = httpclient.InferInput("target_text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[LATIN.encode()]], dtype=object))
    result = client.infer("cosyvoice2_offline", [tensor], request_id=new_id())
    audio = result.as_numpy("waveform")
    assert audio.dtype == np.float32 and audio.shape == (1, speech_tokens(LATIN) * SAMPLES_PER_TOKEN)
    # and the plain JSON body of docs/protocol.md
    body = json.dumps({"inputs": [{"name": "target_text", "shape": [1, 1], "datatype": "BYTES", "data": [CJK]}]})
    req = urllib.request.Request(f"http://{emulator.http}/v2/models/cosyvoice2_offline/infer", data=body.encode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        out = json.loads(resp.read())
    assert out["outputs"][0]["name"] == "waveform" and out["outputs"][0]["datatype"] == "FP32"
    assert len(out["outputs"][0]["data"]) == speech_tokens(CJK) * SAMPLES_PER_TOKEN


def test_http_infer_on_the_decoupled_model_is_501(emulator) -> None:
    client = httpclient.InferenceServerClient(emulator.http)
    tensor = httpclient.InferInput("target_text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"Hello"]], dtype=object))
    with pytest.raises(InferenceServerException) as err:
        client.infer("cosyvoice2", [tensor])
    assert err.value.status() == "501" or "501" in str(err.value)
    assert "decoupled" in str(err.value)
    # and the model's config says so, which is how a client must detect the mode
    assert client.get_model_config("cosyvoice2")["model_transaction_policy"]["decoupled"] is True
    offline = client.get_model_config("cosyvoice2_offline").get("model_transaction_policy", {})
    assert not offline.get("decoupled", False)


def test_http_generate_stream_is_server_sent_events(emulator) -> None:
    body = json.dumps({"target_text": LATIN}).encode()
    req = urllib.request.Request(f"http://{emulator.http}/v2/models/cosyvoice2/generate_stream", data=body,
                                 headers={"Content-Type": "application/json"})
    events: list[tuple[float, dict]] = []
    started = time.monotonic()
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers.get("Content-Type", "").startswith("text/event-stream")
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data:"):
                events.append((time.monotonic() - started, json.loads(line[5:])))
    expected = chunk_schedule(speech_tokens(LATIN), {})
    assert len(events) == len(expected) >= 3
    for (_, event), tokens in zip(events, expected):
        assert event["model_name"] == "cosyvoice2"
        assert len(event["waveform"]) == tokens * SAMPLES_PER_TOKEN
    # fixed profile: the events stream out over time, not all at the end
    assert events[0][0] < 0.35 and events[-1][0] - events[0][0] >= 0.25


# ---- bad requests ------------------------------------------------------------------------------------------
WAV = np.full((1, 16000), 0.01, dtype=np.float32)
BAD_REQUESTS = {
    "missing_target_text": ([("reference_text", np.array([[b"hi"]], dtype=object), "BYTES")], "target_text"),
    "wrong_dtype": ([("target_text", np.array([[1.0]], dtype=np.float32), "FP32")], "data-type"),
    "wrong_shape": ([("target_text", np.array([[b"a", b"b"]], dtype=object), "BYTES")], "shape"),
    "two_texts_in_one_request": ([("target_text", np.array([[b"a"], [b"b"]], dtype=object), "BYTES")],
                                 "exactly one string"),
    "empty_text": ([("target_text", np.array([[b"  "]], dtype=object), "BYTES")], "empty"),
    "wav_without_text": ([("target_text", np.array([[b"hello"]], dtype=object), "BYTES"),
                          ("reference_wav", WAV, "FP32")], "without reference_text"),
    "text_without_wav": ([("target_text", np.array([[b"hello"]], dtype=object), "BYTES"),
                          ("reference_text", np.array([[b"hi"]], dtype=object), "BYTES")], "without reference_wav"),
    "wav_len_out_of_range": ([("target_text", np.array([[b"hello"]], dtype=object), "BYTES"),
                              ("reference_wav", WAV, "FP32"),
                              ("reference_text", np.array([[b"hi"]], dtype=object), "BYTES"),
                              ("reference_wav_len", np.array([[20000]], dtype=np.int32), "INT32")], "outside 1..16000"),
    "wav_len_zero": ([("target_text", np.array([[b"hello"]], dtype=object), "BYTES"),
                      ("reference_wav", WAV, "FP32"),
                      ("reference_text", np.array([[b"hi"]], dtype=object), "BYTES"),
                      ("reference_wav_len", np.array([[0]], dtype=np.int32), "INT32")], "outside 1..16000"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_an_error_and_the_server_stays_up(emulator, stream: Stream, case: str) -> None:
    spec, expected = BAD_REQUESTS[case]
    inputs = [grpc_input(*item) for item in spec]
    client = grpcclient.InferenceServerClient(emulator.grpc)
    with pytest.raises(InferenceServerException) as err:
        client.infer("cosyvoice2_offline", inputs, request_id=new_id())
    assert expected in str(err.value)
    assert "INVALID_ARG" in str(err.value.status()) or "INVALID" in str(err.value)
    # the streaming model answers the same way, with one error response that ends the request
    rid = new_id()
    stream.send("cosyvoice2_instant", inputs, rid)
    responses = [r for rs in stream.collect().values() for r in rs]
    assert len(responses) == 1 and responses[0].error and expected in responses[0].error
    assert client.is_server_ready()
    assert synthesize(stream, "cosyvoice2_instant", "Still here.")[-1].final


def test_good_zero_shot_request_is_served(stream: Stream) -> None:
    inputs = [
        text_input("Hello there."),
        grpc_input("reference_wav", np.concatenate([WAV, np.zeros((1, 4000), np.float32)], axis=1), "FP32"),
        grpc_input("reference_text", np.array([[b"hi"]], dtype=object), "BYTES"),
        grpc_input("reference_wav_len", np.array([[16000]], dtype=np.int32), "INT32"),
    ]
    rid = new_id()
    stream.send("cosyvoice2_instant", inputs, rid)
    responses = stream.collect()[rid]
    assert responses[-1].final and all(r.error is None for r in responses)
    assert sum(r.waveform.size for r in responses if r.waveform is not None) == speech_tokens("Hello there.") * 960


# ---- fault injection, offline parallelism, the shared vocoder (a private server) -----------------------------
STALL_S = 0.6
FAST_EXIT = ["--exit-timeout-secs=0"]
VOCODER_S = 0.15


@dataclass
class Private:
    server: TritonServer
    root: Path

    def trace(self, model: str) -> list[dict]:
        path = self.root / f"{model}.trace.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    root = tmp_path_factory.mktemp("private")
    instant = get_profile("instant")
    models = [
        EmulatedModel("errors", get_profile("instant", {"error_rate": 1.0}), "streaming"),
        EmulatedModel("errors_offline", get_profile("instant", {"error_rate": 1.0}), "offline", instances=1),
        EmulatedModel("stalls", get_profile("instant", {"stall_prob": 1.0, "stall_s": STALL_S}), "streaming"),
        EmulatedModel("stalls_fixed", get_profile("fixed", {"stall_prob": 1.0, "stall_s": STALL_S}), "streaming"),
        EmulatedModel("slow_offline", get_profile("instant", {"llm_prefill_s": 0.5}), "offline", instances=4),
        EmulatedModel("vocoder_offline", get_profile("instant", {"vocoder_base_s": VOCODER_S}), "offline",
                      instances=4),
        EmulatedModel("espeak", get_profile("instant", {"voice": "espeak"}), "streaming"),
        EmulatedModel("plain", instant, "streaming"),
        EmulatedModel("tone", get_profile("instant", {"voice": "tone"}), "streaming"),
    ]
    repo = build_repository(root, models)
    # Exit without unloading model by model on stop (one second per stub process, 10 of them here).
    with TritonServer(repo, workdir=root / "server", die_with_parent=True, extra_args=FAST_EXIT) as server:
        yield Private(server, root)


def test_error_rate_one_fails_every_request(private: Private) -> None:
    s = Stream(private.server.grpc_url)
    try:
        for _ in range(5):
            responses = synthesize(s, "errors", LATIN)
            assert len(responses) == 1 and "emulated server error" in (responses[0].error or "")
    finally:
        s.close()
    client = grpcclient.InferenceServerClient(private.server.grpc_url)
    for _ in range(3):
        with pytest.raises(InferenceServerException, match="emulated server error"):
            client.infer("errors_offline", [text_input(CJK)], request_id=new_id())
    assert client.is_server_ready()


@pytest.mark.alone
@pytest.mark.parametrize("model", ["stalls", "stalls_fixed"])
def test_stall_prob_one_leaves_one_gap_of_stall_s(private: Private, model: str) -> None:
    s = Stream(private.server.grpc_url)
    try:
        rid = new_id()
        sent = s.send(model, [text_input(LATIN)], rid)
        responses = s.collect()[rid]
    finally:
        s.close()
    offsets = [r.at - sent for r in responses if r.waveform is not None]
    # when each chunk was due without the stall: instant at once, fixed at 200 ms then every 100 ms
    due = [0.0 if model == "stalls" else 0.2 + 0.1 * i for i in range(len(offsets))]
    delays = [o - d for o, d in zip(offsets, due)]
    stalled = [i for i, d in enumerate(delays) if d > STALL_S * 0.8]
    assert stalled, f"no stall: {delays}"
    k = stalled[0]
    # Bounds tell one stall from none (< 0.5 stall) and from two (>= 2 stalls) with room for a loaded CI machine.
    assert all(d < STALL_S * 0.5 for d in delays[:k]), delays
    assert all(STALL_S * 0.95 <= d < STALL_S * 1.5 for d in delays[k:]), f"one stall of stall_s delays the rest: {delays}"
    assert responses[-1].final


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


@pytest.mark.alone
@pytest.mark.parametrize("count", [4, 8])
def test_offline_requests_are_served_in_parallel(private: Private, count: int) -> None:
    """Offline: 4 instances (stub processes), and the requests of one dynamic batch served side by side."""
    client = grpcclient.InferenceServerClient(private.server.grpc_url)
    ids = [new_id(f"par{count}") for _ in range(count)]
    threads = [threading.Thread(target=client.infer, args=("slow_offline", [text_input(f"Request {i}.")]),
                                kwargs={"request_id": rid}) for i, rid in enumerate(ids)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    serial = 0.5 * count
    assert wall < serial * 0.75, f"{count} requests of 0.5 s took {wall:.2f} s: not served side by side"
    lines = [line for line in private.trace("slow_offline") if line["id"] in ids]
    assert len(lines) == count and all(line["error"] is None for line in lines)
    spans = [(line["arrival"], line["arrival"] + line["sends"][-1]) for line in lines]
    assert max_overlap(spans) >= 4, "at least as many requests at once as instances"
    # (which instance served what is the dynamic batcher's choice: one batch in one instance runs in threads)


def test_one_vocoder_is_shared_by_all_offline_instances(private: Private) -> None:
    client = grpcclient.InferenceServerClient(private.server.grpc_url)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            client.infer("vocoder_offline", [text_input("Short one.")], request_id=new_id("voc"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    started = time.monotonic()
    threads = []
    for i in range(4):
        threads.append(threading.Thread(target=one, args=(i,)))
        threads[-1].start()
        time.sleep(0.03)  # one at a time into the scheduler: they land on different instances
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    assert not errors
    lines = private.trace("vocoder_offline")
    assert len(lines) == 4
    assert len({line["pid"] for line in lines}) >= 2, "the requests ran in different stub processes"
    spans = sorted((line["arrival"] + a, line["arrival"] + b) for line in lines for a, b in line["vocoder"])
    assert len(spans) == 4 * len(chunk_schedule(speech_tokens("Short one."), {}))
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.001, f"vocoder jobs overlap: {spans}"
    assert wall >= 4 * VOCODER_S * 0.95


def test_espeak_voice_is_real_speech(private: Private) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    for text in (LATIN, CJK):
        s = Stream(private.server.grpc_url)
        try:
            responses = synthesize(s, "espeak", text)
        finally:
            s.close()
        audio = np.concatenate([r.waveform.reshape(-1) for r in responses if r.waveform is not None])
        expected = RecordedVoice(text).audio  # espeak-ng is deterministic
        assert len(audio) == -(-len(expected) // SAMPLES_PER_TOKEN) * SAMPLES_PER_TOKEN
        np.testing.assert_allclose(audio[: len(expected)], expected, atol=1e-6)
        assert 0.5 < len(audio) / SAMPLE_RATE < 20
        assert np.sqrt(np.mean(audio**2)) > 0.02


def test_crash_after_n_kills_the_server_at_request_n(tmp_path: Path) -> None:
    repo = build_repository(tmp_path, [EmulatedModel("crashy", get_profile("instant", {"crash_after": 3}), "streaming")])
    server = TritonServer(repo, workdir=tmp_path / "server", die_with_parent=True)
    server.start()
    s = Stream(server.grpc_url)
    try:
        for _ in range(2):
            assert synthesize(s, "crashy", "Still alive.")[-1].final
        assert server.alive()
        s.send("crashy", [text_input("This one ends it.")], new_id())
        out = s.collect(timeout=15)
        responses = [r for rs in out.values() for r in rs]
        assert responses and responses[0].error is not None and responses[0].waveform is None
        deadline = time.monotonic() + 10
        while server.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.alive(), "the server process died at request 3"
        with pytest.raises(InferenceServerException):
            grpcclient.InferenceServerClient(server.grpc_url).is_server_ready()
    finally:
        s.close()
        server.stop()
    assert server.clean_exit is False


def test_profile_rejects_bad_values() -> None:
    from cvload.errors import UsageError

    with pytest.raises(UsageError):
        get_profile("instant", {"error_rate": 2})
    with pytest.raises(UsageError):
        get_profile("instant", {"voice": "robot"})
    with pytest.raises(UsageError, match="known settings"):
        get_profile("instant", {"no_such_knob": 1})


def test_http_errors_are_answered_too(emulator) -> None:
    body = json.dumps({"inputs": [{"name": "target_text", "shape": [1, 1], "datatype": "BYTES", "data": [""]}]})
    req = urllib.request.Request(f"http://{emulator.http}/v2/models/cosyvoice2_offline/infer", data=body.encode())
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400
    assert "empty" in err.value.read().decode()


def test_duplicate_request_id_is_rejected_across_offline_instances(private: Private) -> None:
    """Offline instances are separate processes: the in-flight ids are shared between them."""
    client = grpcclient.InferenceServerClient(private.server.grpc_url)
    outcomes: list[str] = []

    def one() -> None:
        try:
            client.infer("slow_offline", [text_input("Same id twice.")], request_id="dup-offline")
            outcomes.append("ok")
        except InferenceServerException as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert "ok" in outcomes and any("already in flight" in o and "INVALID_ARG" in o for o in outcomes), outcomes
    one()  # free again once the first one is done
    assert outcomes[-1] == "ok"


@pytest.mark.alone
def test_lean_client_measures_the_fixed_profile(emulator) -> None:
    """The reference client (benchmarks/lean_client.py) against the ground truth: 200 ms, then 100 ms gaps."""
    from benchmarks.lean_client import run_load_sync

    texts = [LATIN, CJK] * 6
    run = run_load_sync(emulator.grpc, texts, model="cosyvoice2", concurrency=4, stagger_s=0.013)
    assert not run.errors
    assert len(run.requests) == 12 and [r.index for r in run.requests] == list(range(12))
    assert sum(r.samples for r in run.requests) == sum(speech_tokens(t) for t in texts) * SAMPLES_PER_TOKEN
    summary = run.summary()
    first, second = summary["first_chunk_ms"], summary["second_chunk_ms"]
    assert 200 <= first["p50"] < 215 and first["min"] >= 200, first  # type: ignore[index]
    assert 90 < second["p50"] < 110, second  # type: ignore[index]
    assert run.rtf == pytest.approx(run.wall_s / run.audio_s)
    assert run.cpu_s > 0 and summary["client_cpu_ms_per_request"] > 0  # type: ignore[operator]
    traced = {}
    for raw in emulator.trace("cosyvoice2").read_text().splitlines():
        line = json.loads(raw)
        traced[line["id"]] = line
    for r in run.requests:
        line = traced[r.request_id]
        truth = line["arrival"] + line["sends"][0] - r.sent_monotonic  # first send, on the client's clock
        assert 0 <= r.first_chunk - truth < 0.05  # type: ignore[operator]


def test_offline_shared_state_survives_a_burst(private: Private) -> None:
    """Arrival count and in-flight ids live in one file that 4 stub processes update under a lock."""
    state = private.root / "model_repository" / "slow_offline" / "state.json"
    before = json.loads(state.read_text())["arrivals"]
    client = grpcclient.InferenceServerClient(private.server.grpc_url)
    failures: list[str] = []

    def one(i: int) -> None:
        try:
            client.infer("slow_offline", [text_input(f"Burst {i}.")], request_id=new_id("burst"), client_timeout=30)
        except InferenceServerException as exc:
            failures.append(str(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    after = json.loads(state.read_text())
    assert after == {"arrivals": before + 24, "in_flight": []}
