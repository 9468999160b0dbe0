"""Does `cvload sweep` find the capacity separate `cvload run`s find? (issue 11, on the emulator's ``l20`` profile)

1. One sweep: ``--num-tasks LEVELS --search bisect --slo OBJECTIVE`` on an embedded ``l20`` server.
2. Separate runs: ``cvload run --num-tasks N`` for every N from 1 to one above the sweep's capacity (each its own
   embedded server, same duration and warm-up), judged on the same objective.
3. The capacity of the runs is the highest N whose run and every run below passed; printed beside the sweep's
   capacity and bracket, with each level's first-chunk p95 from both.

    .venv/bin/python -m benchmarks.sweep_capacity_check --levels 1,2,4,8 --duration 20 --slo "first_chunk.p95<700ms"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

QUIET = ["--quiet", "--metrics-url", "none", "--gpu-source", "none"]


def cvload(*args: str) -> int:
    return subprocess.run([sys.executable, "-m", "cvload", *args], stdout=subprocess.DEVNULL).returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="1,2,4,8")
    p.add_argument("--duration", default="20s", help="per level and per run")
    p.add_argument("--warmup", default=None, help="per level and per run (default: 2 per stream)")
    p.add_argument("--slo", default="first_chunk.p95<700ms")
    p.add_argument("--profile", default="l20")
    args = p.parse_args()
    common = ["--emulator", "--profile", args.profile, "--duration", args.duration, "--slo", args.slo, *QUIET]
    with tempfile.TemporaryDirectory(prefix="cvload-capacity-") as tmp:
        out = Path(tmp) / "sweep"
        warm = ["--warmup", args.warmup] if args.warmup else []
        code = cvload("sweep", *common, *warm, "--num-tasks", args.levels, "--search", "bisect", "--out", str(out))
        result = json.loads((out / "sweep.json").read_text())
        capacity, bracket = result["capacity"]["value"], result["capacity"]["bracket"]
        sweep_p95 = {lv["value"]: lv["summary"]["metrics"]["first_chunk_latency_ms"]["p95"]
                     for lv in result["levels"]}
        print(f"sweep (exit {code}): capacity {capacity}, bracket {bracket}, levels "
              + ", ".join(f"{lv['value']}{'*' if lv['phase'] == 'bisect' else ''}"
                          f"={'pass' if lv['slo_passed'] else 'fail'}" for lv in result["levels"]))
        top = (capacity or 0) + 1
        runs: dict[int, tuple[bool, float | None]] = {}
        for n in range(1, top + 1):
            run_out = Path(tmp) / f"run{n}"
            run_warm = ["--warmup", args.warmup or str(2 * n)]
            rc = cvload("run", *common, *run_warm, "--num-tasks", str(n), "--out", str(run_out))
            summary = json.loads((run_out / "summary.json").read_text())
            runs[n] = (rc == 0, summary["metrics"]["first_chunk_latency_ms"]["p95"])
        runs_capacity = 0
        for n in sorted(runs):
            if not runs[n][0]:
                break
            runs_capacity = n
        print(f"{'N':>3} {'run p95 ms':>11} {'run':>5} {'sweep p95 ms':>13}")
        for n, (passed, p95) in runs.items():
            sp = sweep_p95.get(n)
            print(f"{n:>3} {p95 or 0:>11.0f} {'pass' if passed else 'fail':>5} "
                  f"{'-' if sp is None else f'{sp:.0f}':>13}")
        same = runs_capacity == capacity
        print(f"capacity: sweep {capacity} (bracket {bracket}), separate runs {runs_capacity or None}: "
              f"{'the same' if same else 'DIFFERENT'}")
        sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
