"""What `cvload run` as a whole adds to first-chunk latency and CPU, beside the lean reference client (issue 3).

Same ground truth and harness as ``grpc_target_overhead`` (emulator ``fixed`` profile: first chunk exactly 200 ms
after the request reaches the model; 3 s prompts, unpadded), but the cvload side is the full run a user gets:
``Session`` -> ``Engine`` (closed loop, staggered workers, audio checks, records flushed to records.jsonl) over
the gRPC streaming target, inputs read from a manifest. The lean reference is a bare ``tritonclient.grpc.aio``
loop with staggered starts. Both run alternately on the same server at each concurrency; printed per client:
first chunk minus 200 ms (p50/p99), client CPU seconds per 100 requests, achieved concurrency, and at the end
the ratios cvload / reference.

    .venv/bin/python -m benchmarks.run_overhead --concurrency 1 16 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import soundfile

from benchmarks import grpc_target_overhead as harness
from benchmarks.grpc_target_overhead import Timed, closed_loop, lean_client
from cvload.results.writer import read_records

RAMP_S = 0.3


def write_manifest(folder: Path) -> Path:
    """The benchmark's one item as a user would give it: a manifest line and a 16 kHz prompt WAV."""
    soundfile.write(folder / "prompt.wav", harness.PROMPT, 16000, subtype="FLOAT")
    manifest = folder / "bench.lst"
    manifest.write_text(f"bench|{harness.PROMPT_TEXT}|prompt.wav|{harness.TEXT}\n", encoding="utf-8")
    return manifest


async def run_session(config: Any) -> tuple[Any, dict[str, Any], float]:
    """One `cvload run` without a view: the session (its engine holds the records), the summary, and the client
    CPU seconds spent while the engine ran."""
    from cvload.load.session import Session

    session = Session(config)
    try:
        await session.prepare()
        cpu0 = time.process_time()
        await session.execute()
        cpu = time.process_time() - cpu0
        summary = await session.finish()
    finally:
        await session.close()
    return session, summary, cpu


def timed_records(session: Any) -> list[Timed]:
    """A finished session's records as the reference client's Timed."""
    assert session.out_dir is not None
    return [Timed(r.request_id, r.sent, r.sent + r.chunk_offsets[0] if r.chunk_offsets else None,
                  r.sent + (r.end_offset or 0.0), r.error) for r in read_records(session.out_dir)]


async def run_cvload(url: str, manifest: Path, out: Path, concurrency: int, requests: int) -> tuple[list[Timed], float]:
    """One `cvload run` (no console view, no telemetry scrape): the records as Timed, and the client CPU seconds
    spent while the engine ran. Prints the run's own concurrency figures (steady window, after the ramp)."""
    from cvload.settings.config import RunConfig

    config = RunConfig(server=[url], num_tasks=concurrency, requests=requests, ramp=RAMP_S, inputs=str(manifest),
                       out=str(out), metrics_url="none", gpu_source="none")
    session, summary, cpu = await run_session(config)
    conc = summary["concurrency"]
    print(f"  cvload summary concurrency: requested {conc['requested']:g}, achieved_mean "
          f"{conc['achieved_mean']:.2f}, achieved_max {conc['achieved_max']}")
    return timed_records(session), cpu


async def bench(url: str, server_pgid: int, trace_path: Path, levels: list[int], rounds: int, seconds: float,
                max_foreign: float, work: Path) -> None:
    manifest = write_manifest(work)
    lean_one, lean_start, lean_close = lean_client(url)
    await lean_start()
    runs = 0
    pooled: harness.Pooled = {}
    request_s = 0.35  # one fixed-profile request of this text: chunks at 200 and 300 ms
    try:
        for concurrency in levels:
            requests = max(40, int(seconds * concurrency / request_s))
            for _ in range(rounds):
                for name in ("cvload", "lean"):
                    await closed_loop(min(concurrency, 4), 8, lean_one, 0.0)  # warm the server
                    runs += 1

                    async def run(name=name, concurrency=concurrency, requests=requests,
                                  out=work / f"run{runs}") -> tuple[list[Timed], float]:
                        if name == "cvload":
                            return await run_cvload(url, manifest, out, concurrency, requests)
                        timed, cpu_s, _ = await closed_loop(concurrency, requests, lean_one, ramp_s=RAMP_S)
                        return timed, cpu_s

                    await harness.measure_phase(name, concurrency, run, server_pgid, trace_path, max_foreign, pooled)
    finally:
        await lean_close()
    rows = harness.report_pooled(pooled, trace_path, max_foreign)
    print("cvload against the lean reference (same run, same server):")
    for concurrency in levels:
        c, ref = rows.get(("cvload", concurrency)), rows.get(("lean", concurrency))
        if not c or not ref:
            print(f"  {concurrency:3d} streams: no undisturbed phase for both clients")
            continue
        print(f"  {concurrency:3d} streams: first chunk over truth p50 {c['over_p50_ms']:.2f} ms vs "
              f"{ref['over_p50_ms']:.2f} ms (diff {c['over_p50_ms'] - ref['over_p50_ms']:+.2f} ms), "
              f"p99 {c['over_p99_ms']:.2f} vs {ref['over_p99_ms']:.2f} ms; CPU per 100 requests "
              f"{c['cpu_s_per_100']:.3f} vs {ref['cpu_s_per_100']:.3f} s "
              f"(ratio {c['cpu_s_per_100'] / max(ref['cpu_s_per_100'], 1e-9):.2f}); achieved concurrency "
              f"{c['achieved_mean']:.1f} vs {ref['achieved_mean']:.1f} (max {c['achieved_max']} vs "
              f"{ref['achieved_max']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_bench_options(parser)
    args = parser.parse_args(argv)
    from cvload.emulator import EmulatedModel, build_repository, get_profile
    from cvload.triton.launcher import TritonServer

    with tempfile.TemporaryDirectory(prefix="cvload-run-overhead-") as tmp:
        root = Path(tmp)
        repo = build_repository(root, [EmulatedModel("cosyvoice2", get_profile("fixed"), "streaming")])
        with TritonServer(repo, workdir=root / "server", die_with_parent=True) as server:
            assert server.process is not None
            asyncio.run(bench(server.grpc_url, server.process.pid, root / "cosyvoice2.trace.jsonl",
                              args.concurrency, args.rounds, args.seconds, args.max_foreign, root))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
