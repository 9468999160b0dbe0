"""The run's own timing error: its loop's lag beside a bare loop's on the same host (cvload.measure.loop_health)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from cvload.measure.loop_health import HOST_BUSY, LoopHealth, client_text, warnings_for

BUSY = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end: pass"


def test_a_lag_the_bare_loop_shares_blames_the_host_not_the_load() -> None:
    lag = {"p50": 0.3, "p99": 7.7, "max": 24.0}
    alone = warnings_for(lag, 0.07, {"p50": 0.1, "p99": 0.4, "max": 2.0}, server_here=True)
    assert len(alone) == 1 and "lower the load per process" in alone[0]  # cvload's own: its load is to blame
    shared = warnings_for(lag, 0.07, {"p50": 0.2, "p99": 6.1, "max": 19.0}, server_here=True)
    assert len(shared) == 1 and "a bare event loop beside it lagged 6.1 ms" in shared[0]
    assert HOST_BUSY in shared[0] and "the server shares this host's CPUs" in shared[0]
    assert "lower the load" not in shared[0]
    assert "other processes use this host's CPUs" in warnings_for(lag, 0.07, {"p99": 6.1}, server_here=False)[0]
    assert HOST_BUSY in client_text({"loop_lag_ms": lag, "cpu_cores": 0.07, "warnings": shared})


def test_the_bare_loop_runs_beside_the_run_and_reports() -> None:
    """A real bare loop in its own process, with every core of this host kept busy meanwhile: both loops see
    the host's delay, and the summary says who is to blame."""

    async def run() -> dict:
        health = LoopHealth(reference=True)
        health.server_here = True
        health.start()
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2 * (os.cpu_count() or 1))]
        try:
            await asyncio.sleep(1.5)
        finally:
            for process in busy:
                process.kill()
                process.wait()
        health.stop()
        return health.summary()

    started = time.monotonic()
    summary = asyncio.run(run())
    assert time.monotonic() - started < 6
    bare = summary["bare_loop_lag_ms"]
    assert bare["p99"] is not None and summary["loop_lag_ms"]["p99"] is not None
    assert bare["max"] > 0  # the bare loop was probed the whole time
