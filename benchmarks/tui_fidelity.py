"""Does the dashboard change what is measured? The same load headless and under the TUI, side by side.

One embedded Triton server with the emulator's ``fixed`` profile (first chunk exactly 200 ms after arrival) serves
both runs: ``Session`` alone (what ``cvload run`` does) and the same ``Session`` inside the dashboard, driven
headless by Textual's test harness (``App.run_test``) at a real terminal size and refresh rate. Rounds alternate
the two so drift on the machine hits both. Prints first-chunk p50/p99 of each run and the differences; target:
within 1 ms or 2% of each other.

    .venv/bin/python benchmarks/tui_fidelity.py [--streams 32] [--requests 800] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cvload.config import RunConfig
from cvload.session import Session
from cvload.tui.app import DashboardApp
from cvload.tui.sources import RunSource
from server_bootstrap.emulator import EmulatedModel, build_repository, get_profile
from server_bootstrap.launcher import TritonServer

SIZE = (200, 56)  # a large terminal: the most drawing per frame


def config(address: str, out: Path, streams: int, requests: int) -> RunConfig:
    return RunConfig(server=[address], num_tasks=streams, requests=requests, warmup=streams, out=str(out),
                     seed=1).validate()


async def headless(cfg: RunConfig) -> dict:
    session = Session(cfg)
    try:
        await session.prepare()
        await session.execute()
        return await session.finish()
    finally:
        await session.close()


async def under_tui(cfg: RunConfig) -> tuple[dict, int, float]:
    source = RunSource(cfg)
    app = DashboardApp(source, close_when_done=True)
    started = time.monotonic()
    async with app.run_test(size=SIZE) as pilot:
        while not source.done:
            await pilot.pause(0.1)
    wall = time.monotonic() - started
    if source.error is not None:
        raise source.error
    assert source.summary is not None
    return source.summary, app.frames, wall


def first_chunk(summary: dict) -> tuple[float, float, int]:
    m = summary["metrics"]["first_chunk_latency_ms"]
    return m["p50"], m["p99"], m["count"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--requests", type=int, default=800, help="per run, the first --streams are warmup")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cvload-tui-fidelity-"))
    repo = build_repository(root / "repo", [EmulatedModel(name="cosyvoice2", profile=get_profile("fixed"),
                                                          mode="streaming")])
    rows: dict[str, list[tuple[float, float]]] = {"headless": [], "tui": []}
    with TritonServer(repo, workdir=root / "server") as server:
        for rnd in range(args.rounds):
            for kind in ("headless", "tui") if rnd % 2 == 0 else ("tui", "headless"):
                cfg = config(server.grpc_url, root / f"{kind}-{rnd}", args.streams, args.requests)
                if kind == "headless":
                    summary = asyncio.run(headless(cfg))
                    extra = ""
                else:
                    summary, frames, wall = asyncio.run(under_tui(cfg))
                    extra = f"  ({frames} frames in {wall:.1f} s = {frames / wall:.1f} Hz)"
                p50, p99, n = first_chunk(summary)
                conc = summary["concurrency"]["achieved_mean"]
                rows[kind].append((p50, p99))
                print(f"round {rnd + 1} {kind:<8}  first chunk p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  n={n}  "
                      f"concurrency {conc:.1f}{extra}", flush=True)
    h50 = statistics.median(r[0] for r in rows["headless"])
    h99 = statistics.median(r[1] for r in rows["headless"])
    t50 = statistics.median(r[0] for r in rows["tui"])
    t99 = statistics.median(r[1] for r in rows["tui"])
    print(f"\nmedian of {args.rounds} rounds, {args.streams} streams, fixed profile (server: 200 ms first chunk)")
    ok = True
    for label, h, t in (("p50", h50, t50), ("p99", h99, t99)):
        diff = t - h
        within = abs(diff) <= 1.0 or abs(diff) <= 0.02 * h
        ok &= within
        print(f"  first chunk {label}: headless {h:7.2f} ms   tui {t:7.2f} ms   diff {diff:+6.2f} ms "
              f"({diff / h:+.2%})  {'within' if within else 'OUTSIDE'} 1 ms or 2%")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
