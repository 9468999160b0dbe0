"""What does ``--triton-trace`` cost? The same barge-in run with and without Triton's request trace, alternately,
on one embedded pipeline server (the real repository's BLS front -> tensorrt_llm / token2wav, ``--profile``),
started as a traced deployment is (``--trace-config triton,file=F``, tracing off until a run switches it on).

With the trace on, the server stamps every request and every child request and writes a file per finished
request tree; cvload reads them after the run. Printed per round and variant: the survivors' first chunk p50/p95,
the completed requests' total latency p50, requests completed, and the run's wall time from start to summary
(the trace reading included); at the end the medians of each variant and the ratios traced / untraced.

    .venv/bin/python -m benchmarks.triton_trace_overhead --concurrency 8 --seconds 8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(grpc: str, out: Path, concurrency: int, seconds: float, traced: bool) -> dict[str, float]:
    cmd = [sys.executable, "-m", "cvload", "run", "--quiet", "--server", grpc, "--model", "cosyvoice2",
           "--spk-cache", "--num-tasks", str(concurrency), "--duration", f"{seconds}s", "--warmup", "1s",
           "--barge-in", "30%@first_chunk", "--metrics-url", "none", "--gpu-source", "none", "--out", str(out)]
    started = time.monotonic()
    subprocess.run(cmd + (["--triton-trace"] if traced else []), check=True, capture_output=True)
    wall = time.monotonic() - started
    summary = json.loads((out / "summary.json").read_text())
    section = summary["barge_in"]
    survivors = section["survivors"]["first_chunk_latency_ms"]
    assert not traced or section.get("server_release_source") == "triton_trace", section
    return {"first_p50": survivors["p50"], "first_p95": survivors["p95"],
            "total_p50": summary["metrics"]["total_latency_ms"]["p50"], "ok": summary["requests"]["ok"],
            "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default="demo", help="the pipeline's profile (fixed: no delay, CPU-bound)")
    args = parser.parse_args(argv)
    from cvload.emulator import build_pipeline_repository, get_profile
    from cvload.triton.launcher import TritonServer, trace_args

    keys = ("first_p50", "first_p95", "total_p50", "ok", "wall_s")
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="trace-overhead-") as tmp:
        root = Path(tmp)
        repo = build_pipeline_repository(root, get_profile(args.profile), prompt_models=False)
        with TritonServer(repo, workdir=root / "server",
                          extra_args=["--exit-timeout-secs=0", *trace_args(root / "trace.json")]) as server:
            for n in range(args.rounds):
                for traced in ((False, True) if n % 2 == 0 else (True, False)):
                    row = one_run(server.grpc_url, root / f"r{n}-{int(traced)}", args.concurrency, args.seconds,
                                  traced)
                    results[traced].append(row)
                    print(f"round {n + 1} {'traced  ' if traced else 'untraced'} "
                          + "  ".join(f"{k} {row[k]:.1f}" for k in keys), flush=True)
    print(f"\nmedians over {args.rounds} rounds, {args.concurrency} streams, {args.seconds:g} s each, "
          f"profile {args.profile}:")
    for key in keys:
        plain = statistics.median(r[key] for r in results[False])
        traced_value = statistics.median(r[key] for r in results[True])
        print(f"  {key:10} untraced {plain:9.1f}  traced {traced_value:9.1f}  ratio {traced_value / plain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
