"""Where the measuring process's event loop spends its time: every callback's CPU (this thread's) and wall time
over the run's window (``--duration``, from the first worker's first step).

Runs a ``cvload`` command in this process with asyncio's ``Handle._run`` timed: a callback that holds the loop
for a millisecond delays every chunk that arrives meanwhile by up to as much. Thread CPU time is the loop's own
work (what a busy host does not change); wall minus CPU inside a callback is time the thread was off the CPU or
waiting for the interpreter lock (another thread of the process holding it). Printed at exit: callbacks over
0.5/1/2 ms of CPU and of wall, the heaviest kinds by their largest CPU time, and garbage collections' CPU time.

    .venv/bin/python -m benchmarks.loop_callbacks run --emulator --profile fixed --num-tasks 16 --duration 10s
"""

from __future__ import annotations

import asyncio.events
import atexit
import gc
import sys
import time
from collections import defaultdict
from typing import Any

_records: list[tuple[str, float, float]] = []  # (callback kind, thread CPU ms, wall ms)
_collections: list[tuple[int, float]] = []  # (generation, ms) of each garbage collection
_gc_started = [0.0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if not _records:
        return
    if phase == "start":
        _gc_started[0] = time.thread_time()
    else:
        _collections.append((info["generation"], (time.thread_time() - _gc_started[0]) * 1e3))


def _kind(handle: Any) -> str:
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    coro = getattr(task, "get_coro", lambda: None)()
    if coro is not None:
        return f"task {getattr(coro, '__qualname__', type(coro).__name__)}"
    return getattr(callback, "__qualname__", repr(callback))[:80]


def install(window_s: float) -> None:
    """Time callbacks from the first worker's first step for ``window_s`` (the run's window, not its drain)."""
    original = asyncio.events.Handle._run
    thread_time, clock = time.thread_time, time.perf_counter
    until = [float("inf")]

    def timed(self: Any) -> None:
        cpu, wall = thread_time(), clock()
        try:
            original(self)
        finally:
            if wall < until[0]:
                kind = _kind(self)
                if until[0] == float("inf") and kind == "task Engine._worker":
                    until[0] = wall + window_s
                if until[0] != float("inf"):
                    _records.append((kind, (thread_time() - cpu) * 1e3, (clock() - wall) * 1e3))

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]
    gc.callbacks.append(_on_gc)
    atexit.register(report)


def report() -> None:
    if not _records:
        return
    out = sys.stderr
    cpu: list[float] = sorted(r[1] for r in _records)
    wall: list[float] = sorted(r[2] for r in _records)
    stalled: list[float] = sorted(r[2] - r[1] for r in _records)
    print(f"\nloop callbacks: {len(_records)}, CPU total {sum(cpu):.0f} ms", file=out)
    for name, spread in (("CPU", cpu), ("wall", wall), ("wall-CPU", stalled)):
        over = "  ".join(f">{t:g} ms: {sum(v > t for v in spread)}" for t in (0.5, 1, 2, 5))
        print(f"  {name:8} p50 {spread[len(spread) // 2]:.3f}  p99 {spread[int(len(spread) * .99)]:.3f}  "
              f"max {spread[-1]:.2f} ms   {over}", file=out)
    for generation in range(3):
        pauses = sorted(ms for g, ms in _collections if g == generation)
        if pauses:
            print(f"  gc generation {generation}: {len(pauses)} collections, max {pauses[-1]:.2f} ms, "
                  f"over 1 ms: {sum(p > 1 for p in pauses)}", file=out)
    kinds: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for kind, cpu_ms, wall_ms in _records:
        kinds[kind].append((cpu_ms, wall_ms))
    print("  heaviest kinds (count, CPU total/max ms, wall max ms, over 0.5 ms CPU):", file=out)
    for kind, values in sorted(kinds.items(), key=lambda kv: -max(c for c, _ in kv[1]))[:14]:
        print(f"    {len(values):6} {sum(c for c, _ in values):8.1f} {max(c for c, _ in values):7.2f} "
              f"{max(w for _, w in values):7.2f} {sum(c > 0.5 for c, _ in values):5}  {kind}", file=out)


def main() -> None:
    duration = sys.argv[sys.argv.index("--duration") + 1] if "--duration" in sys.argv else "10s"
    install(float(duration.rstrip("s")))
    from cvload.cli import main as cli

    sys.argv = ["cvload", *sys.argv[1:]]
    sys.exit(cli())


if __name__ == "__main__":
    main()
