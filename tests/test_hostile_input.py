"""Hostile input, property-based: every parser a user or a server feeds either works or raises cvload's own error
with a message (``CvloadError`` for users, ``TargetError`` for servers, ``MalformedScrape`` for metrics): never
another exception. Examples are few and fast; each test names the parser it shakes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvload.errors import CvloadError
from cvload.targets.base import TargetError

FAST = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 40)), deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Text that looks like what the parsers expect more often than pure noise does.
NOISE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
NEAR = st.text(alphabet="0123456789.:-+_|/[]<>=%a bcdefhmspx@#\"'{}\n\t\\eEnNiIfF", max_size=30)
SOME_TEXT = st.one_of(NOISE, NEAR)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                         SOME_TEXT)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(SOME_TEXT, inner, max_size=4), max_leaves=12)


def ours(call, *args, errors=(CvloadError,), **kwargs):
    """Call it; a failure must be one of ``errors`` with a message."""
    try:
        return call(*args, **kwargs)
    except errors as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return exc


# ---- what users write -------------------------------------------------------------------------------------------
@FAST
@given(st.one_of(SOME_TEXT, st.floats(), st.integers(-10**30, 10**30), st.booleans()))
def test_durations(text):
    from cvload.settings.config import parse_duration

    value = ours(parse_duration, text)
    if isinstance(value, float):
        assert math.isfinite(value) and value >= 0


@FAST
@given(SOME_TEXT, st.sampled_from(["grpc", "http"]))
def test_addresses(text, protocol):
    from cvload.settings.address import normalize_metrics_url, parse, server_address, speech_url

    for call, args in ((parse, (text,)), (server_address, (text, protocol)), (normalize_metrics_url, (text,)),
                       (speech_url, (text,))):
        ours(call, *args)


@FAST
@given(st.one_of(SOME_TEXT, st.builds(lambda m, op, v: f"{m}{op}{v}",
                                      st.sampled_from(["first_chunk.p95", "error_rate", "rtf.p50", "x", "gpu.util"]),
                                      st.sampled_from(["<", "<=", ">", ">=", "=", "==", ""]), NEAR)))
def test_objectives(text):
    from cvload.measure.slo import parse_objective, parse_objectives

    ours(parse_objective, text)
    ours(parse_objectives, [text, text])


@FAST
@given(SOME_TEXT)
def test_warmup(text):
    from cvload.settings.config import Warmup

    ours(Warmup.parse, text)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # ints, and strings (JSON escapes are TOML escapes)


SCENARIO_KEYS = st.sampled_from(["mode", "protocol", "api", "num_tasks", "rate", "requests", "duration", "warmup",
                                 "ramp", "slo", "server", "inputs", "request_timeout", "on_server_loss",
                                 "profile_set", "arrival", "max_inflight", "nonsense", "seed", "out"])
TOML_SCALARS = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), SOME_TEXT)
TOML_VALUES = st.one_of(TOML_SCALARS, st.lists(TOML_SCALARS, max_size=3),
                        st.dictionaries(st.text("abcxyz_", min_size=1, max_size=5), TOML_SCALARS, max_size=2))


@FAST
@given(st.dictionaries(SCENARIO_KEYS, TOML_VALUES, max_size=5), st.one_of(st.just(""), SOME_TEXT))
def test_scenario_toml(table, junk):
    from cvload.settings.config import RunConfig
    from cvload.settings.scenario import load_scenario

    text = "".join(f"{key} = {_toml_value(value)}\n" for key, value in table.items()) + junk
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.toml"
        path.write_text(text, encoding="utf-8")
        values = ours(load_scenario, path)
        if isinstance(values, dict):  # a scenario that reads must also make a config or say why not
            values.pop("name", None)
            ours(lambda: RunConfig(server=["localhost"]).merged(values).validate())


MANIFEST_LINE = st.builds("|".join, st.lists(st.one_of(NEAR, st.just(""), st.just("a.wav")), min_size=1,
                                             max_size=5))
JSONL_OBJECT = st.dictionaries(st.sampled_from(["id", "target_text", "prompt_text", "prompt_wav", "prompt_audio",
                                                "x"]),
                               st.one_of(JSON_VALUES, st.fixed_dictionaries(
                                   {"array": st.lists(st.floats(width=32), max_size=5),
                                    "sampling_rate": st.integers(-5, 50000)})), max_size=4)


@FAST
@given(st.lists(st.one_of(MANIFEST_LINE, SOME_TEXT), max_size=4), st.lists(st.one_of(
    JSONL_OBJECT.map(json.dumps), st.builds(json.dumps, JSON_VALUES), SOME_TEXT), max_size=4),
    st.binary(max_size=30))
def test_manifests_and_jsonl(manifest, jsonl, raw):
    from cvload.settings.inputs import load_items

    with tempfile.TemporaryDirectory() as folder:
        for name, content in (("m.txt", "\n".join(manifest)), ("i.jsonl", "\n".join(jsonl))):
            path = Path(folder) / name
            path.write_text(content, encoding="utf-8")
            for spk_cache in (False, True):
                ours(load_items, path, spk_cache=spk_cache)
        path = Path(folder) / "raw.jsonl"
        path.write_bytes(raw)
        ours(load_items, path)


# ---- what servers send ------------------------------------------------------------------------------------------
@FAST
@given(st.one_of(SOME_TEXT, st.lists(st.one_of(
    st.builds(lambda n, lab, v: f"{n}{{{lab}}} {v}", st.sampled_from(
        ["nv_gpu_utilization", "nv_inference_count", "DCGM_FI_DEV_GPU_UTIL", "nv_cpu_memory_total_bytes", "x"]),
        st.sampled_from(['gpu_uuid="a"', 'model="m",version="1"', 'gpu="0"', "", 'a="']),
        st.one_of(st.floats().map(repr), NEAR)),
    st.sampled_from(["# TYPE x counter", "# HELP x y", "# TYPE nv_gpu_utilization gauge", "# EOF"]),
    NEAR), max_size=6).map("\n".join)))
def test_prometheus_text(text):
    from cvload.telemetry import MalformedScrape, parse_metrics

    scrape = ours(parse_metrics, text, errors=(MalformedScrape,))
    if not isinstance(scrape, Exception):
        for reading in [*scrape.gpus.values(), scrape.cpu, *scrape.models.values()]:
            assert all(isinstance(v, float) for v in reading.values())


SSE_LINE = st.binary(max_size=20).filter(lambda b: b"\n" not in b and b"\r" not in b)
SSE_EVENTS = st.lists(st.lists(SSE_LINE, min_size=1, max_size=2), max_size=5)  # each event one or two data lines


@FAST
@given(SSE_EVENTS, st.lists(st.integers(0, 200), max_size=6), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_sse_frames_split_anywhere(events, cuts, newline):
    """Cut a stream of events at any points: the same events come out, whatever the line ends."""
    from cvload.targets.sse import SseParser

    stream = b"".join(b"".join(b"data: " + line + newline for line in e) + newline for e in events)
    parser = SseParser()
    got: list[bytes] = []
    start = 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        got += map(b"".join, parser.feed(stream[start:cut]))
        start = cut
    got += map(b"".join, parser.feed(stream[start:]))
    got += map(b"".join, parser.finish())
    assert got == [b"\n".join(e) for e in events]


@FAST
@given(st.lists(st.binary(max_size=40), max_size=5))
def test_sse_noise(reads):
    from cvload.targets.sse import SseParser

    parser = SseParser()
    for data in reads:
        assert all(isinstance(p, bytes | memoryview) for parts in parser.feed(data) for p in parts)
    parser.finish()


@FAST
@given(st.binary(max_size=64), st.sampled_from(["<i2", "<f4"]))
def test_raw_pcm_chunks(data, dtype):
    """Raw int16 (or float32) audio of any length: counted and decoded, or a protocol error (never numpy's)."""
    from cvload.targets.cosyvoice_common import Int16Audio
    from cvload.targets.openai_speech import PcmAudio

    for audio in (Int16Audio(data), PcmAudio(data, dtype)):
        decoded = ours(audio.decode, errors=(TargetError,))
        if isinstance(decoded, np.ndarray):
            assert decoded.dtype == np.float32 and decoded.size == audio.count()


@FAST
@given(st.lists(st.binary(max_size=48), max_size=4), st.binary(max_size=48))
def test_wav_headers(reads, prefix):
    from cvload.targets.openai_speech import WavHeader

    header = WavHeader()
    for data in [prefix, *reads]:
        if ours(header.feed, data, errors=(TargetError,)) is not None or header.done:
            break


WAVE_SHAPES = st.lists(st.one_of(st.integers(-3, 2**40), st.floats(), SOME_TEXT, st.none()), max_size=3)
OUTPUT = st.fixed_dictionaries(
    {"name": st.sampled_from(["waveform", "other", 7]), "datatype": st.sampled_from(["FP32", "INT16", "BYTES", None]),
     "shape": st.one_of(WAVE_SHAPES, SOME_TEXT, st.none())},
    optional={"data": st.one_of(st.lists(st.one_of(st.floats(), st.integers(-2**70, 2**70), SOME_TEXT), max_size=6),
                                JSON_VALUES),
              "parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": st.one_of(
                  st.integers(-8, 64), st.floats(), SOME_TEXT, st.none())}), JSON_VALUES)})


@FAST
@given(st.one_of(st.fixed_dictionaries({"outputs": st.lists(OUTPUT, max_size=3)}), JSON_VALUES),
       st.binary(max_size=64), st.one_of(st.none(), st.just("header"), SOME_TEXT, st.integers(-5, 500).map(str)))
def test_triton_infer_responses(header, tail, header_length):
    """HTTP infer: a missing waveform, wrong dtype or shape, NaN, a lying length, garbage: array or TargetError."""
    from cvload.targets.triton_http import decode_infer_response

    head = json.dumps(header).encode()
    length = str(len(head)) if header_length == "header" else header_length
    ours(decode_infer_response, head + tail, length, errors=(TargetError,))


@FAST
@given(st.one_of(
    st.builds(lambda head, values, end: b'{"id":"1",' + head + b'"waveform":[' + values + end,
              st.sampled_from([b"", b'"error":"boom",', b'"x":{"y":[1]},']),
              st.one_of(st.lists(st.one_of(st.floats().map(repr), NEAR), max_size=5).map(",".join), NEAR)
              .map(str.encode), st.sampled_from([b"]}", b"]", b"", b"]}]}", b"],\"final\":true}"])),
    st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES), st.binary(max_size=60)))
def test_triton_stream_events(payload):
    from cvload.targets.triton_http import read_event

    audio = ours(read_event, payload, errors=(TargetError,))
    if not isinstance(audio, Exception) and not isinstance(audio, np.ndarray):
        count = audio.count()
        decoded = ours(audio.decode, errors=(TargetError,))
        if isinstance(decoded, np.ndarray):
            assert decoded.dtype == np.float32 and decoded.size == count


@FAST
@given(st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["waveform", "other"]), "datatype": st.sampled_from(["FP32", "FP16", "BYTES", ""]),
    "shape": st.lists(st.integers(-3, 2**40), max_size=3), "raw": st.one_of(st.none(), st.binary(max_size=40)),
    "fp32": st.lists(st.floats(width=32), max_size=5)}), max_size=3))
def test_triton_grpc_responses(outputs):
    from tritonclient.grpc import service_pb2 as pb

    from cvload.targets.triton_grpc import decode_waveform

    response = pb.ModelInferResponse(model_name="m", id="1")
    for output in outputs:
        tensor = response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        tensor.contents.fp32_contents.extend(output["fp32"])
        if output["raw"] is not None:
            response.raw_output_contents.append(output["raw"])
    audio = ours(decode_waveform, response, errors=(TargetError,))
    if isinstance(audio, np.ndarray):
        assert audio.dtype == np.float32


def test_a_huge_chunk_is_counted_without_parsing_it():
    """A 100 MB event: found and counted by byte scans; its floats are parsed only when asked for."""
    from cvload.targets.triton_http import JsonAudio, read_event

    values = b"0.5," * (25 * 1024 * 1024)  # 100 MB of text
    audio = read_event(b'{"id":"1","waveform":[' + values + b'0.5]}')
    assert isinstance(audio, JsonAudio) and audio.count() == 25 * 1024 * 1024 + 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.0])
def test_durations_that_are_not_finite_are_refused(value):
    from cvload.settings.config import parse_duration

    if value == 0:
        assert parse_duration(value) == 0.0
    else:
        with pytest.raises(CvloadError, match="duration"):
            parse_duration(value)

