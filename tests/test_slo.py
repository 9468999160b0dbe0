"""Objectives: parsing (names, statistics, units), misspellings as errors, verdicts on real summaries."""

from __future__ import annotations

import pytest

from cvload.errors import UsageError
from cvload.measure.metrics import summarize
from cvload.measure.slo import (
    FAIL,
    NO_DATA,
    PASS,
    all_met,
    evaluate,
    parse_objective,
    parse_objectives,
    valid_names,
)
from cvload.results.records import ERR_TIMEOUT, FLAG_SILENT, RequestRecord


def record(i: int, first: float, gap: float = 0.1, chunks: int = 3, **kw: object) -> RequestRecord:
    offsets = [first + gap * k for k in range(chunks)]
    return RequestRecord(index=i, request_id=f"r{i}", item_id="x", worker=0, server="s", text="t", sent=0.0,
                         chunk_offsets=offsets, chunk_samples=[24000] * chunks, end_offset=offsets[-1] + 0.01,
                         **kw)  # type: ignore[arg-type]


def streaming_summary(n_failed: int = 0) -> dict:
    """100 streaming requests with first chunks at 100..199 ms, 100 ms gaps, 3 s of audio each."""
    records = [record(i, 0.100 + i / 1000) for i in range(100)]
    for r in records[:n_failed]:
        r.error_kind = ERR_TIMEOUT
    return summarize(records, wall_s=10.0)


def one(text: str, summary: dict) -> dict:
    return evaluate(parse_objectives([text]), summary)[0]


@pytest.mark.parametrize(("text", "metric", "unit", "threshold"), [
    ("first_chunk.p95<300ms", "metrics.first_chunk_latency_ms.p95", "ms", 300),
    ("second_chunk.p99<=150ms", "metrics.second_chunk_latency_ms.p99", "ms", 150),
    ("total.p50<2s", "metrics.total_latency_ms.p50", "s", 2),
    ("rtf.p50<0.5", "metrics.rtf.p50", "", 0.5),
    ("error_rate<1%", "error_rate", "%", 1),
    ("throughput.requests_per_s>5", "throughput.requests_per_s", "", 5),
    ("gpu.util.mean>0.5", "telemetry.gpu.util.mean", "", 0.5),
    ("gpu.util.mean>50%", "telemetry.gpu.util.mean", "%", 50),
    ("gpu.mem_used_bytes.max<70GiB", "telemetry.gpu.mem_used_bytes.max", "GiB", 70),
    ("gpu.devices.GPU-1a2b.util.max >= 0.1", "telemetry.gpu.devices.GPU-1a2b.util.max", "", 0.1),
    (" first_chunk_latency_ms.max < 1.5e3 ", "metrics.first_chunk_latency_ms.max", "ms", 1500),
    ("first_chunk.p95<300", "metrics.first_chunk_latency_ms.p95", "ms", 300),  # bare: the metric's unit
    ("stall_time.max<0.5s", "metrics.stall_s.max", "s", 0.5),
    ("errors.timeout==0", "errors.timeout", "", 0),
    ("concurrency.achieved_mean>=7.5", "concurrency.achieved_mean", "", 7.5),
])
def test_parse(text: str, metric: str, unit: str, threshold: float) -> None:
    obj = parse_objective(text)
    assert (obj.metric, obj.unit, obj.threshold, obj.text) == (metric, unit, threshold, text.strip())


def test_verdicts_on_a_summary_in_the_objectives_units() -> None:
    summary = streaming_summary()
    fc = summary["metrics"]["first_chunk_latency_ms"]
    results = evaluate(parse_objectives([
        "first_chunk.p95<300ms", "first_chunk.p50<0.1s", "total.p50<2s", "second_chunk.p99<=100ms",
        "rtf.p50<0.5", "error_rate<1%", "throughput.requests_per_s>5", "first_chunk.max<=199ms",
        "second_chunk.p99<100ms",
    ]), summary)
    by = {r["objective"]: r for r in results}
    assert by["first_chunk.p95<300ms"]["measured"] == pytest.approx(fc["p95"])
    assert by["first_chunk.p95<300ms"]["verdict"] == PASS
    assert by["first_chunk.p50<0.1s"]["measured"] == pytest.approx(fc["p50"] / 1000)  # reported in seconds
    assert by["first_chunk.p50<0.1s"]["verdict"] == FAIL
    assert by["total.p50<2s"]["measured"] == pytest.approx(summary["metrics"]["total_latency_ms"]["p50"] / 1000)
    assert by["second_chunk.p99<=100ms"]["verdict"] == PASS  # the gap is 100 ms: <= holds at equality
    assert by["second_chunk.p99<100ms"]["verdict"] == FAIL  # ... and < does not (float noise aside)
    assert by["rtf.p50<0.5"]["verdict"] == PASS  # ~0.35 s for 3 s of audio
    assert by["error_rate<1%"]["measured"] == 0 and by["error_rate<1%"]["verdict"] == PASS
    assert by["throughput.requests_per_s>5"]["measured"] == pytest.approx(10.0)
    assert by["first_chunk.max<=199ms"]["verdict"] == PASS
    for r in results:
        assert set(r) >= {"objective", "metric", "measured", "threshold", "unit", "verdict"}
    assert not all_met(results)
    assert all_met([r for r in results if r["verdict"] == PASS])


def test_error_rate_in_percent_and_counts_by_kind() -> None:
    summary = streaming_summary(n_failed=3)
    r = one("error_rate<1%", summary)
    assert r["measured"] == pytest.approx(3.0) and r["unit"] == "%" and r["verdict"] == FAIL
    assert one("error_rate<=0.03", summary)["verdict"] == PASS
    assert one("errors.timeout<1", summary)["measured"] == 3
    assert one("requests.failed==3", summary)["verdict"] == PASS


def test_audio_flags_are_objectives_too() -> None:
    records = [record(i, 0.1) for i in range(10)]
    records[0].flags = [FLAG_SILENT]
    summary = summarize(records, wall_s=1.0)
    assert one("audio_flags.audio_silent==0", summary)["verdict"] == FAIL
    assert one("error_rate<5%", summary)["verdict"] == FAIL  # broken audio counts as a failed request


def test_no_data_counts_as_failed() -> None:
    offline = summarize([record(i, 0.5, chunks=1) for i in range(5)], wall_s=1.0)  # one chunk: no second chunk
    r = one("second_chunk.p95<150ms", offline)
    assert r["verdict"] == NO_DATA and r["measured"] is None and r["detail"]
    assert not all_met([r])


def test_telemetry_objectives_without_telemetry_are_no_data() -> None:
    summary = streaming_summary()
    r = one("gpu.util.mean>0.5", summary)
    assert r["verdict"] == NO_DATA and "telemetry" in r["detail"]
    summary["telemetry"] = {"gpu": {"util": {"mean": None, "max": None}, "count": 0}}  # no GPU metrics
    assert one("gpu.util.mean>0.5", summary)["verdict"] == NO_DATA
    summary["telemetry"] = {"gpu": {"util": {"mean": 0.7, "max": 0.95}, "mem_used_bytes": {"max": 40 * 2**30}}}
    r = one("gpu.util.mean>50%", summary)
    assert r["measured"] == pytest.approx(70.0) and r["verdict"] == PASS
    assert one("gpu.mem_used_bytes.max<39GiB", summary)["verdict"] == FAIL
    assert one("gpu.util.max<=0.95", summary)["verdict"] == PASS


def test_no_measured_requests_is_no_data() -> None:
    empty = summarize([], wall_s=0.0)
    results = evaluate(parse_objectives(["error_rate<1%", "first_chunk.p95<300ms"]), empty)
    assert [r["verdict"] for r in results] == [NO_DATA, NO_DATA]


@pytest.mark.parametrize(("text", "message"), [
    ("frist_chunk.p95<300ms", r"unknown metric 'frist_chunk\.p95'(.|\n)*did you mean first_chunk\.p95\?"),
    ("first_chunk.p96<300ms", r"unknown statistic 'p96' of first_chunk"),
    ("first_chunk.avg<300ms", r"statistics: p50, p90, p95, p99, mean, max, min, count"),
    ("first_chunk<300ms", r"first_chunk needs a statistic, e.g\. first_chunk\.p95"),
    ("error_rte<1%", r"did you mean error_rate\?"),
    ("gpu.utilization.mean>0.5", r"unknown metric(.|\n)*telemetry: gpu\.util\.mean"),
    ("rtf.p50<0.5ms", r"unit 'ms' does not apply to rtf\.p50"),
    ("first_chunk.p95<30%", r"unit '%' does not apply(.|\n)*use 'ms', 's'"),
    ("first_chunk.p95<300sec", r"unit 'sec' does not apply"),
    ("first_chunk.p95 300ms", r"is not METRIC OP VALUE\[UNIT\]"),
    ("first_chunk.p95=<300ms", r"is not METRIC OP VALUE\[UNIT\]"),
    ("", r"is not METRIC OP VALUE\[UNIT\]"),
])
def test_mistakes_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_objectives(["error_rate<1%", text])
    assert text.strip() in str(info.value) or not text


def test_unknown_metric_lists_the_valid_names() -> None:
    with pytest.raises(UsageError) as info:
        parse_objective("latency.p95<1s")
    shown = str(info.value)
    for name in ("first_chunk", "second_chunk", "total", "rtf", "error_rate", "throughput.requests_per_s",
                 "gpu.util.mean"):
        assert name in shown


def test_every_valid_name_parses() -> None:
    for name in valid_names():
        assert parse_objective(f"{name}>=0").metric.endswith(name.split(".")[-1])


def test_request_check_applies_each_per_request_objective_to_each_request() -> None:
    from cvload.measure.slo import request_check

    def rec(offsets: list[float]) -> RequestRecord:
        return RequestRecord(index=0, request_id="r", item_id="i", worker=0, server="s", text="t", sent=0.0,
                             chunk_offsets=offsets, chunk_samples=[24000] * len(offsets), end_offset=offsets[-1])

    meets = request_check(parse_objectives(["first_chunk.p95<300ms", "second_chunk.p99<=0.2s", "error_rate<1%"]))
    assert meets is not None
    assert meets(rec([0.25, 0.4]))  # 250 ms first, 150 ms gap
    assert not meets(rec([0.35, 0.4]))  # first chunk too late
    assert not meets(rec([0.1, 0.35]))  # a 250 ms gap
    assert meets(rec([0.1]))  # no second chunk: that objective does not apply
    assert request_check(parse_objectives(["error_rate<1%", "throughput.requests_per_s>2"])) is None
