"""Metric definitions on hand-made records: the formulas every view shares."""

from __future__ import annotations

from cvload.measure.metrics import (
    BY_NAME,
    MISSING,
    RUN_METRICS,
    lookup,
    measure_start,
    playback_stalls,
    stats,
    summarize,
    wall_time,
)
from cvload.results.records import ERR_CANCELLED, FLAG_SILENT, RequestRecord


def record(offsets: list[float], samples: list[int], **kw: object) -> RequestRecord:
    return RequestRecord(index=0, request_id="r", item_id="i", worker=0, server="s", text="t", sent=10.0,
                         chunk_offsets=offsets, chunk_samples=samples, end_offset=offsets[-1] if offsets else None,
                         **kw)  # type: ignore[arg-type]


def test_latency_definitions_follow_upstream():
    r = record([0.2, 0.3, 0.5], [24000, 24000, 24000])
    assert BY_NAME["first_chunk_latency_ms"].of(r) == 200.0
    assert abs(BY_NAME["second_chunk_latency_ms"].of(r) - 100.0) < 1e-9  # a gap, not from the start
    assert BY_NAME["rtf"].of(r) == 0.5 / 3.0
    assert BY_NAME["first_chunk_latency_corrected_ms"].of(r) is None  # closed loop: no intended time


def test_corrected_latency_counts_the_wait_before_sending():
    r = record([0.2], [24000], intended=9.5)
    assert abs(BY_NAME["first_chunk_latency_corrected_ms"].of(r) - 700.0) < 1e-9


def test_playback_stalls():
    # 1 s of audio at 0.2 s, the next chunk at 1.7 s: the listener waits 0.5 s once.
    assert playback_stalls(record([0.2, 1.7, 1.8], [24000, 24000, 24000])) == (1, 0.5)
    assert playback_stalls(record([0.2, 0.9], [24000, 24000])) == (0, 0.0)


def test_summary_excludes_warmup_and_cancelled_and_counts_flags():
    ok = record([0.2, 0.3], [24000, 24000])
    warm = record([0.2, 0.3], [24000, 24000], warmup=True)
    cancelled = record([0.2], [24000], error_kind=ERR_CANCELLED)
    silent = record([0.2], [24000], flags=[FLAG_SILENT])
    s = summarize([ok, warm, cancelled, silent], wall_s=2.0)
    assert s["requests"] == {"total": 2, "ok": 1, "failed": 1, "cancelled": 1, "warmup": 1, "incomplete": 0,
                             "barged_in": 0}
    assert s["audio_flags"][FLAG_SILENT] == 1 and s["error_rate"] == 0.5
    assert s["throughput"]["requests_per_s"] == 0.5
    assert s["metrics"]["first_chunk_latency_ms"]["count"] == 1


def test_barged_in_requests_are_neither_ok_nor_failed_and_count_only_where_heard():
    from cvload.results.records import ERR_BARGED_IN

    ok = record([0.2, 0.3], [24000, 24000])
    abandoned = record([0.4], [24000], error_kind=ERR_BARGED_IN)
    s = summarize([ok, abandoned], wall_s=2.0)
    assert s["requests"]["barged_in"] == 1 and s["requests"]["ok"] == 1 and s["requests"]["failed"] == 0
    assert s["error_rate"] == 0.0 and "barged_in" not in s["errors"]  # not an error
    assert s["metrics"]["first_chunk_latency_ms"]["count"] == 2  # its first chunk was heard
    assert s["metrics"]["first_chunk_latency_ms"]["max"] == 400.0
    assert s["metrics"]["total_latency_ms"]["count"] == 1  # it never completed
    assert s["audio_s_total"] == 2.0


def test_incomplete_requests_count_as_failed_with_their_latency_lower_bounds():
    from cvload.results.records import ERR_INCOMPLETE

    ok = record([0.2, 0.3], [24000, 24000])
    no_chunk = record([], [], error_kind=ERR_INCOMPLETE)
    no_chunk.end_offset = 5.2  # waited 5.2 s, nothing came
    one_chunk = record([0.4], [24000], error_kind=ERR_INCOMPLETE)
    one_chunk.end_offset = 6.0
    s = summarize([ok, no_chunk, one_chunk], wall_s=2.0)
    assert s["requests"]["incomplete"] == 2 and s["requests"]["failed"] == 2 and s["errors"]["incomplete"] == 2
    assert s["incomplete_min_s"] == 5.2
    first = s["metrics"]["first_chunk_latency_ms"]
    assert first["count"] == 3 and first["max"] == 5200.0 and first["min"] == 200.0  # 400: its real first chunk
    assert s["metrics"]["total_latency_ms"]["max"] == 6000.0  # at least
    assert s["metrics"]["rtf"]["count"] == 1  # no bound for a ratio: only finished requests
    assert s["goodput"] == {}  # no per-request objectives: no goodput (its group stays, empty)


def test_goodput_counts_requests_meeting_the_per_request_objectives():
    fast, slow = record([0.2, 0.3], [24000, 24000]), record([0.9, 1.0], [24000, 24000])
    failed = record([0.1], [24000], flags=[FLAG_SILENT])
    s = summarize([fast, slow, failed], wall_s=2.0, meets=lambda r: r.chunk_offsets[0] < 0.5)
    assert s["goodput"] == {"requests_per_s": 0.5, "share": 1 / 3}


def test_exact_percentiles():
    st = stats(list(range(1, 101)))
    assert st["p50"] == 50.5 and st["max"] == 100 and st["count"] == 100
    assert stats([])["p50"] is None


def test_wall_time_from_the_start_of_measurement_to_the_last_finish():
    warm = record([0.2], [24000], warmup=True)  # sent at 10.0
    first = record([0.2], [24000], run_start=9.0)
    first.sent = 10.5
    last = record([0.2, 1.5], [24000, 24000])
    last.sent = 11.0  # finishes at 12.5
    assert measure_start([warm, first, last]) == 10.5  # warmup excluded: the first measured send
    assert wall_time([warm, first, last]) == 2.0
    assert wall_time([first, last]) == 12.5 - 9.0  # no warmup: from the run's start
    assert wall_time([first, last], start=11.0) == 1.5  # the engine's own mark wins
    assert wall_time([], start=3.0, end=5.0) == 2.0 and wall_time([]) == 0.0


def test_every_run_metric_is_in_the_summary_csv_and_objectives(tmp_path):
    from cvload.measure.slo import RUN_OBJECTIVES
    from cvload.results.writer import ResultsWriter

    s = summarize([record([0.2, 0.3], [24000, 24000])], wall_s=2.0,
                  concurrency={"requested": 1.0, "achieved_mean": 1.0, "achieved_max": 1,
                               "achieved_mean_overall": 1.0}, meets=lambda r: True)
    for metric in RUN_METRICS:
        assert lookup(s, metric.name) is not MISSING, metric.name
        assert (metric.name in RUN_OBJECTIVES) == metric.objective
    assert s["throughput"]["requests_per_s"] == 0.5 and s["run_wall_rtf"] == 1.0
    assert summarize([], wall_s=0.0)["concurrency"] == {}  # nothing from the engine: an empty group
    writer = ResultsWriter(tmp_path)
    writer.write_summary(s)
    writer.close()
    rows = [line.split(",")[0] for line in (tmp_path / "summary.csv").read_text().splitlines()]
    assert rows[len(BY_NAME) + 1:] == [m.name for m in RUN_METRICS if m.csv]
