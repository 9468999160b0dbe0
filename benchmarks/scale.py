"""Scaling curve of ``--processes``: one load process against several, at growing stream counts (issue 15).

The embedded emulator's ``fixed`` profile sends the first chunk exactly 200 ms after a request reaches the model,
so every millisecond above 200 is delay: the client's (its event loop and CPU), the server's (on a small host the
server competes with the client for the same cores) and the network's. The server's trace (its own arrival and
send times on the host's monotonic clock) splits off the *receive path*: from the model sending the first chunk
to the client stamping it, the part a saturated client loop inflates, whatever the server's own lateness. At each level the two clients run
alternately against the same server (``--rounds`` times each): a normal ``cvload run`` session in one process, and
the same session with ``--processes`` (default auto). Printed per run: first-chunk overhead over 200 ms (p50/p99),
receive path p50/p99, client CPU seconds per 100 requests (every load process and the coordinator), achieved
concurrency, the worst event-loop lag of any load process, and the cores the server and other work on the host
used meanwhile (``foreign``: on a shared host, read the figures of a disturbed run with care).

    .venv/bin/python -m benchmarks.scale --levels 64 256 1024           # ~4 min on a 16-core host
    .venv/bin/python -m benchmarks.scale --levels 64 256 --processes 2  # a small host, where auto gives 1

Where one emulated server falls behind at 1024 streams (first-chunk p50 far above 200 ms for both clients),
``--servers 4`` spreads the streams round-robin over four; the receive path stays the client's share either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TRUTH_MS = 200.0  # the fixed profile's first chunk


def receive_path_ms(out: Path, traces: list[Path]) -> list[float]:
    """Per measured request: client stamp of the first chunk minus the model's send of it (server trace)."""
    from benchmarks.grpc_target_overhead import read_trace
    from cvload.results.writer import read_records

    trace: dict[str, dict] = {}
    for path in traces:
        if path.exists():
            trace.update(read_trace(path))
    out_ms = []
    for r in read_records(out):
        entry = trace.get(r.request_id)
        if r.ok and not r.warmup and r.chunk_offsets and entry and entry.get("sends"):
            out_ms.append((r.sent + r.chunk_offsets[0] - entry["arrival"] - entry["sends"][0]) * 1000.0)
    return out_ms


async def one_run(servers: list[str], out: Path, streams: int, processes: int | str, duration: float,
                  warmup: float, traces: list[Path], server_pgids: list[int]) -> dict[str, Any]:
    import numpy as np

    from benchmarks.grpc_target_overhead import _busy_s, _group_cpu_s
    from cvload.load.session import Session
    from cvload.settings.config import RunConfig

    config = RunConfig(server=servers, num_tasks=streams, duration=duration, warmup=f"{warmup}s", out=str(out),
                       metrics_url="none", gpu_source="none", processes=processes).validate()
    session = Session(config)
    try:
        await session.prepare()
        t0, busy0 = time.monotonic(), _busy_s()
        server0 = sum(_group_cpu_s(g) for g in server_pgids)
        await session.execute()
        wall = time.monotonic() - t0
        busy, server_s = _busy_s() - busy0, sum(_group_cpu_s(g) for g in server_pgids) - server0
        summary = await session.finish()
    finally:
        await session.close()
    await asyncio.sleep(0.5)  # the server's trace lines of the last requests
    recv = receive_path_ms(out, traces)
    first = summary["metrics"]["first_chunk_latency_ms"]
    client = summary["client"]
    done = summary["requests"]["total"] + summary["requests"]["warmup"] + summary["requests"]["cancelled"]
    cpu_s = (client["cpu_cores"] or 0.0) * wall
    recv_p = np.percentile(recv, [50, 99]) if recv else [None, None]
    return {
        "streams": streams, "processes": client.get("load_processes", 1), "asked": processes,
        "requests": summary["requests"]["total"], "errors": summary["requests"]["failed"],
        "over_p50_ms": first["p50"] - TRUTH_MS if first["p50"] is not None else None,
        "over_p99_ms": first["p99"] - TRUTH_MS if first["p99"] is not None else None,
        "recv_p50_ms": None if recv_p[0] is None else float(recv_p[0]),
        "recv_p99_ms": None if recv_p[1] is None else float(recv_p[1]),
        "cpu_s_per_100": 100.0 * cpu_s / done if done else None,
        "server_cores": server_s / wall, "foreign_cores": (busy - server_s - cpu_s) / wall,
        "achieved_mean": summary["concurrency"]["achieved_mean"],
        "loop_lag_p99_ms": client["loop_lag_ms"]["p99"],
    }


def show(row: dict[str, Any]) -> str:
    def f(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    label = f"{row['processes']} process" + ("es" if row["processes"] != 1 else "") + \
        (" (auto)" if row["asked"] == "auto" else "")
    return (f"  {row['streams']:5d} streams, {label:17s}: first chunk over 200 ms p50 {f(row['over_p50_ms'], '6.2f')}"
            f" p99 {f(row['over_p99_ms'], '7.2f')} ms; receive path p50 {f(row['recv_p50_ms'], '.2f')} p99 "
            f"{f(row['recv_p99_ms'], '.2f')} ms; CPU {f(row['cpu_s_per_100'], '.3f')} s/100 req; achieved "
            f"{f(row['achieved_mean'], '.1f')}; loop lag p99 {f(row['loop_lag_p99_ms'], '.1f')} ms; "
            f"{row['requests']} requests, {row['errors']} failed; server {row['server_cores']:.2f} cores, "
            f"foreign {row['foreign_cores']:.2f}")


async def bench(servers: list[str], traces: list[Path], pgids: list[int], work: Path,
                args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    runs = 0
    for streams in args.levels:
        for round_ in range(args.rounds):
            order = [1, args.processes] if round_ % 2 == 0 else [args.processes, 1]
            for processes in order:
                runs += 1
                row = await one_run(servers, work / f"run{runs}", streams, processes, args.duration, args.warmup,
                                    traces, pgids)
                rows.append(row)
                print(show(row), flush=True)
    print("per level, the several-process runs against one process (means over rounds):")
    for streams in args.levels:
        def mean(key: str, multi: bool, streams: int = streams) -> float | None:
            got = [r[key] for r in rows if r["streams"] == streams and (r["asked"] != 1) == multi
                   and r[key] is not None]
            return sum(got) / len(got) if got else None

        one, many = mean("over_p99_ms", False), mean("over_p99_ms", True)
        cpu1, cpun = mean("cpu_s_per_100", False), mean("cpu_s_per_100", True)
        if None in (one, many, cpu1, cpun):
            continue
        print(f"  {streams:5d} streams: first chunk p99 over 200 ms {one:.1f} -> {many:.1f} ms "
              f"({'better' if many < one else 'not better'}), receive path p99 {mean('recv_p99_ms', False) or 0:.1f}"
              f" -> {mean('recv_p99_ms', True) or 0:.1f} ms, CPU per 100 requests {cpu1:.3f} -> {cpun:.3f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[64, 256], help="concurrent streams")
    parser.add_argument("--processes", default="auto", help="the several-process side: N or auto (default)")
    parser.add_argument("--servers", type=int, default=1, help="emulated Triton servers, round-robin (default 1)")
    parser.add_argument("--instances", type=int, default=4,
                        help="model instances (Python stub processes) per server (default 4)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run after warmup (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds excluded at the start (default 3)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each client per level (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.processes != "auto":
        args.processes = int(args.processes)
    from contextlib import ExitStack

    from cvload.emulator import EmulatedModel, build_repository, get_profile
    from cvload.triton.launcher import TritonServer

    print(f"cvload scale benchmark: {os.cpu_count()} CPUs, levels {args.levels}, {args.servers} server(s) of "
          f"{args.instances} instance(s), "
          f"{args.duration:g} s + {args.warmup:g} s warmup a run", flush=True)
    with tempfile.TemporaryDirectory(prefix="cvload-scale-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        servers, traces, pgids = [], [], []
        for k in range(args.servers):
            repo = build_repository(root / f"s{k}", [EmulatedModel("cosyvoice2", get_profile("fixed"), "streaming",
                                                                   instances=args.instances)])
            server = stack.enter_context(TritonServer(repo, workdir=root / f"s{k}" / "server", die_with_parent=True))
            assert server.process is not None
            servers.append(server.grpc_url)
            traces.append(root / f"s{k}" / "cosyvoice2.trace.jsonl")
            pgids.append(server.process.pid)
        rows = asyncio.run(bench(servers, traces, pgids, root, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
