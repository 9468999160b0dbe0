"""Outages against a real (private) emulated Triton server: a server killed or stopped mid-run, restarted on the
same ports; what each request that was sent becomes, and how the run goes on or stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from runs import records_of

from cvload.cli import main
from cvload.emulator import EmulatedModel, get_profile
from cvload.load.engine import PROBE_MAX_S, Engine
from cvload.load.session import Session
from cvload.results.records import ERR_CONNECTION
from cvload.settings.config import RunConfig
from cvload.settings.inputs import Item
from cvload.targets.base import Chunk, SynthesisRequest, Target, TargetError, TargetInfo

FIXED = [EmulatedModel(profile=get_profile("fixed"))]  # 0.2 s to the first chunk, then one every 0.1 s
# Streams that stay open about a second after their first chunk, so that a kill lands mid-stream: with FIXED's, a
# request that had chunks when the kill was decided once finished before it landed on a busy host.
SLOW_CHUNKS = [EmulatedModel(profile=get_profile("fixed", {"fixed_interval_s": 0.5}))]


def check_totals(session: Session, out: Path) -> list[dict]:
    """Every request sent has exactly one record, on disk too, and ok + failed == sent."""
    assert session.engine is not None and session.summary is not None
    sent = session.engine.state.sent
    records = records_of(out)
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


class MidStream:
    """A ``run_until`` condition: ``done`` requests finished and one in flight has had its first chunk and no
    more, so that a kill lands mid-stream. (A fixed-profile request lasts about 0.35 s and has its first chunk at 0.2 s: now and then
    none of the 8 in flight has had one yet, and a kill then left no partial request; see SLOW_CHUNKS too.)"""

    def __init__(self, done: int) -> None:
        self.done = done
        self.inflight: dict[int, list] = {}
        self.hooked = False

    def __call__(self, engine) -> bool:
        if not self.hooked:  # first called before anything is sent
            engine.events.sent.add_listener(lambda record, chunks: self.inflight.__setitem__(record.index, chunks))
            engine.events.finished.add_listener(lambda record: self.inflight.pop(record.index, None))
            self.hooked = True
        # Exactly one chunk: the stream has just begun and its next chunk is an interval away. (Any chunk was not
        # enough: the server answers its streams in bursts, and requests with chunks all ended in the burst just
        # before a kill that a busy host landed 100 ms after it was decided.)
        return engine.state.done >= self.done and any(len(chunks) == 1 for chunks in self.inflight.values())


@pytest.mark.parametrize(("protocol", "sig"), [("grpc", signal.SIGTERM), ("grpc", signal.SIGKILL),
                                               ("http", signal.SIGKILL)])
async def test_a_dying_server_is_a_connection_failure_with_partial_timings(start_emulator, tmp_path, protocol,
                                                                          sig):
    """A stopping Triton answers requests for the model it unloads with "has no available versions" and breaks
    the streams of those in flight when killed: each is the server going away (``connection``), never
    ``server_error``."""
    emu = start_emulator(FIXED if sig == signal.SIGTERM else SLOW_CHUNKS)  # a stopping server lets them finish
    out = tmp_path / "r"
    config = RunConfig(server=[emu.grpc if protocol == "grpc" else emu.http], protocol=protocol, num_tasks=8,
                       requests=300, out=str(out), metrics_url="none", gpu_source="none")
    session = Session(config)
    await run_until(session, MidStream(4), lambda: os.kill(emu.server.process.pid, sig))
    records = check_totals(session, out)
    kinds = Counter(r["error_kind"] for r in records)
    assert set(kinds) == {None, "connection"}, kinds
    assert session.summary["status"] == "aborted" and session.exit_code() == 1
    # Why it stopped: the requests in a row that failed, said as they failed. A gRPC stream the dead server
    # dropped is UNAVAILABLE (the server went away); an HTTP stream whose answer had begun is a reset, so a killed
    # HTTP server gives a mix of resets (mid-stream) and refused connects (what was sent after). On a loaded host
    # the row may hold no reset (a success finished after them, or no answer had begun): then it is all connects.
    reason = session.summary["abort_reason"]
    connects = re.fullmatch(r"server unreachable: \d+ requests in a row failed to connect \(last: .+\)", reason)
    if protocol == "grpc":
        assert connects, reason
    else:
        mix = re.fullmatch(r"server unreachable: (\d+) requests in a row failed, (\d+) to connect, (\d+) reset "
                           r"after an answer \(last: .+\)", reason)
        assert mix or connects, reason
        if mix:
            in_row, connect, reset = map(int, mix.groups())
            assert connect + reset == in_row and connect >= 1 and reset >= 1, reason
    if sig == signal.SIGTERM:
        return  # a stopping server lets the requests it holds finish
    # Requests in flight when it died: failed once, with the chunks they got before.
    partial = [r for r in records if r["error_kind"] and r["chunk_offsets"]]
    assert partial, "some request was mid-stream when the server died"
    for r in partial:
        assert r["end_offset"] >= r["chunk_offsets"][-1] > 0
        assert len(r["chunk_samples"]) == len(r["chunk_offsets"])


@pytest.mark.timing
@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_continue_rides_out_a_restart_on_the_same_ports(start_emulator, tmp_path, protocol):
    """--on-server-loss continue: the server is killed and restarted on its ports; requests due meanwhile fail
    fast (a closed loop waits for each reconnect probe, an open loop keeps its schedule), measuring resumes,
    the outage is in the summary, and nothing sent is lost."""
    from cvload.triton.launcher import free_ports

    http, grpc, metrics = free_ports(3)
    ports = {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}
    emu = start_emulator(FIXED, **ports)
    out = tmp_path / "r"
    shape = {"num_tasks": 4} if protocol == "grpc" else {"rate": 8.0}
    config = RunConfig(server=[emu.grpc if protocol == "grpc" else emu.http], protocol=protocol, duration=6.0,
                       on_server_loss="continue", out=str(out), metrics_url="none", gpu_source="none", **shape)
    session = Session(config)
    restarted: list[float] = []

    def kill_and_restart() -> None:
        import time

        os.kill(emu.server.process.pid, signal.SIGKILL)
        emu.server.stop()
        start_emulator(FIXED, **ports)
        restarted.append(time.monotonic())

    await run_until(session, lambda e: e.state.done >= 8, kill_and_restart)
    records = check_totals(session, out)
    summary = session.summary
    assert summary["status"] == "completed" and session.exit_code() == 0, summary["abort_reason"]
    [outage] = summary["outages"]
    started = session.engine.state.started
    assert 0 < outage["start_s"] < outage["end_s"] <= restarted[0] - started + PROBE_MAX_S + 0.5
    assert outage["probes"] >= 1
    # Nobody pressed Ctrl-C: the requests in flight when the server died are failures counted in the totals
    # (none ``cancelled`` and left out), and those failing fast meanwhile were in flight for no time at all.
    assert summary["requests"]["total"] == len(records) and summary["requests"]["cancelled"] == 0
    if protocol == "grpc":
        assert summary["concurrency"]["achieved_max"] <= 4 and summary["concurrency"]["achieved_mean"] <= 4
    failed = [r for r in records if r["error_kind"] is not None]
    assert failed and {r["error_kind"] for r in failed} == {"connection"}
    # Failures belong to the outage: the requests in flight when it died and those due while it was down.
    assert all(r["sent_s"] <= outage["end_s"] and r["sent_s"] + r["end_offset"] >= outage["start_s"] - 0.001
               for r in failed)
    after = [r for r in records if r["sent_s"] > outage["end_s"]]
    assert len(after) >= 5 and all(r["error_kind"] is None for r in after)
    if protocol == "grpc":  # no retry storm: each worker sends one fail-fast request per probe
        fast = [r for r in failed if r["error"].startswith("not sent")]
        assert len(fast) <= 4 * (outage["probes"] + 1)


async def test_continue_with_a_server_that_never_comes_back_is_a_runtime_failure(start_emulator, tmp_path):
    emu = start_emulator(FIXED)
    out = tmp_path / "r"
    config = RunConfig(server=[emu.grpc], num_tasks=2, duration=2.5, on_server_loss="continue", out=str(out),
                       metrics_url="none", gpu_source="none")
    session = Session(config)
    await run_until(session, lambda e: e.state.done >= 2, lambda: os.kill(emu.server.process.pid, signal.SIGKILL))
    check_totals(session, out)
    assert session.summary["status"] == "aborted" and session.exit_code() == 1
    assert "did not come back" in session.summary["abort_reason"]
    [outage] = session.summary["outages"]
    assert outage["end_s"] is None and outage["probes"] >= 3


def test_outage_band_marks_the_lost_seconds_under_the_series():
    from cvload.tui.charts import outage_band

    outages = [{"start_s": 3.5, "end_s": 5.2}, {"start_s": 9.0, "end_s": None}]
    band = outage_band(list(range(12)), outages, 14, now=11)
    assert band is not None and band.plain == "  " + "   ▀▀▀   ▀▀▀"
    assert outage_band(list(range(3)), outages, 10, now=2) is None


# ---- a results folder that cannot be written --------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    """A small RAM disk at ``path`` (a full disk in miniature); skips where mounting is not permitted."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs ({done.stderr.strip() or done.returncode}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize(("options", "says"), [(("ro",), "Read-only file system"), ((), "KiB free")])
def test_a_results_folder_that_cannot_be_written_fails_before_any_load(tmp_path, capsys, options, says):
    from cvload.triton.launcher import free_port

    with tmpfs(tmp_path / "disk", "64k", *options) as disk:
        out = disk / "r"
        # Nothing listens on that port: the run must fail on its folder before it tries the server.
        assert main(["run", "--quiet", "--server", f"127.0.0.1:{free_port()}", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and says in err and "cannot reach" not in err


async def test_a_disk_filling_mid_run_stops_sending_and_keeps_whole_records(emulator, tmp_path):
    from cvload.errors import ServerError

    with tmpfs(tmp_path / "disk", "2m") as disk:
        out = disk / "r"
        config = RunConfig(server=[emulator.grpc], model="cosyvoice2_instant", num_tasks=2, requests=100_000,
                           out=str(out), metrics_url="none", gpu_source="none")
        session = Session(config)

        def fill() -> None:
            with open(disk / "filler", "wb") as fh, contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()

        engine = await session.prepare()
        run = asyncio.ensure_future(session.execute())
        while session.writer.written < 20 and not run.done():
            await asyncio.sleep(0.01)
        fill()
        await run
        try:
            summary = await session.finish()
        except ServerError as exc:  # no room for the summary either: the user is told why, exit 1
            assert exc.exit_code == 1 and "records.jsonl" in str(exc) and "stopped sending" in str(exc)
        else:
            assert summary["status"] == "aborted" and "cannot write" in summary["abort_reason"]
            assert session.exit_code() == 1
        await session.close()
        assert engine.state.aborted and "No space left" in engine.state.aborted
        text = (out / "records.jsonl").read_text()
        assert text.endswith("\n")
        records = [json.loads(line) for line in text.splitlines()]  # every line whole
        assert len(records) == session.writer.written >= 20
        # It stopped sending: only what was in flight or queued when the write failed came after.
        assert engine.state.sent - len(records) <= 2 + session.writer.unwritten


# ---- a slow or stuck server -------------------------------------------------------------------------------------
class FaultyLink:
    """A TCP relay in front of a real server (a fault injector, not a protocol fake): ``pass`` relays, ``stall``
    holds every byte (connections stay open, nothing answers), ``trickle`` lets the server's bytes through one a
    second. With no upstream it accepts connections and never answers."""

    def __init__(self, upstream: str | None) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> FaultyLink:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        up_writer = None
        try:
            if self.upstream is None:
                await asyncio.Event().wait()  # accept, never answer
            host, port = self.upstream.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            await asyncio.gather(self._relay(reader, up_writer, down=False), self._relay(up_reader, writer, down=True))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for end in (writer, up_writer):
                if end is not None:
                    end.transport.abort()  # both sides see the connection end at once
            self._tasks.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, down: bool) -> None:
        while data := await reader.read(65536):
            while self.mode == "stall":
                await asyncio.sleep(0.05)
            while self.mode == "trickle" and down and data:
                writer.write(data[:1])
                data = data[1:]
                await writer.drain()
                await asyncio.sleep(1.0)
            if data:
                writer.write(data)
                await writer.drain()
        writer.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_a_server_that_accepts_and_never_answers_fails_open_in_bounded_time(tmp_path, protocol, monkeypatch):
    from cvload.errors import ServerError
    from cvload.targets import checks

    assert checks.OPEN_TIMEOUT_S < 5.0  # what a user waits at most
    monkeypatch.setattr(checks, "OPEN_TIMEOUT_S", 1.0)  # the same bound, sooner
    async with FaultyLink(None) as link:
        session = Session(RunConfig(server=[link.address], protocol=protocol, out=str(tmp_path / "r"),
                                    metrics_url="none", gpu_source="none"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ServerError, match="cannot reach"):
            await session.prepare()
        assert loop.time() - started < 3.0  # the open timeout, not the 60 s request timeout
        await session.close()


async def test_a_server_stalling_mid_run_drains_within_5_s_on_ctrl_c(emulator, tmp_path):
    """HTTP through a link that stops relaying: in-flight requests hang (request timeout 60 s); the user's stop
    still ends the run within the 5 s drain, each hung request recorded once as cancelled."""
    async with FaultyLink(emulator.http) as link:
        out = tmp_path / "r"
        session = Session(RunConfig(server=[link.address], protocol="http", num_tasks=3, requests=10_000,
                                    out=str(out), metrics_url="none", gpu_source="none"))
        engine = await session.prepare()
        run = asyncio.ensure_future(session.execute())
        while engine.state.done < 4 and not run.done():
            await asyncio.sleep(0.01)
        link.mode = "stall"
        hung = engine.state.sent
        await asyncio.sleep(0.5)
        assert engine.state.sent - hung <= 3  # each worker waits on its hung request: nothing more goes out
        loop = asyncio.get_running_loop()
        started = loop.time()
        engine.interrupt()
        await run
        assert loop.time() - started < 5.0 + 1.0
        link.mode = "pass"  # the server's statistics after the run
        await session.finish()
        await session.close()
        records = check_totals(session, out)
        assert sum(r["error_kind"] == "cancelled" for r in records) == 3
        assert session.summary["status"] == "interrupted" and session.exit_code() == 0


@pytest.mark.timing
async def test_a_server_answering_a_byte_a_second_is_bounded_by_the_request_timeout(emulator, tmp_path):
    async with FaultyLink(emulator.grpc) as link:
        out = tmp_path / "r"
        session = Session(RunConfig(server=[link.address], model="cosyvoice2_instant", num_tasks=2, duration=3.0,
                                    request_timeout=1.0, out=str(out), metrics_url="none", gpu_source="none"))
        engine = await session.prepare()
        run = asyncio.ensure_future(session.execute())
        while engine.state.done < 4 and not run.done():
            await asyncio.sleep(0.01)
        link.mode = "trickle"
        await run
        link.mode = "pass"
        await session.finish()
        await session.close()
        records = check_totals(session, out)
        slow = [r for r in records if r["error_kind"] == "timeout"]
        assert slow and all(0.9 < r["end_offset"] < 1.6 for r in slow)
        assert session.summary["status"] == "completed"


async def test_requests_on_a_connection_dropped_to_reconnect_are_connection_failures(start_emulator, tmp_path):
    """A stopping server (SIGTERM) refuses new requests while it lets those it holds finish: the first refusal
    starts the reconnect probe, whose failed open drops the connection, and the requests still on it fail with
    it. They are the outage's victims (``connection``, in the totals), never ``cancelled`` as if by the user."""
    emu = start_emulator(FIXED, extra_args=[])  # Triton's own exit timeout: it holds what is in flight
    out = tmp_path / "r"
    config = RunConfig(server=[emu.grpc], num_tasks=4, duration=3.0, ramp=0.0, on_server_loss="continue",
                       out=str(out), metrics_url="none", gpu_source="none")
    session = Session(config)
    await run_until(session, lambda e: e.state.done >= 8, lambda: os.kill(emu.server.process.pid, signal.SIGTERM))
    records = check_totals(session, out)
    kinds = Counter(r["error_kind"] for r in records)
    assert kinds["connection"] >= 1 and set(kinds) <= {None, "connection"}, kinds
    assert session.summary["requests"]["total"] == len(records)
    assert session.summary["concurrency"]["achieved_max"] <= 4


# ---- why a run stopped: the wording, on an in-process target ---------------------------------------------------
class Breaking(Target):
    """In-process: the first ``answered`` requests get a chunk, then their stream is reset (the server, or a proxy
    in front of it, had answered); every later one fails to connect."""

    protocol, mode = "grpc", "streaming"

    def __init__(self, answered: int) -> None:
        super().__init__("127.0.0.1:1")
        self.answered, self.calls = answered, 0

    async def _open(self) -> TargetInfo:
        return TargetInfo(address=self.address, protocol=self.protocol, mode=self.mode, model=self.model)

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        if self.calls > self.answered:
            raise TargetError(ERR_CONNECTION, "connection refused")
        yield Chunk(time.monotonic(), np.zeros(2400, np.float32))
        raise TargetError(ERR_CONNECTION, "stream reset", reset=True)

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(("answered", "reason"), [
    (3, "server unreachable: 5 requests in a row failed, 2 to connect, 3 reset after an answer "
        "(last: connection refused)"),
    (0, "server unreachable: 5 requests in a row failed to connect (last: connection refused)"),
    (99, "every stream was reset by the server or a proxy between cvload and it: 5 requests in a row failed after "
         "they were answered (last: stream reset); the server's log says why, or a proxy's limits on a stream "
         "(body size, duration, idle time)"),
])
async def test_the_abort_reason_counts_resets_and_refused_connects(answered: int, reason: str) -> None:
    """One stream, so the failures come in order: a run of five (the limit at one stream) stops the run, said as
    its requests failed: reset after an answer, refused, or a mix with both counts."""
    config = RunConfig(server=["127.0.0.1:1"], num_tasks=1, requests=50, warmup="0", metrics_url="none",
                       gpu_source="none")
    engine = Engine(config, [Breaking(answered)], [Item("i", "Hello there.")])
    await engine.run()
    assert engine.state.aborted == reason
    assert engine.state.sent == 5
