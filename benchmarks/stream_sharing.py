"""What a gRPC stream per request costs against streams shared by several requests (``--requests-per-stream``).

A proxy in front of Triton may limit the request body of a whole HTTP/2 stream (nginx's ``client_max_body_size``,
1 MB by default), which a long-lived ``ModelStreamInfer`` stream carrying requests with prompts passes after a few
requests. A stream per request never does; this measures what it costs. The ``fixed`` emulator profile sends
every first chunk exactly 200 ms after the request reached the model, and the server traces arrival and send
times, so each client's first-chunk latency splits into truth, send path and receive path (see
``benchmarks.grpc_target_overhead``, whose closed loop and report this uses). Clients, alternated round by round
at each concurrency, all cvload's ``TritonGrpcStreaming``:

- ``shared``: ``--requests-per-stream 0`` (streams live as long as the connection, 8 requests in flight each);
- ``per8``: ``--requests-per-stream 8``;
- ``own``: ``--requests-per-stream 1`` (``--stream-per-request``).

Printed per client and level: first-chunk overhead over the 200 ms (p50/p99), send and receive paths, client CPU
per 100 requests; then each client's p50/p99 and CPU against ``shared`` measured in the same run.

    .venv/bin/python -m benchmarks.stream_sharing --concurrency 1 16 64 --rounds 2 --seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from benchmarks import grpc_target_overhead as overhead

CLIENTS = {"shared": 0, "per8": 8, "own": 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    overhead.add_bench_options(parser)
    parser.add_argument("--no-prompt", action="store_true", help="spk-cache requests: target_text only")
    args = parser.parse_args(argv)
    overhead.USE_PROMPT = not args.no_prompt
    from cvload.emulator import EmulatedModel, build_repository, get_profile
    from cvload.triton.launcher import TritonServer

    with tempfile.TemporaryDirectory(prefix="cvload-streams-") as tmp:
        root = Path(tmp)
        repo = build_repository(root, [EmulatedModel("cosyvoice2", get_profile("fixed"), "streaming")])
        with TritonServer(repo, workdir=root / "server") as server:
            assert server.process is not None
            clients = {name: overhead.target_client(server.grpc_url, n) for name, n in CLIENTS.items()}
            rows = asyncio.run(overhead.bench(server.grpc_url, server.process.pid, root / "cosyvoice2.trace.jsonl",
                                              args.concurrency, args.rounds, args.seconds, args.max_foreign, clients))
    print("against shared streams, same run (ms of first-chunk overhead; CPU s per 100 requests):")
    for level in args.concurrency:
        base = rows.get(("shared", level))
        for name in CLIENTS:
            row = rows.get((name, level))
            if base is None or row is None or name == "shared":
                continue
            print(f"  {level:5d} streams  {name:6s}  p50 {row['over_p50_ms'] - base['over_p50_ms']:+.2f}  "
                  f"p99 {row['over_p99_ms'] - base['over_p99_ms']:+.2f}  "
                  f"cpu x{row['cpu_s_per_100'] / base['cpu_s_per_100']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
