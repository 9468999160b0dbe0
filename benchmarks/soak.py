"""Hours of load: does `cvload run` stay flat? The client's memory and CPU over a long run at the highest rate.

Starts the embedded emulator with the ``instant`` profile (answers at once: the client is the bottleneck, so a
closed loop runs at the highest rate this machine sustains), runs ``cvload run`` against it as its own process
for ``--requests`` requests, and samples that process every ``--interval`` seconds: requests done (lines of
records.jsonl), resident memory (RSS) and CPU time. Printed per sample and at the end: RSS, the slope of RSS over
requests (least squares over the samples after the first tenth of the run, MB per 100,000 requests), and CPU per
request. Target: growth under 50 MB per 100,000 requests.

    .venv/bin/python -m benchmarks.soak                        # 200,000 requests, a sample a minute
    .venv/bin/python -m benchmarks.soak --requests 30000 --interval 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

TARGET_MB_PER_100K = 50.0


class LineCounter:
    """Counts the lines of a growing file, reading only what was added since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._offset = 0

    def __call__(self) -> int:
        if self.path.exists():
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                while block := fh.read(1 << 20):
                    self.count += block.count(b"\n")
                    self._offset += len(block)
        return self.count


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y in points) / sxx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000, help="requests in the run (default 200,000)")
    parser.add_argument("--num-tasks", type=int, default=8, help="closed-loop workers (default 8)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--out", default=None, help="results folder of the run (default: a temporary one)")
    args = parser.parse_args(argv)

    from cvload.emulator import EmulatedModel, build_repository, get_profile
    from cvload.triton.launcher import TritonServer

    work = Path(tempfile.mkdtemp(prefix="cvload-soak-"))
    out = Path(args.out) if args.out else work / "results"
    repo = build_repository(work / "emulator", [EmulatedModel(profile=get_profile("instant"))])
    with TritonServer(repo, workdir=work / "server", die_with_parent=True,
                      extra_args=["--exit-timeout-secs=0"]) as server:
        address = server.grpc_url if args.protocol == "grpc" else server.http_url
        cmd = [sys.executable, "-m", "cvload", "run", "--quiet", "--server", address, "--protocol", args.protocol,
               "--num-tasks", str(args.num_tasks), "--requests", str(args.requests), "--out", str(out),
               "--metrics-url", "none", "--gpu-source", "none", "--json"]
        started = time.monotonic()
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
        proc = psutil.Process(child.pid)
        done = LineCounter(out / "records.jsonl")
        samples: list[dict[str, float]] = []
        last = (started, 0, 0.0)
        print(f"soak: {args.requests} requests, {args.num_tasks} workers, {args.protocol}, instant profile; "
              f"a sample every {args.interval:g} s")
        print(f"{'t_s':>7} {'requests':>9} {'req/s':>7} {'rss_MB':>8} {'cpu_ms/req':>10}")
        while child.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=args.interval)
            if child.poll() is not None:
                break
            try:
                rss = proc.memory_info().rss / 1e6
                cpu = sum(proc.cpu_times()[:2])
            except psutil.NoSuchProcess:
                break
            now, count = time.monotonic(), done()
            dt, dn = now - last[0], count - last[1]
            per_request = (cpu - last[2]) / dn * 1e3 if dn else float("nan")
            samples.append({"t_s": now - started, "requests": count, "rss_mb": rss, "cpu_s": cpu,
                            "cpu_ms_per_request": per_request})
            print(f"{now - started:7.0f} {count:9d} {dn / dt:7.0f} {rss:8.1f} {per_request:10.3f}", flush=True)
            last = (now, count, cpu)
        stdout, stderr = child.communicate()
        wall = time.monotonic() - started
    if child.returncode != 0:
        print(f"cvload run exited {child.returncode} (results kept in {out}): {stderr.decode()[-2000:]}",
              file=sys.stderr)
        return 1
    total = done()
    steady = [(s["requests"], s["rss_mb"]) for s in samples if s["requests"] >= args.requests / 10]
    growth = slope(steady)
    per_100k = None if growth is None else growth * 100_000
    cpu_rates = [s["cpu_ms_per_request"] for s in samples[1:] if s["cpu_ms_per_request"] == s["cpu_ms_per_request"]]
    report = {
        "requests": total, "wall_s": round(wall, 1), "requests_per_s": round(total / wall, 1),
        "rss_mb_first": samples[0]["rss_mb"] if samples else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "rss_growth_mb_per_100k_requests": None if per_100k is None else round(per_100k, 1),
        "cpu_ms_per_request": {"first": round(cpu_rates[0], 3), "last": round(cpu_rates[-1], 3)} if cpu_rates else None,
        "target_mb_per_100k": TARGET_MB_PER_100K,
        "within_target": None if per_100k is None else per_100k < TARGET_MB_PER_100K,
        "summary_status": json.loads(stdout or b"{}").get("status") if stdout.strip().startswith(b"{") else None,
    }
    print(json.dumps(report, indent=2))
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
