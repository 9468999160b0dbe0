"""Outages against a real (private) emulated Triton server: a server killed or stopped mid-run, restarted on the
same ports; what each request that was sent becomes, and how the run goes on or stops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from cvload.config import RunConfig
from cvload.emulator import EmulatedModel, get_profile
from cvload.session import Session

FIXED = [EmulatedModel(profile=get_profile("fixed"))]  # 0.2 s to the first chunk, then one every 0.1 s


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def check_totals(session: Session, out: Path) -> list[dict]:
    """Every request sent has exactly one record, on disk too, and ok + failed == sent."""
    assert session.engine is not None and session.summary is not None
    sent = session.engine.state.sent
    records = lines(out)
    assert sorted(r["index"] for r in records) == list(range(sent))
    requests = session.summary["requests"]
    assert requests["ok"] + requests["failed"] + requests["cancelled"] + requests["warmup"] == sent
    return records


async def run_until(session: Session, condition, action) -> None:
    """Run the session; once ``condition(engine)`` holds, call ``action()`` (in a thread: it may block)."""
    engine = await session.prepare()
    run = asyncio.ensure_future(session.execute())
    while not condition(engine) and not run.done():
        await asyncio.sleep(0.01)
    await asyncio.get_running_loop().run_in_executor(None, action)
    await run
    await session.finish()
    await session.close()


@pytest.mark.parametrize(("protocol", "sig"), [("grpc", signal.SIGTERM), ("grpc", signal.SIGKILL),
                                               ("http", signal.SIGKILL)])
async def test_a_dying_server_is_a_connection_failure_with_partial_timings(start_emulator, tmp_path, protocol,
                                                                          sig):
    """A stopping Triton answers requests for the model it unloads with "has no available versions" and breaks
    the streams of those in flight when killed: each is the server going away (``connection``), never
    ``server_error``."""
    emu = start_emulator(FIXED)
    out = tmp_path / "r"
    config = RunConfig(server=[emu.grpc if protocol == "grpc" else emu.http], protocol=protocol, num_tasks=8,
                       requests=300, out=str(out), metrics_url="none", gpu_source="none")
    session = Session(config)
    await run_until(session, lambda e: e.state.done >= 10, lambda: os.kill(emu.server.process.pid, sig))
    records = check_totals(session, out)
    kinds = Counter(r["error_kind"] for r in records)
    assert set(kinds) == {None, "connection"}, kinds
    assert session.summary["status"] == "aborted" and session.exit_code() == 1
    if sig == signal.SIGTERM:
        return  # a stopping server lets the requests it holds finish
    # Requests in flight when it died: failed once, with the chunks they got before.
    partial = [r for r in records if r["error_kind"] and r["chunk_offsets"]]
    assert partial, "some request was mid-stream when the server died"
    for r in partial:
        assert r["end_offset"] >= r["chunk_offsets"][-1] > 0
        assert len(r["chunk_samples"]) == len(r["chunk_offsets"])
