"""Telemetry against the real Triton server: metrics scrape, statistics diffs, failing sources, GPU parsing.

GPU readings come from real scrapes of an H100 (tests/fixtures/triton_gpu_metrics*.txt, made by
tests/fixtures/capture_gpu_metrics.py); everything else talks to the session's emulator server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio

from cvload.errors import UsageError
from cvload.targets import make_target
from cvload.telemetry import (
    TELEMETRY_KEYS,
    NvmlSampler,
    NvmlUnavailable,
    Telemetry,
    default_metrics_url,
    normalize_metrics_url,
    parse_metrics,
    stats_diff,
)
from cvload.telemetry.prometheus import MalformedScrape, model_deltas
from cvload.telemetry.sampler import _aggregate_gpus, _flatten
from cvload.telemetry.summary import build_summary
from cvload.triton.launcher import free_ports

FIXTURES = Path(__file__).parent / "fixtures"
H100 = "GPU-44c5e1bf-45ec-5991-49d8-0c969b43e3c6"
OFFLINE = "cosyvoice2_offline"  # instant profile, one response per request


async def infer_offline(address: str, n: int, model: str = OFFLINE) -> None:
    client = httpaio.InferenceServerClient(address)
    try:
        for i in range(n):
            text = httpclient.InferInput("target_text", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[f"telemetry test {i}".encode()]], dtype=object))
            await client.infer(model, [text], request_id=f"tel-{time.monotonic_ns()}")
    finally:
        await client.close()


async def wait_until(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def wait_for_stats(target, before: dict, n: int, timeout: float = 15.0) -> None:
    """Wait until Triton's statistics count ``n`` more requests of OFFLINE than ``before``."""
    deadline = time.monotonic() + timeout
    while row(stats_diff(before, await target.statistics()), OFFLINE)["count"] < n:
        assert time.monotonic() < deadline, f"Triton's statistics never counted {n} requests"
        await asyncio.sleep(0.02)


def at(section: dict, key: str) -> float | None:
    """The value at an objective key (``gpu.util.mean``) in a telemetry section, as objectives read it."""
    node = section
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{key}: no {part!r} in the summary"
        node = node[part]
    assert node is None or isinstance(node, int | float), f"{key} names a group"
    return node


async def statistics(protocol: str, address: str) -> dict:
    """Triton's statistics as a run reads them: through its target."""
    target = make_target(protocol, "offline", address, OFFLINE)
    try:
        return await target.statistics()
    finally:
        await target.close()


def row(rows: list[dict], model: str) -> dict:
    found = [r for r in rows if r["model"] == model]
    assert found, f"{model} missing from {[r['model'] for r in rows]}"
    return found[0]


# -- parsing real scrapes --------------------------------------------------------------------------------------
def test_parses_real_h100_scrape() -> None:
    loaded = parse_metrics((FIXTURES / "triton_gpu_metrics.txt").read_text())
    assert list(loaded.gpus) == [H100]
    gpu = loaded.gpus[H100]
    assert gpu["util"] == pytest.approx(0.99)  # Triton reports a fraction already
    assert gpu["mem_used_bytes"] == 10265559040 and gpu["mem_total_bytes"] == 85520809984
    assert gpu["power_w"] == pytest.approx(702.663) and gpu["power_limit_w"] == 700
    assert gpu["energy_j"] == pytest.approx(2087.646)
    assert 0 < loaded.cpu["util"] < 1 and loaded.cpu["mem_total_bytes"] > loaded.cpu["mem_used_bytes"] > 0
    # Counter samples are named <name>_total by the parser: model counters must still be read.
    assert loaded.models["cosyvoice2"]["success"] == 0 and loaded.models["cosyvoice2"]["failure"] == 0
    assert "pending" in loaded.models["cosyvoice2"]


def test_summary_over_real_idle_and_loaded_scrapes() -> None:
    """Idle then loaded H100 scrapes fed as two samples: aggregate, per-GPU block, energy used, objective keys."""
    series: dict[str, list[tuple[float, float]]] = {}
    for t, name in ((1.0, "triton_gpu_metrics_idle.txt"), (2.0, "triton_gpu_metrics.txt")):
        agg = _aggregate_gpus(parse_metrics((FIXTURES / name).read_text()).gpus)
        values: dict[str, float] = {}
        _flatten("gpu", agg, values)
        for k, v in values.items():
            series.setdefault(k, []).append((t, v))
    summary = build_summary(series, start=0.0, end=2.0, gpu_ids=[H100], model_names=[], gpu_source="server",
                            stages=[], sources={}, warnings=[], interval=1.0, ticks=[1.0, 2.0])
    assert at(summary, "gpu.util.mean") == pytest.approx(0.495)
    assert at(summary, "gpu.util.max") == pytest.approx(0.99)
    assert at(summary, "gpu.mem_used_bytes.max") == 10265559040
    assert at(summary, "gpu.power_w.mean") == pytest.approx((126.652 + 702.663) / 2)
    assert at(summary, "gpu.energy_j") == pytest.approx(2087.646 - 630.398)
    assert at(summary, f"gpu.devices.{H100}.util.max") == pytest.approx(0.99)
    assert summary["gpu"]["count"] == 1
    # Only the measured window counts: from t=2 the idle sample is out.
    later = build_summary(series, start=1.5, end=2.0, gpu_ids=[H100], model_names=[], gpu_source="server",
                          stages=[], sources={}, warnings=[], interval=1.0, ticks=[1.0, 2.0])
    assert at(later, "gpu.util.mean") == pytest.approx(0.99)
    assert later["window"]["samples"] == 1
    for key in TELEMETRY_KEYS:  # every documented key resolves
        at(summary, key)


def test_parses_dcgm_exporter_format() -> None:
    # dcgm-exporter's documented exposition: percent, MiB, W, mJ; GPU identified by the UUID label.
    text = "\n".join([
        "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).",
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-aaaa",device="nvidia0",modelName="NVIDIA H100 80GB HBM3"} 87',
        'DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-bbbb",device="nvidia1",modelName="NVIDIA H100 80GB HBM3"} 13',
        "# TYPE DCGM_FI_DEV_FB_USED gauge",
        'DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-aaaa"} 40000',
        'DCGM_FI_DEV_FB_USED{gpu="1",UUID="GPU-bbbb"} 1000',
        "# TYPE DCGM_FI_DEV_FB_FREE gauge",
        'DCGM_FI_DEV_FB_FREE{gpu="0",UUID="GPU-aaaa"} 41000',
        'DCGM_FI_DEV_FB_FREE{gpu="1",UUID="GPU-bbbb"} 80000',
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
        'DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-aaaa"} 512.5',
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-aaaa"} 123456789',
        "",
    ])
    scrape = parse_metrics(text)
    a, b = scrape.gpus["GPU-aaaa"], scrape.gpus["GPU-bbbb"]
    assert a["util"] == pytest.approx(0.87) and b["util"] == pytest.approx(0.13)
    assert a["mem_used_bytes"] == 40000 * 2**20 and a["mem_total_bytes"] == 81000 * 2**20
    assert a["power_w"] == 512.5 and a["energy_j"] == pytest.approx(123456.789)
    agg = _aggregate_gpus(scrape.gpus)
    assert agg["count"] == 2 and agg["util"] == pytest.approx(0.5)
    assert agg["mem_used_bytes"] == 41000 * 2**20 and agg["power_w"] == 512.5
    assert not scrape.cpu and not scrape.models


@pytest.mark.parametrize("text", ['{"model_stats": []}', "<html><body>Not Found</body></html>", "up yes"])
def test_malformed_text_is_rejected(text: str) -> None:
    with pytest.raises(MalformedScrape, match="not Prometheus text format"):
        parse_metrics(text)


def test_counter_deltas_and_restart() -> None:
    prev = {"success": 10.0, "queue_us": 5000.0, "pending": 3.0}
    assert model_deltas(None, prev) == {"pending": 3.0}  # first scrape: a baseline, no deltas
    assert model_deltas(prev, {"success": 14.0, "queue_us": 9000.0, "pending": 1.0}) == {
        "pending": 1.0, "success": 4.0, "queue_ms": 4.0}
    # The server restarted: counters start again from zero, the delta is the new count.
    assert model_deltas(prev, {"success": 2.0, "queue_us": 100.0, "pending": 0.0})["success"] == 2.0


def test_urls() -> None:
    assert normalize_metrics_url("gpu-box:9400") == "http://gpu-box:9400/metrics"
    assert normalize_metrics_url("http://h:8002/metrics") == "http://h:8002/metrics"
    assert default_metrics_url("10.0.0.5:8001", "grpc") == "http://10.0.0.5:8002/metrics"
    assert default_metrics_url("http://h:18000", "http") == "http://h:18002/metrics"
    assert default_metrics_url("h", "grpc") == "http://h:8002/metrics"
    assert default_metrics_url("h", "http") == "http://h:8002/metrics"


def test_bad_settings_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="--gpu-source 'gpu'"):
        Telemetry(metrics_url=None, stats_source=None, gpu_source="gpu")
    with pytest.raises(UsageError, match="--telemetry-interval"):
        Telemetry(metrics_url=None, stats_source=None, interval=0)


# -- statistics API against the real server ---------------------------------------------------------------------
async def test_stats_diff_counts_requests_per_stage(emulator) -> None:
    before = await statistics("http", emulator.http)
    await infer_offline(emulator.http, 3)
    target = make_target("http", "offline", emulator.http, OFFLINE)
    try:
        await wait_for_stats(target, before, 3)  # counted just after the response: not yet, at times
        after = await target.statistics()
    finally:
        await target.close()
    rows = stats_diff(before, after)
    r = row(rows, OFFLINE)
    assert r["count"] == 3 and r["failures"] == 0 and r["executions"] == 3
    for stage in ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms", "request_ms"):
        assert r[stage] is not None and r[stage] >= 0
    assert r["compute_infer_ms"] <= r["request_ms"]
    assert [(b["batch_size"], b["count"]) for b in r["batches"]] == [(1, 3)]
    idle = row(rows, "cosyvoice2_demo")  # all models are listed; idle ones have no means
    assert idle["count"] == 0 and idle["queue_ms"] is None
    assert [x["model"] for x in stats_diff(before, after, active_only=True)] == [OFFLINE]
    assert rows[0]["model"] == "cosyvoice2"  # the front model leads (pipeline order)

    # The gRPC form (counts as strings, zero stats as {}) diffs the same.
    grpc_after = await statistics("grpc", emulator.grpc)
    assert row(stats_diff(before, grpc_after), OFFLINE)["count"] == 3


def test_malformed_statistics_are_rejected() -> None:
    with pytest.raises(ValueError, match="no 'model_stats' list"):
        stats_diff(None, {"name": "triton"})
    with pytest.raises(ValueError, match=r"model_stats\[m\].queue.ns: expected a number"):
        stats_diff(None, {"model_stats": [{"name": "m", "inference_stats": {"queue": {"count": 1, "ns": "x"}}}]})


# -- Telemetry end to end ---------------------------------------------------------------------------------------
async def test_telemetry_samples_real_server(emulator, tmp_path: Path) -> None:
    out = tmp_path / "results" / "telemetry.jsonl"
    target = make_target("http", "offline", emulator.http, OFFLINE)
    tel = Telemetry(metrics_url=emulator.server.metrics_url, stats_source=target.statistics,
                    interval=0.1, out_path=out)
    before = await target.statistics()
    await tel.start()
    try:
        await infer_offline(emulator.http, 2)  # warmup: excluded from the stage breakdown
        # Triton counts a request in its statistics just after sending the response: wait for the warmup's.
        await wait_for_stats(target, before, 2)
        tel.mark_measure_start()
        await tel.wait_measure_baseline()
        await infer_offline(emulator.http, 4)
        ok = f"models.{OFFLINE}.success"
        await wait_until(lambda: sum(v for _, v in tel.series().get(ok, [])) >= 6, what="success deltas")
        # Triton refreshes CPU readings every metrics interval (1 s on the test server).
        await wait_until(lambda: "cpu.mem_total_bytes" in tel.series(), what="CPU memory reading")
        live = tel.stage_breakdown(window_s=60)
        assert row(live, OFFLINE)["count"] == 6  # the live window reaches back over the warmup
    finally:
        await tel.stop()
        await target.close()

    summary = tel.summary()
    assert summary["warnings"] == [] and tel.warnings == []
    assert summary["sources"]["metrics"]["status"] == "ok" and summary["sources"]["stats"]["status"] == "ok"
    stage = row(summary["stages"], OFFLINE)
    assert stage["count"] == 4 and stage["failures"] == 0  # measured window only
    assert all(r["count"] or r["failures"] or r["executions"] for r in summary["stages"])
    assert 4 <= summary["models"][OFFLINE]["success"] <= 6  # interval deltas: the mark falls inside one
    assert summary["models"][OFFLINE]["failure"] == 0
    cpu_util = at(summary, "cpu.util.max")
    assert cpu_util is not None and 0 <= cpu_util <= 1
    assert at(summary, "cpu.mem_total_bytes") > 0
    # No GPU on this server: GPU values are None, marked unavailable with the reason, and no warning in auto.
    assert at(summary, "gpu.util.mean") is None
    gpu = summary["sources"]["gpu"]
    assert gpu["status"] == "unavailable" and "reports no GPU metrics" in gpu["error"]

    series = tel.series()
    assert all(0 <= v <= 1 for _, v in series["cpu.util"])
    assert all(v >= 0 for name, pts in series.items() if name.startswith("models.") for _, v in pts)
    times = [t for t, _ in series["cpu.util"]]
    assert times == sorted(times)

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(1 for x in lines if x["measured"]) == summary["window"]["samples"] >= 2
    assert lines[0]["measured"] is False and lines[-1]["measured"] is True
    assert all(x["status"]["metrics"] == "ok" for x in lines)
    assert sum(x.get("models", {}).get(OFFLINE, {}).get("success", 0) for x in lines) == 6


async def test_unreachable_sources_warn_once_and_sampling_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    metrics_port, http_port = free_ports(2)
    target = make_target("http", "offline", f"127.0.0.1:{http_port}", OFFLINE)
    tel = Telemetry(metrics_url=f"127.0.0.1:{metrics_port}", stats_source=target.statistics,
                    interval=0.02, gpu_source="server", out_path=blocker / "telemetry.jsonl")
    await tel.start()  # must not raise
    await wait_until(lambda: tel.summary()["window"]["samples"] >= 10, what="10 samples")
    await tel.stop()
    await tel.stop()  # idempotent
    await target.close()
    assert len(tel.warnings) == 3, tel.warnings  # metrics, stats, output file: one each however many samples
    assert any(f"metrics endpoint http://127.0.0.1:{metrics_port}/metrics unreachable" in w for w in tel.warnings)
    assert any("statistics unavailable" in w and f"127.0.0.1:{http_port}" in w for w in tel.warnings)
    assert any("cannot write" in w and "kept in memory only" in w for w in tel.warnings)
    status = tel.status()
    assert status["metrics"]["status"] == status["stats"]["status"] == status["gpu"]["status"] == "unavailable"
    assert tel.series() == {} and tel.stage_breakdown() == []
    summary = tel.summary()
    assert summary["gpu"]["util"] == {"mean": None, "max": None} and summary["stages"] == []


async def test_malformed_sources_warn_once(emulator) -> None:
    base = f"http://{emulator.http}"

    async def wrong_json() -> dict:  # the real server's metadata: JSON, but not the statistics shape
        async with aiohttp.ClientSession() as session, session.get(f"{base}/v2") as resp:
            return await resp.json()

    # Triton's own statistics JSON is not Prometheus text: a malformed scrape.
    tel = Telemetry(metrics_url=f"{base}/v2/models/stats", stats_source=wrong_json, interval=0.02)
    await tel.start()
    await wait_until(lambda: tel.summary()["window"]["samples"] >= 5, what="5 samples")
    await tel.stop()
    assert len(tel.warnings) == 2, tel.warnings  # the two sources are read at once: either may warn first
    scrape, stats = sorted(tel.warnings, key=lambda w: "statistics are malformed" in w)
    assert "/v2/models/stats is malformed: not Prometheus text format" in scrape
    assert "statistics are malformed" in stats and "model_stats" in stats
    assert tel.status()["metrics"]["status"] == "unavailable"

    # A path the metrics port does not serve (Triton answers it with an empty page).
    tel = Telemetry(metrics_url=emulator.server.metrics_url.replace("/metrics", "/nothing"), stats_source=None,
                    interval=0.02, gpu_source="none")
    await tel.start()
    await wait_until(lambda: tel.summary()["window"]["samples"] >= 3, what="3 samples")
    await tel.stop()
    assert len(tel.warnings) == 1 and "has no Triton (nv_*) or DCGM (DCGM_FI_*) metrics" in tel.warnings[0]
    assert tel.status()["gpu"]["status"] == "off"


async def test_gpu_source_choices_without_gpu(emulator) -> None:
    try:
        uuids = NvmlSampler().open()
    except NvmlUnavailable:
        uuids = []
    if uuids:
        pytest.skip("this host has a GPU: the no-GPU paths cannot be checked here")

    # server: the CPU server has no GPU metrics -> one warning naming the flag to set.
    tel = Telemetry(metrics_url=emulator.server.metrics_url, stats_source=None, interval=0.05, gpu_source="server")
    await tel.start()
    await tel.stop()
    assert len(tel.warnings) == 1 and "--allow-gpu-metrics true" in tel.warnings[0]
    assert tel.summary()["gpu"]["source"] is None

    # nvml asked for explicitly on a host without GPU (or without nvidia-ml-py): one warning, unavailable.
    tel = Telemetry(metrics_url=None, stats_source=None, interval=0.05, gpu_source="nvml")
    await tel.start()
    await tel.stop()
    assert len(tel.warnings) == 1 and tel.warnings[0].startswith("telemetry: --gpu-source nvml:")
    assert tel.status()["gpu"]["status"] == "unavailable"
    assert {name: src["status"] for name, src in tel.status().items()} == {
        "metrics": "off", "stats": "off", "gpu": "unavailable"}

    # auto with nothing to read: quiet, the reason kept in sources.
    tel = Telemetry(metrics_url=None, stats_source=None, interval=0.05)
    await tel.start()
    await tel.stop()
    assert tel.warnings == [] and "no metrics endpoint" in tel.status()["gpu"]["error"]
