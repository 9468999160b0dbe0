"""cvload.subprocesses against real processes: ending a process group, waiting with a deadline, finding a recorded
process again."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

import pytest

from cvload import subprocesses

# A leader that ignores SIGTERM (as a hung server does) with a child in its group that would outlive it.
STUBBORN = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n")
# A leader that exits on SIGTERM and leaves its child (which ignores SIGTERM) behind in the group.
ORPHANING = ("import subprocess, sys, time\n"
             "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
             "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(600)'])\n"
             "print(child.pid, flush=True)\n"
             "time.sleep(600)\n")


def start(script: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    child = int(proc.stdout.readline())  # type: ignore[union-attr]
    subprocesses.wait_until(lambda: len(subprocesses.group_members(proc.pid)) == 2, 10, what="the child to start")
    return proc, child


def test_a_leader_that_ignores_sigterm_is_killed_with_its_group() -> None:
    proc, child = start(STUBBORN)
    t0 = time.monotonic()
    ended = subprocesses.end(proc, grace=0.5)
    assert ended == subprocesses.Ended(was_running=True, forced=True)
    assert 0.5 <= time.monotonic() - t0 < 5
    assert proc.returncode == -signal.SIGKILL
    assert not subprocesses.group_members(proc.pid), "end() returns once nothing of the group runs"
    assert not subprocesses.alive(child, None)


def test_sigterm_to_the_leader_only_then_the_rest_of_the_group_is_killed() -> None:
    """The launcher's way with tritonserver: the leader ends on SIGTERM, leftovers of its group get SIGKILL."""
    proc, child = start(ORPHANING)
    ended = subprocesses.end(proc, grace=5, sigterm="leader")
    assert ended == subprocesses.Ended(was_running=True, forced=False)
    assert proc.returncode == -signal.SIGTERM
    assert not subprocesses.alive(child, None) and not subprocesses.group_members(proc.pid)


def test_a_recorded_pid_is_ended_by_number_and_start_time() -> None:
    proc, _child = start(ORPHANING)
    started = subprocesses.start_time(proc.pid)
    assert started is not None and subprocesses.alive(proc.pid, started)
    assert not subprocesses.alive(proc.pid, started + 1), "another start time: a reused pid, not our process"
    assert subprocesses.end(proc.pid, started=started + 1) == subprocesses.Ended(False, False)
    assert subprocesses.alive(proc.pid, started), "a pid that is not ours is left alone"
    assert subprocesses.end(proc.pid, started=started, grace=5, sigterm="leader").was_running
    assert not subprocesses.alive(proc.pid, started) and not subprocesses.group_members(proc.pid)
    proc.wait(timeout=5)  # reaped by end() already (by pid, the exit status is not ours to keep)
    assert subprocesses.end(proc, grace=1) == subprocesses.Ended(False, False), "ending an ended process is harmless"


def test_wait_until_returns_the_value_or_names_what_it_waited_for() -> None:
    calls = []
    assert subprocesses.wait_until(lambda: calls.append(1) or (len(calls) >= 3 and "ready"), 5, what="x") == "ready"
    t0 = time.monotonic()
    with pytest.raises(subprocesses.WaitTimeout, match="timed out after 0.2 s waiting for the moon"):
        subprocesses.wait_until(lambda: False, 0.2, what="the moon")
    assert 0.2 <= time.monotonic() - t0 < 1


def test_shm_prefix_must_not_be_empty() -> None:
    with pytest.raises(ValueError):
        subprocesses.remove_shm("")


async def test_servers_started_while_grpc_calls_are_in_flight_reach_exec(tmp_path) -> None:
    """die_with_parent makes Python fork (it runs code before exec); with gRPC's fork support on, the child
    restarted gRPC's poller, closed its descriptor with the rest and aborted before exec, about one start in
    forty beside calls in flight (cvload turns that support off before grpc is imported)."""
    import asyncio

    import grpc

    from cvload.triton.launcher import free_ports, release_ports

    port = free_ports(1)[0]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")  # nobody there: every call fails fast
    stop = asyncio.Event()

    async def calling() -> None:
        while not stop.is_set():
            with contextlib.suppress(grpc.aio.AioRpcError):
                await channel.unary_unary("/cvload.Test/Call")(b"", timeout=0.01)

    callers = [asyncio.create_task(calling()) for _ in range(4)]
    try:
        codes = []
        for _ in range(200):
            started = subprocesses.spawn(["/bin/true"], tmp_path / "true.log", die_with_parent=True)
            codes.append(started.wait())
            await asyncio.sleep(0)
    finally:
        stop.set()
        await asyncio.gather(*callers)
        await channel.close()
        release_ports([port])
    assert codes == [0] * 200, (sorted(set(codes)), (tmp_path / "true.log").read_text()[-300:])
