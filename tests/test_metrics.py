"""Metric definitions on hand-made records: the formulas every view shares."""

from __future__ import annotations

from cvload.metrics import BY_NAME, playback_stalls, stats, summarize
from cvload.records import ERR_CANCELLED, FLAG_SILENT, RequestRecord


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
    assert s["requests"] == {"total": 2, "ok": 1, "failed": 1, "cancelled": 1, "warmup": 1}
    assert s["audio_flags"][FLAG_SILENT] == 1 and s["error_rate"] == 0.5
    assert s["throughput"]["requests_per_s"] == 0.5
    assert s["metrics"]["first_chunk_latency_ms"]["count"] == 1


def test_exact_percentiles():
    st = stats(list(range(1, 101)))
    assert st["p50"] == 50.5 and st["max"] == 100 and st["count"] == 100
    assert stats([])["p50"] is None
