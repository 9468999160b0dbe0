"""Does the Prometheus endpoint slow measurement? The same `cvload run` with and without ``--prometheus-port``
while a separate process scrapes the endpoint every second, alternately, on one embedded server.

The server is the emulator's ``fixed`` profile (first chunk leaves the model exactly 200 ms after the request
reached it), so a difference in first-chunk latency between the two variants is the client's, not the server's.
The scraper is its own process (as Prometheus would be), so what is measured is the exporter's cost inside the
measuring process: a few histogram observations per finished request on the loop, and rendering the text in the
endpoint's thread once a second. Printed per round and variant: first-chunk p50/p99, and at the end the medians
of each variant and their differences (with - without). Target: less than 0.5 ms (p50) and 2 ms (p99).

    .venv/bin/python -m benchmarks.prometheus_overhead --concurrency 64 --seconds 8 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SCRAPER = """
import sys, time, urllib.request
url, stop = sys.argv[1], sys.argv[2]
import os
n = 0
while not os.path.exists(stop):
    try:
        urllib.request.urlopen(url, timeout=2).read()
        n += 1
    except OSError:
        pass
    time.sleep(1.0)
print(n)
"""


async def one_run(url: str, out: Path, concurrency: int, seconds: float, port: int | None) -> dict:
    from benchmarks.run_overhead import run_session
    from cvload.settings.config import RunConfig

    config = RunConfig(server=[url], num_tasks=concurrency, duration=seconds, warmup="1s", ramp=0.3,
                       out=str(out), metrics_url="none", gpu_source="none", prometheus_port=port,
                       prometheus_address="127.0.0.1", prometheus_linger=0.0)
    session, summary, _ = await run_session(config)
    if session.exporter is not None:  # run_session has no linger: close the endpoint here
        session.exporter.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from cvload.emulator import EmulatedModel, build_repository, get_profile
    from cvload.triton.launcher import TritonServer, free_ports

    firsts: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory(prefix="cvload-prom-overhead-") as tmp:
        root = Path(tmp)
        repo = build_repository(root, [EmulatedModel("cosyvoice2", get_profile("fixed", {"voice": "tone"}), "streaming")])
        with TritonServer(repo, workdir=root / "server", die_with_parent=True) as server:
            for round_no in range(args.rounds):
                order = ("without", "with") if round_no % 2 == 0 else ("with", "without")
                for variant in order:
                    port = free_ports(1)[0] if variant == "with" else None
                    stop = root / f"stop-{round_no}-{variant}"
                    scraper = None
                    if port is not None:
                        scraper = subprocess.Popen([sys.executable, "-c", SCRAPER,
                                                    f"http://127.0.0.1:{port}/metrics", str(stop)],
                                                   stdout=subprocess.PIPE, text=True)
                    summary = asyncio.run(one_run(server.grpc_url, root / f"r{round_no}-{variant}",
                                                  args.concurrency, args.seconds, port))
                    scrapes = ""
                    if scraper is not None:
                        stop.touch()
                        scrapes = f", {scraper.communicate(timeout=10)[0].strip()} scrapes"
                    first = summary["metrics"]["first_chunk_latency_ms"]
                    firsts[variant].append((first["p50"], first["p99"]))
                    lag = summary["client"]["loop_lag_ms"]["p99"]
                    print(f"round {round_no + 1} {variant:>7}: first chunk p50 {first['p50']:.2f} ms, p99 "
                          f"{first['p99']:.2f} ms, {summary['requests']['total']} requests, loop lag p99 "
                          f"{lag:.2f} ms{scrapes}")
    med = {v: (statistics.median(p for p, _ in xs), statistics.median(q for _, q in xs)) for v, xs in firsts.items()}
    d50, d99 = med["with"][0] - med["without"][0], med["with"][1] - med["without"][1]
    print(f"\nmedian of {args.rounds} rounds at {args.concurrency} streams: without p50 {med['without'][0]:.2f} / "
          f"p99 {med['without'][1]:.2f} ms; with p50 {med['with'][0]:.2f} / p99 {med['with'][1]:.2f} ms")
    print(f"with - without: p50 {d50:+.2f} ms (target < 0.5), p99 {d99:+.2f} ms (target < 2); ratio p99 "
          f"{med['with'][1] / med['without'][1]:.4f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
