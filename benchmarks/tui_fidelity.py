"""Does the dashboard change what is measured? The same load headless and under the TUI, side by side.

One embedded Triton server with the emulator's ``fixed`` profile (first chunk exactly 200 ms after arrival) serves
both kinds of run: a ``Session`` alone (what ``cvload run`` does) and the same load under the dashboard
(``RunSource`` + ``DashboardApp``, as ``cvload tui`` runs them), driven headless by Textual's test harness
(``App.run_test``) at a large terminal size and its real refresh rate. Each run is its own process, so neither
inherits the other's state (priority, heap); rounds alternate the order so drift on the machine hits both.
Prints first-chunk p50/p99 of each run and the medians' differences; target: within 1 ms or 2%.

    .venv/bin/python benchmarks/tui_fidelity.py [--streams 32] [--requests 640] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run_overhead import run_session

SIZE = (200, 56)  # a large terminal: the most drawing per frame


# Short sentences (about 2 s of speech, two chunks) and the server's cached speaker: the emulator renders every
# sample it sends, and with the built-in 6.5 s sentences and 3 s prompts it needs 1.5 of the 2 cores at 32
# streams, so its own queueing (first chunk ~330 ms instead of 200) would drown what this compares.
SHORT_TEXTS = ("Good morning to you.", "Please take a seat.", "The train is late.", "We will start soon.",
               "Thank you very much.", "See you next week.", "It looks like rain.", "Turn left here please.")


def _inputs(folder: Path) -> str:
    path = folder / "short.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "target_text": t}) + "\n"
                            for i, t in enumerate(SHORT_TEXTS)), encoding="utf-8")
    return str(path)


def _config(address: str, out: str, streams: int, requests: int, inputs: str | None):  # noqa: ANN202
    from cvload.settings.config import RunConfig

    return RunConfig(server=[address], num_tasks=streams, requests=requests, warmup=streams, out=out, seed=1,
                     inputs=inputs, spk_cache=inputs is not None).validate()


async def _headless(cfg) -> dict:  # noqa: ANN001
    _session, summary, _cpu = await run_session(cfg)
    return {"summary": summary}


async def _under_tui(cfg) -> dict:  # noqa: ANN001
    from cvload.tui.app import DashboardApp
    from cvload.tui.run_source import RunSource

    source = RunSource(cfg, yield_cpu=True)  # as `cvload tui` runs it
    app = DashboardApp(source, close_when_done=True)
    started = time.monotonic()
    async with app.run_test(size=SIZE) as pilot:
        while not source.done:
            await pilot.pause(0.1)
    source.wait()
    if source.error is not None:
        raise source.error
    assert source.summary is not None
    return {"summary": source.summary, "frames": app.frames, "wall": time.monotonic() - started}


def one(kind: str, address: str, out: str, streams: int, requests: int, inputs: str | None) -> int:
    cfg = _config(address, out, streams, requests, inputs)
    result = asyncio.run(_headless(cfg) if kind == "headless" else _under_tui(cfg))
    m = result["summary"]["metrics"]["first_chunk_latency_ms"]
    print(json.dumps({"p50": m["p50"], "p99": m["p99"], "n": m["count"],
                      "concurrency": result["summary"]["concurrency"]["achieved_mean"],
                      "frames": result.get("frames"), "wall": result.get("wall")}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--requests", type=int, default=640, help="per run, the first --streams are warmup")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--builtin-inputs", action="store_true",
                    help="the built-in 6.5 s sentences with 3 s prompts (saturates the emulator on 2 cores)")
    ap.add_argument("--one", choices=("headless", "tui"), help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args.one, args.server, args.out, args.streams, args.requests, args.inputs)

    from cvload.emulator import EmulatedModel, build_repository, get_profile
    from cvload.triton.launcher import TritonServer

    root = Path(tempfile.mkdtemp(prefix="cvload-tui-fidelity-"))
    repo = build_repository(root / "repo", [EmulatedModel(name="cosyvoice2", profile=get_profile("fixed"),
                                                          mode="streaming")])
    inputs = [] if args.builtin_inputs else ["--inputs", _inputs(root)]
    rows: dict[str, list[tuple[float, float]]] = {"headless": [], "tui": []}
    with TritonServer(repo, workdir=root / "server") as server:
        for rnd in range(args.rounds):
            for kind in ("headless", "tui") if rnd % 2 == 0 else ("tui", "headless"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", kind, "--server", server.grpc_url, "--out",
                     str(root / f"{kind}-{rnd}"), "--streams", str(args.streams), "--requests", str(args.requests),
                     *inputs],
                    capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stderr, file=sys.stderr)
                    return 1
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                rows[kind].append((r["p50"], r["p99"]))
                extra = (f"  ({r['frames']} frames in {r['wall']:.1f} s = {r['frames'] / r['wall']:.1f} Hz)"
                         if r.get("frames") else "")
                print(f"round {rnd + 1} {kind:<8}  first chunk p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  "
                      f"n={r['n']}  concurrency {r['concurrency']:.1f}{extra}", flush=True)
    print(f"\nmedian of {args.rounds} rounds, {args.streams} streams, fixed profile (server: 200 ms first chunk)")
    ok = True
    for i, label in enumerate(("p50", "p99")):
        h = statistics.median(r[i] for r in rows["headless"])
        t = statistics.median(r[i] for r in rows["tui"])
        diff = t - h
        within = abs(diff) <= 1.0 or abs(diff) <= 0.02 * h
        ok &= within
        print(f"  first chunk {label}: headless {h:7.2f} ms   tui {t:7.2f} ms   diff {diff:+6.2f} ms "
              f"({diff / h:+.2%})  {'within' if within else 'OUTSIDE'} 1 ms or 2%")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
