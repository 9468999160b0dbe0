"""Barge-in load (--barge-in): the policy, the abandoning of a stream, and what real emulated servers do when
their client goes away (honoured, or ignored with the profile's ignore_cancel)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from cvload.errors import EXIT_USAGE, UsageError
from cvload.load.barge_in import BargeIn, Plan, check, watch
from cvload.results.records import RequestRecord
from cvload.targets.base import Chunk
from tests.runs import load, run_cli


# ---- the policy -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "kind", "share", "low", "high"), [
    ("30%@1.5s", "after", 0.3, 1.5, 0.0),
    ("50%@first_chunk", "first_chunk", 0.5, 0.0, 0.0),
    ("20% @ uniform(0.5s, 3s)", "uniform", 0.2, 0.5, 3.0),
    ("0.3@audio(2s)", "audio", 0.3, 2.0, 0.0),
    ("100%@500ms", "after", 1.0, 0.5, 0.0),
])
def test_parse(text: str, kind: str, share: float, low: float, high: float) -> None:
    parsed = BargeIn.parse(text)
    assert (parsed.kind, parsed.share, parsed.low, parsed.high) == (kind, pytest.approx(share), low, high)


@pytest.mark.parametrize(("text", "words"), [
    ("150%@1s", "outside 0-100%"),
    ("-5%@1s", "outside 0-100%"),
    ("abc%@1s", "not a number"),
    ("30%@later", "unknown WHEN"),
    ("30%@gauss(1s,2s)", "unknown WHEN"),
    ("30%@uniform(3s,1s)", "LOW <= HIGH"),
    ("30%", "not SHARE@WHEN"),
])
def test_bad_specs_name_the_problem(text: str, words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        BargeIn.parse(text)


def test_offline_mode_is_refused() -> None:
    with pytest.raises(UsageError, match="offline request answers in one piece"):
        check("30%@1s", mode="offline", seed=0)


def test_plan_abandons_its_share_evenly_and_repeatably() -> None:
    policy = BargeIn.parse("30%@uniform(0.5s,3s)", seed=3)
    plans = [policy.plan(i) for i in range(1000)]
    chosen = [i for i, p in enumerate(plans) if p is not None]
    assert abs(len(chosen) - 300) <= 2
    assert all(abs(sum(p is not None for p in plans[k:k + 100]) - 30) <= 2 for k in range(0, 1000, 100))
    assert plans == [BargeIn.parse("30%@uniform(0.5s,3s)", seed=3).plan(i) for i in range(1000)]
    assert all(0.5 <= p.after_first_s <= 3.0 for p in plans if p is not None)
    assert BargeIn.parse("0%@1s").plan(0) is None
    assert all(BargeIn.parse("100%@1s").plan(i) == Plan(after_first_s=1.0) for i in range(10))


# ---- abandoning a stream (an in-process target yielding timed chunks) -----------------------------------------
GAP = 0.2  # between chunks: 100 ms either side of the moment between the second and third (25 ms once failed)


class Timed:
    """Chunks of 0.5 s of audio every ``gap`` seconds; remembers whether its stream was closed early."""

    def __init__(self, chunks: int = 5, gap: float = GAP) -> None:
        self.chunks, self.gap = chunks, gap
        self.closed_after: int | None = None

    async def stream(self) -> AsyncIterator[Chunk]:
        sent = 0
        try:
            for _ in range(self.chunks):
                await asyncio.sleep(self.gap)
                sent += 1
                yield Chunk(time.monotonic(), np.zeros(12000, np.float32))
        finally:
            if sent < self.chunks:
                self.closed_after = sent


async def _consume(target: Timed, plan: Plan) -> tuple[RequestRecord, int]:
    record = RequestRecord(index=0, request_id="r", item_id="i", worker=0, server="s", text="t",
                           sent=time.monotonic())
    got = 0
    async for _chunk in watch(target.stream(), plan, record):
        got += 1
    return record, got


@pytest.mark.parametrize(("plan", "chunks"), [
    (Plan(after_first_s=0.0), 1),  # right after the first chunk
    (Plan(after_first_s=1.5 * GAP), 2),  # between the second and third chunk: the pending read is cancelled
    (Plan(after_audio_s=1.5), 3),  # three chunks of 0.5 s
    (Plan(after_first_s=10.0), 5),  # the request ends first: not abandoned
])
@pytest.mark.timing
def test_watch_abandons_at_its_moment(plan: Plan, chunks: int) -> None:
    target = Timed()
    record, got = asyncio.run(_consume(target, plan))
    assert got == chunks
    if chunks == 5:
        assert record.abandon_offset is None and target.closed_after is None
    else:
        assert record.abandon_offset is not None and target.closed_after == chunks  # the target's finally ran
        if plan.after_first_s:  # abandoned between chunks, at its time (not at the next chunk's)
            assert GAP + plan.after_first_s <= record.abandon_offset < GAP * 3


# ---- against the emulated servers -----------------------------------------------------------------------------
def _barge_run(tmp_path: Path, name: str, *args: str) -> tuple[dict, list[dict], list[dict]]:
    out = tmp_path / name
    code = run_cli("--emulator", "--profile", "demo", "--num-tasks", "4", "--requests", "12", "--ramp", "0",
                   "--barge-in", "50%@first_chunk", "--out", str(out), *args)
    assert code == 0
    summary, records = load(out)
    rows = [json.loads(line) for line in (out / "barge_in.jsonl").read_text().splitlines()]
    return summary, records, rows


def _totals_add_up(summary: dict, records: list[dict]) -> None:
    counts = summary["requests"]
    assert counts["ok"] + counts["failed"] + counts["cancelled"] + counts["barged_in"] == len(records) == 12
    assert counts["barged_in"] == sum(r["error_kind"] == "barged_in" for r in records) > 0
    assert counts["failed"] == 0  # cancelling one request (its own stream, its own connection) hurt no other
    assert summary["metrics"]["first_chunk_latency_ms"]["count"] == 12  # abandoned ones were heard
    assert summary["metrics"]["total_latency_ms"]["count"] == counts["ok"]  # ... but never completed


@pytest.mark.parametrize("args", [("--protocol", "grpc", "--barge-in-baseline"), ("--api", "openai"),
                                  ("--api", "cosyvoice", "--protocol", "http")],
                         ids=["triton-grpc-paired", "openai", "runtime-fastapi"])
def test_emulator_honours_cancellation(tmp_path: Path, args: tuple[str, ...]) -> None:
    if "cosyvoice" in args:  # the runtime answers a sentence a chunk: requests of three sentences
        inputs = tmp_path / "three.jsonl"
        inputs.write_text(json.dumps({"id": "a", "target_text": "The first sentence is here. The second one "
                                      "follows it. A third one ends the text."}) + "\n")
        args = (*args, "--inputs", str(inputs), "--spk-cache")
    summary, records, rows = _barge_run(tmp_path, "honoured", *args, "--slo", "barge_in.release_ms.p95<2s")
    _totals_add_up(summary, records)
    section = summary["barge_in"]
    assert section["release_source"] == "server" and section["abandoned"] == len(rows) == 6
    assert all(row["server_noticed_ms"] is not None for row in rows)  # the server saw every cancellation
    # abandoned right after the first chunk, the server made no more than the chunk it was making then
    assert all(row["server_audio_after_abandon_s"] <= 2.0 for row in rows)
    assert summary["slo"][0]["verdict"] == "pass"
    if "--barge-in-baseline" in args:  # the same load without barge-in ran first, into OUT/baseline
        out = tmp_path / "honoured"
        base = json.loads((out / "baseline" / "summary.json").read_text())
        assert base["requests"]["barged_in"] == 0 and base["requests"]["ok"] == 12
        assert section["baseline"]["first_chunk_latency_ms"] == base["metrics"]["first_chunk_latency_ms"]
        assert section["survivors"]["first_chunk_p95_vs_baseline"] > 0
        from cvload.report.build import write_report

        html, _ = write_report([out], str(tmp_path / "report.html"))
        text = html.read_text()
        assert "Barge-in release time" in text and "Barge-in: first chunk of the others" in text


def test_sweep_levels_judge_their_barge_in(tmp_path: Path) -> None:
    from cvload.cli import main

    out = tmp_path / "sweep"
    code = main(["sweep", "--quiet", "--emulator", "--profile", "demo", "--num-tasks", "3", "--duration", "2s",
                 "--barge-in", "50%@first_chunk", "--slo", "barge_in.release_ms.p95<5s", "--out", str(out)])
    assert code == 0
    level = json.loads((out / "sweep.json").read_text())["levels"][0]
    assert level["summary"]["barge_in"]["abandoned"] > 0
    assert level["slo"][0]["verdict"] == "pass" and level["slo"][0]["measured"] is not None


# The server notices each disconnect by polling while it goes on generating: beside busy xdist workers (loop lag
# 200 ms) an abandoned request's rest could end before the poll saw the closed connection.
@pytest.mark.timing
def test_ignore_cancel_generates_to_the_end(tmp_path: Path) -> None:
    summary, records, rows = _barge_run(tmp_path, "ignored", "--protocol", "http",
                                        "--profile-set", "ignore_cancel=true")
    _totals_add_up(summary, records)
    section = summary["barge_in"]
    assert section["release_source"] == "server"
    assert all(row["server_noticed_ms"] is not None for row in rows)  # noticed, and went on all the same
    assert section["server_audio_after_abandon_s"] > 6 * 2.0  # the rest of each request was made for nobody
    assert section["release_ms"]["p50"] > section["client_release_ms"]["p50"]


@pytest.mark.parametrize(("args", "words"), [
    (("--barge-in", "150%@1s"), "outside 0-100%"),
    (("--barge-in", "30%@whenever"), "unknown WHEN"),
    (("--barge-in", "30%@1s", "--mode", "offline"), "offline"),
    (("--barge-in-baseline",), "add --barge-in"),
])
def test_bad_barge_in_exits_2(args: tuple[str, ...], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--emulator", "--requests", "1", *args) == EXIT_USAGE
    assert words in capsys.readouterr().err


def test_scenario_barge_in_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('emulator = true\nrequests = 1\nbarge_in = "30%@sometime"\n')
    assert run_cli(str(scenario)) == EXIT_USAGE
    assert "unknown WHEN 'sometime'" in capsys.readouterr().err


# ---- doctor ---------------------------------------------------------------------------------------------------
def test_doctor_cancellation_check(tmp_path: Path) -> None:
    """The pipeline emulator's front stops calling token2wav once cancelled; a front with ignore_cancel (beside
    it in the same repository) fails the check, which names the fix."""
    from cvload.emulator import build_pipeline_repository, get_profile
    from cvload.triton.launcher import TritonServer
    from server_bootstrap import cancel_check
    from tests.conftest import FAST_EXIT

    build_pipeline_repository(tmp_path, get_profile("demo", {"ignore_cancel": True}), name="ignoring",
                              prompt_models=False)
    repo = build_pipeline_repository(tmp_path, get_profile("demo"), prompt_models=False)
    with TritonServer(repo, workdir=tmp_path / "server", extra_args=FAST_EXIT) as server:
        http = f"http://127.0.0.1:{server.http_port}"
        stops = cancel_check.check_cancellation(http, server.grpc_url, "cosyvoice2")
        ignores = cancel_check.check_cancellation(http, server.grpc_url, "ignoring")
    assert stops.status == "ok", stops
    assert ignores.status == "FAIL" and "is_cancelled()" in ignores.fix, ignores


def test_live_window_counts_abandoned_requests_apart() -> None:
    """The dashboard's feed: abandoned requests are neither errors nor failures, and their calls' close times
    make its barge-in line."""
    from cvload.measure.live_window import LiveStats
    from cvload.results.records import ERR_BARGED_IN

    live = LiveStats()
    for i in range(4):
        abandoned = i % 2 == 1
        live.add(RequestRecord(index=i, request_id=f"r{i}", item_id="i", worker=0, server="s", text="t", sent=1.0,
                               run_start=0.0, chunk_offsets=[0.2], chunk_samples=[24000],
                               end_offset=0.202 if abandoned else 1.0, abandon_offset=0.2 if abandoned else None,
                               error_kind=ERR_BARGED_IN if abandoned else None))
    snap = live.snapshot()
    assert snap.counts["barged_in"] == 2 and snap.counts["failed"] == 0 and not snap.latest_errors
    assert snap.barge_in is not None and snap.barge_in["abandoned"] == 2
    assert snap.barge_in["close_p95_ms"] == pytest.approx(2.0)
