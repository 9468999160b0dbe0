"""Hours of load: do `cvload run` and `cvload tui` stay flat? The client's memory and CPU over a long run.

Starts the embedded emulator with the ``instant`` profile (answers at once: the client is the bottleneck, so a
closed loop runs at the highest rate this machine sustains) and runs the load against it for ``--requests``
requests, as its own process: ``cvload run`` (``--view run``), or the dashboard as ``cvload tui`` runs it
(``--view tui``: ``RunSource`` and ``DashboardApp`` with its measuring process, drawn by Textual's headless driver at
200x56 on its real 5 Hz timer). Every ``--interval`` seconds it samples each process: requests done (lines of
records.jsonl), resident memory (RSS) and CPU time, and for the dashboard its frames drawn. Printed per sample
and at the end: RSS, the slope of RSS over requests per process (least squares over the samples after the first
tenth of the run, MB per 100,000 requests), CPU per request, and the dashboard's refresh rate in the last
interval. Target: growth under 50 MB per 100,000 requests, the dashboard still at 5 Hz at the end.

    .venv/bin/python -m benchmarks.soak                        # 200,000 requests, a sample a minute
    .venv/bin/python -m benchmarks.soak --requests 30000 --interval 10 --view tui
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
import threading
import time
from pathlib import Path
from typing import Any

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


SIZE = (200, 56)  # the dashboard's terminal: a large one, the most drawing per frame


def dashboard(server: str, protocol: str, num_tasks: int, requests: int, out: str) -> int:
    """``--view tui``'s child: the dashboard over a run, as ``cvload tui`` builds it; prints its frames a second."""
    import asyncio

    from cvload.settings.config import RunConfig
    from cvload.tui.app import DashboardApp
    from cvload.tui.run_source import RunSource

    config = RunConfig(server=[server], protocol=protocol, num_tasks=num_tasks, requests=requests, out=out,
                       metrics_url="none", gpu_source="none").validate()
    source = RunSource(config, yield_cpu=True)
    app = DashboardApp(source, close_when_done=True)

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            while not source.done:
                await pilot.pause(1.0)
                print(json.dumps({"frames": app.frames, "t": time.monotonic()}), flush=True)

    asyncio.run(drive())
    source.wait()
    if source.error is not None:
        print(f"dashboard: {source.error}", file=sys.stderr)
        return 1
    print(json.dumps({"status": (source.summary or {}).get("status")}), flush=True)
    return 0


class Lines:
    """The latest JSON lines a child prints (read on a thread, so sampling never blocks on its pipe)."""

    def __init__(self, stream: Any) -> None:
        self.frames: list[tuple[float, int]] = []  # (monotonic, frames drawn)
        self.text: list[str] = []  # everything else: the dashboard's last line, or the run's --json summary
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            try:
                data = json.loads(line)
                self.frames.append((data["t"], data["frames"]))
            except (ValueError, TypeError, KeyError):
                self.text.append(line)

    def rate(self, since: float) -> float | None:
        """Frames a second since ``since`` (monotonic)."""
        inside = [f for f in self.frames if f[0] >= since]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def status(self) -> str | None:
        """The run's status: from the summary the run printed, or the dashboard's last line."""
        text = "".join(self.text).strip()
        with contextlib.suppress(ValueError):
            return json.loads(text.splitlines()[-1] if text.startswith('{"status"') else text).get("status")
        return None

    def join(self) -> None:
        self._thread.join(timeout=10)


def _processes(child: psutil.Process, view: str) -> dict[str, psutil.Process]:
    """The processes to sample: the run, or the dashboard and its measuring process."""
    if view == "run":
        return {"run": child}
    found = {"dashboard": child}
    with contextlib.suppress(psutil.NoSuchProcess):
        for proc in child.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "cvload.tui.measuring" in " ".join(proc.cmdline()):
                    found["measuring"] = proc
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000, help="requests in the run (default 200,000)")
    parser.add_argument("--num-tasks", type=int, default=8, help="closed-loop workers (default 8)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--view", choices=("run", "tui"), default="run",
                        help="`cvload run`, or the dashboard with its measuring process (default run)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--out", default=None, help="results folder of the run (default: a temporary one)")
    parser.add_argument("--dashboard", metavar="SERVER", help=argparse.SUPPRESS)  # --view tui's child
    args = parser.parse_args(argv)
    if args.dashboard:
        return dashboard(args.dashboard, args.protocol, args.num_tasks, args.requests, args.out)

    from cvload.emulator import EmulatedModel, build_repository, get_profile
    from cvload.triton.launcher import TritonServer

    work = Path(tempfile.mkdtemp(prefix="cvload-soak-"))
    out = Path(args.out) if args.out else work / "results"
    repo = build_repository(work / "emulator", [EmulatedModel(profile=get_profile("instant"))])
    with TritonServer(repo, workdir=work / "server", die_with_parent=True,
                      extra_args=["--exit-timeout-secs=0"]) as server:
        address = server.grpc_url if args.protocol == "grpc" else server.http_url
        if args.view == "run":
            cmd = [sys.executable, "-m", "cvload", "run", "--quiet", "--server", address, "--protocol",
                   args.protocol, "--num-tasks", str(args.num_tasks), "--requests", str(args.requests), "--out",
                   str(out), "--metrics-url", "none", "--gpu-source", "none", "--json"]
        else:
            cmd = [sys.executable, "-m", "benchmarks.soak", "--dashboard", address, "--protocol", args.protocol,
                   "--num-tasks", str(args.num_tasks), "--requests", str(args.requests), "--out", str(out)]
        started = time.monotonic()
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ),
                                 text=True)
        lines = Lines(child.stdout)
        errors: list[str] = []
        err_thread = threading.Thread(target=lambda: errors.extend(child.stderr), daemon=True)  # type: ignore[arg-type]
        err_thread.start()
        done = LineCounter(out / "records.jsonl")
        samples: list[dict[str, Any]] = []
        last_t, last_n, last_cpu = started, 0, 0.0
        print(f"soak: {args.requests} requests, {args.num_tasks} workers, {args.protocol}, instant profile, "
              f"view {args.view}; a sample every {args.interval:g} s")
        names = ("run",) if args.view == "run" else ("dashboard", "measuring")
        print(f"{'t_s':>7} {'requests':>9} {'req/s':>7} " + " ".join(f"{n + '_MB':>12}" for n in names)
              + f" {'cpu_ms/req':>10}" + (f" {'refresh_Hz':>10}" if args.view == "tui" else ""))
        while child.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=args.interval)
            if child.poll() is not None:
                break
            rss, cpu = {}, 0.0
            for name, proc in _processes(psutil.Process(child.pid), args.view).items():
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss[name] = proc.memory_info().rss / 1e6
                    cpu += sum(proc.cpu_times()[:2])
            now, count = time.monotonic(), done()
            dt, dn = now - last_t, count - last_n
            per_request = (cpu - last_cpu) / dn * 1e3 if dn else float("nan")
            hz = lines.rate(last_t)
            samples.append({"t_s": now - started, "requests": count, "rss_mb": rss, "cpu_s": cpu,
                            "cpu_ms_per_request": per_request, "refresh_hz": hz})
            print(f"{now - started:7.0f} {count:9d} {dn / dt:7.0f} "
                  + " ".join(f"{rss.get(n, float('nan')):12.1f}" for n in names) + f" {per_request:10.3f}"
                  + (f" {hz or float('nan'):10.2f}" if args.view == "tui" else ""), flush=True)
            last_t, last_n, last_cpu = now, count, cpu
        child.wait()
        lines.join()
        err_thread.join(timeout=10)
        wall = time.monotonic() - started
    if child.returncode != 0:
        print(f"the {args.view} process exited {child.returncode} (results kept in {out}): "
              f"{''.join(errors)[-2000:]}", file=sys.stderr)
        return 1
    total = done()
    growth = {}
    for name in names:
        steady = [(s["requests"], s["rss_mb"][name]) for s in samples
                  if s["requests"] >= args.requests / 10 and name in s["rss_mb"]]
        per = slope(steady)
        growth[name] = None if per is None else round(per * 100_000, 1)
    cpu_rates = [s["cpu_ms_per_request"] for s in samples[1:] if s["cpu_ms_per_request"] == s["cpu_ms_per_request"]]
    report = {
        "view": args.view, "requests": total, "wall_s": round(wall, 1), "requests_per_s": round(total / wall, 1),
        "rss_mb_first": samples[0]["rss_mb"] if samples else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "rss_growth_mb_per_100k_requests": growth,
        "cpu_ms_per_request": {"first": round(cpu_rates[0], 3), "last": round(cpu_rates[-1], 3)} if cpu_rates else None,
        "target_mb_per_100k": TARGET_MB_PER_100K,
        "within_target": all(g is not None and g < TARGET_MB_PER_100K for g in growth.values()),
    }
    if args.view == "tui":
        hz = [s["refresh_hz"] for s in samples if s["refresh_hz"] is not None]
        report["refresh_hz"] = {"first": round(hz[0], 2), "last": round(hz[-1], 2)} if hz else None
    report["summary_status"] = lines.status()
    print(json.dumps(report, indent=2))
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
