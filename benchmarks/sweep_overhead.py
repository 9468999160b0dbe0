"""The sweep's own overhead between levels (issue 11: under 1 s per level), excluding warm-up.

A sweep on the embedded server (``fixed`` profile, closed loop) measures levels back to back. Between two levels
the sweep closes a window, waits for the verdicts that decide whether the next level counts, and changes the
load; the time from one level's window end to the next level's load change is the overhead printed per level
(warm-up and window are the measurement itself and excluded). Also printed: the end of the sweep (last window end
to the sweep's return: the last level's requests finishing, judging, sweep.json).

    .venv/bin/python -m benchmarks.sweep_overhead --levels 1,2,4,8,16 --duration 2
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from cvload.load.sweep import SweepView


class Quiet(SweepView):
    """Shows nothing (the protocol's do-nothing methods): the benchmark times the sweep alone."""


async def measure(levels: str, duration: float, warmup: str, out: Path, profile: str) -> None:
    from cvload.load.sweep import Sweep
    from cvload.settings.config import RunConfig, SweepSettings

    config = RunConfig(emulator=True, profile=profile, duration=duration, warmup=warmup, out=str(out),
                       metrics_url="none", gpu_source="none", sweep=SweepSettings(num_tasks=levels))
    sweep = Sweep(config)
    t0 = time.monotonic()
    code = await sweep.run(Quiet())
    wall = time.monotonic() - t0
    ordered = sorted(sweep.levels, key=lambda lv: lv.number)
    print(f"sweep {levels} on the {profile!r} profile, {duration:g} s windows, warm-up {warmup}: exit {code}, "
          f"{wall:.2f} s in all (server start included)")
    print(f"{'level':>6} {'warm-up s':>10} {'window s':>9} {'overhead before it, s':>22}")
    gaps = []
    for prev, level in zip([None, *ordered], ordered):
        assert level.started is not None and level.ended is not None
        gap = level.applied - prev.ended if prev is not None and prev.ended is not None else None
        if gap is not None:
            gaps.append(gap)
        print(f"{sweep.plan.value(level.value):>6g} {level.started - level.applied:>10.3f} "
              f"{level.ended - level.started:>9.3f} {'-' if gap is None else f'{gap:.4f}':>22}")
    last = ordered[-1].ended
    assert last is not None
    print(f"between levels: max {max(gaps):.4f} s, mean {sum(gaps) / len(gaps):.4f} s (target < 1 s per level)")
    print(f"measured time (warm-up + windows): "
          f"{sum((lv.ended or 0) - lv.applied for lv in ordered):.2f} s of {wall:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="1,2,4,8,16")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per level window")
    p.add_argument("--warmup", default="2", help="warm-up per level (requests or a duration)")
    p.add_argument("--profile", default="fixed")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="cvload-sweep-bench-") as tmp:
        asyncio.run(measure(args.levels, args.duration, args.warmup, Path(tmp) / "s", args.profile))


if __name__ == "__main__":
    main()
