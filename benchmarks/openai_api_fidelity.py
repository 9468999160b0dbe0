"""Fidelity of ``--api openai``: cvload's first-chunk latency beside a bare aiohttp client, same server, same run.

One OpenAI-style emulator (``cvload.emulator.openai_server``, its own process) with the ``fixed`` profile: the
first pcm chunk leaves exactly 200 ms after the request reached the server. For each number of streams two
clients run alternately, ``--rounds`` times:

- ``cvload``: a whole ``cvload run --api openai`` (``Session`` -> ``Engine`` -> ``OpenAISpeech``, records
  written, audio checked), ``--requests`` requests per round;
- ``reference``: a bare closed loop of ``aiohttp`` POSTs that stamps the first non-empty read of the body,
  its streams started over ``RAMP_S`` as cvload ramps its workers.

Printed per level: first-chunk overhead over the profile's 200 ms (p50/p99) of both clients and the differences
(cvload - reference). Targets: p50 within 0.5 ms and p99 within 2 ms of the reference.

    .venv/bin/python -m benchmarks.openai_api_fidelity --levels 1 16 --rounds 3 --requests 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from cvload.emulator.openai_server import ROUTES, OpenAIServer
from cvload.emulator.profiles import get_profile
from cvload.load.session import Session
from cvload.results.writer import read_records
from cvload.settings.config import RunConfig
from cvload.settings.inputs import load_items

FIRST_S = 0.200
RAMP_S = 0.3


class _Quiet:
    def preparing(self, config: object) -> None: ...

    def attach(self, session: object) -> None: ...

    def detach(self, session: object) -> None: ...

    def final(self, session: object, summary: object) -> None: ...


async def reference(url: str, streams: int, requests: int, texts: list[str]) -> list[float]:
    """First-read latencies (s) of a bare closed loop: POST, stamp the first body bytes, drain the rest."""
    out: list[float] = []
    counter = iter(range(requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker(k: int) -> None:
            await asyncio.sleep(k * RAMP_S / streams)  # staggered starts, as cvload's ramp: no burst at t=0
            for i in counter:
                body = json.dumps({"model": "cosyvoice2", "input": texts[i % len(texts)], "response_format": "pcm"})
                sent = time.monotonic()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    first = None
                    while await resp.content.readany():
                        if first is None:
                            first = time.monotonic() - sent
                out.append(first if first is not None else float("nan"))

        await asyncio.gather(*(worker(k) for k in range(streams)))
    return out


def cvload_run(base: str, streams: int, requests: int, out: Path) -> list[float]:
    config = RunConfig(api="openai", server=[base], num_tasks=streams, requests=requests, out=str(out),
                       gpu_source="none", metrics_url="none")
    session = Session(config)
    asyncio.run(session.run(_Quiet()))
    assert session.result is not None
    return [r.chunk_offsets[0] for r in read_records(out) if r.ok and r.chunk_offsets]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0 - FIRST_S * 1000.0, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=32, help="requests per client and round")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    texts = [item.target_text for item in load_items(None)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cvload-oai-fid-") as tmp, \
            OpenAIServer(get_profile("fixed"), workdir=Path(tmp) / "server", die_with_parent=True) as server:
        url = server.url + ROUTES[0]
        for level in args.levels:
            ours: list[float] = []
            ref: list[float] = []
            for round_ in range(args.rounds):
                ours += cvload_run(server.url, level, args.requests, Path(tmp) / f"run-{level}-{round_}")
                ref += asyncio.run(reference(url, level, args.requests, texts))
            row = {"streams": level, "n_cvload": len(ours), "n_reference": len(ref),
                   "cvload_p50_ms": pct(ours, 50), "cvload_p99_ms": pct(ours, 99),
                   "reference_p50_ms": pct(ref, 50), "reference_p99_ms": pct(ref, 99)}
            row["diff_p50_ms"] = row["cvload_p50_ms"] - row["reference_p50_ms"]
            row["diff_p99_ms"] = row["cvload_p99_ms"] - row["reference_p99_ms"]
            rows.append(row)
            print(f"{level:>3} streams  overhead over {FIRST_S * 1000:.0f} ms (ms): cvload p50 "
                  f"{row['cvload_p50_ms']:.2f} p99 {row['cvload_p99_ms']:.2f} | reference p50 "
                  f"{row['reference_p50_ms']:.2f} p99 {row['reference_p99_ms']:.2f} | diff p50 "
                  f"{row['diff_p50_ms']:+.2f} (target 0.5) p99 {row['diff_p99_ms']:+.2f} (target 2)", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
