"""How much latency and CPU the gRPC streaming target adds, against the emulator's ground truth.

The ``fixed`` profile sends every first chunk exactly 200 ms after the request reached the model, and the server
writes each request's arrival and send times (host monotonic clock) to its trace file. Two clients run the same
closed loop (N workers, staggered over one request's duration, 3 s prompts unpadded) one after the other at each
concurrency:

- ``target``: cvload's ``TritonGrpcStreaming`` (one shared stream, empty final responses, decoded float32 audio);
- ``lean``: a bare loop over ``tritonclient.grpc.aio`` (one ``stream_infer`` per request, bytes counted only).

Printed per client and concurrency: first-chunk latency minus the 200 ms (p50/p99), the same split into the
send path (request sent -> model got it) and the receive path (model sent the chunk -> client stamped it), client
CPU seconds per 100 requests, and the achieved (time-weighted) concurrency. Each phase also prints the CPU
that processes other than this client and its server used meanwhile (``foreign_cores``): on a shared machine,
phases disturbed by other work are left out of the pooled figures at the end (``--max-foreign``).

    .venv/bin/python -m benchmarks.grpc_target_overhead --concurrency 1 16 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TRUTH_S = 0.200  # fixed profile: first chunk this long after arrival
TEXT = "Hello there world."  # 38 speech tokens: two chunks, at 200 and 300 ms
PROMPT_TEXT = "A three second prompt, sent unpadded."
PROMPT = (0.1 * np.sin(np.arange(48000) * 2 * np.pi * 220 / 16000)).astype(np.float32)
USE_PROMPT = True  # --no-prompt: spk-cache requests (target_text only)


@dataclass
class Timed:
    request_id: str
    sent: float
    first: float | None = None
    end: float | None = None
    error: str | None = None


async def closed_loop(concurrency: int, requests: int, one: Callable[[str], Awaitable[Timed]],
                      ramp_s: float) -> tuple[list[Timed], float, float]:
    """N workers, each sending its next request when the previous ends; starts spread over ``ramp_s``."""
    counter = iter(range(requests))
    done: list[Timed] = []
    tag = f"b{os.getpid()}-{time.monotonic_ns()}"

    async def worker(k: int) -> None:
        await asyncio.sleep(k * ramp_s / concurrency)
        for i in counter:
            done.append(await one(f"{tag}-{i}"))

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done, time.process_time() - cpu0, time.monotonic() - wall0


One = Callable[[str], Awaitable[Timed]]  # one timed request, by id
Hook = Callable[[], Awaitable[None]]
Client = tuple[One, Hook, Hook]  # one request, start, close


async def time_request(request_id: str, send: Callable[[Timed], Awaitable[None]]) -> Timed:
    """Time one request from now to the end of ``send``, which sets ``first`` (and ``error`` for an error the
    server answers with); an exception ends the request with that error."""
    timed = Timed(request_id, time.monotonic())
    try:
        await send(timed)
    except Exception as exc:  # noqa: BLE001
        timed.error = repr(exc)
    timed.end = time.monotonic()
    return timed


def grpc_inputs(grpcclient: Any, prompt: bool) -> list[Any]:
    """The front model's input tensors for the benchmark sentence, with the 3 s prompt or without (spk cache)."""
    tensors = [grpcclient.InferInput("target_text", [1, 1], "BYTES")]
    tensors[0].set_data_from_numpy(np.array([[TEXT.encode()]], dtype=object))
    if prompt:
        tensors += [grpcclient.InferInput("reference_wav", [1, PROMPT.size], "FP32"),
                    grpcclient.InferInput("reference_wav_len", [1, 1], "INT32"),
                    grpcclient.InferInput("reference_text", [1, 1], "BYTES")]
        tensors[1].set_data_from_numpy(PROMPT.reshape(1, -1))
        tensors[2].set_data_from_numpy(np.array([[PROMPT.size]], dtype=np.int32))
        tensors[3].set_data_from_numpy(np.array([[PROMPT_TEXT.encode()]], dtype=object))
    return tensors


def target_client(url: str, requests_per_stream: int | None = None) -> Client:
    from cvload.targets.base import SynthesisRequest
    from cvload.targets.triton_grpc import TritonGrpcStreaming
    from cvload.targets.triton_options import REQUESTS_PER_STREAM, TritonOptions

    options = TritonOptions(REQUESTS_PER_STREAM if requests_per_stream is None else requests_per_stream)
    target = TritonGrpcStreaming(url, "cosyvoice2", timeout=30, options=options)

    async def one(request_id: str) -> Timed:
        request = (SynthesisRequest(request_id, TEXT, PROMPT_TEXT, PROMPT) if USE_PROMPT
                   else SynthesisRequest(request_id, TEXT))

        async def send(timed: Timed) -> None:
            async for chunk in target.synthesize(request):
                if timed.first is None:
                    timed.first = chunk.t

        return await time_request(request_id, send)

    async def start() -> None:
        await target.open()

    return one, start, target.close


def lean_client(url: str) -> Client:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)

    async def one(request_id: str) -> Timed:
        tensors = grpc_inputs(grpcclient, USE_PROMPT)

        async def requests():  # type: ignore[no-untyped-def]
            yield {"model_name": "cosyvoice2", "inputs": tensors, "request_id": request_id}

        async def send(timed: Timed) -> None:
            async for response, error in client.stream_infer(requests()):
                now = time.monotonic()
                if error is not None:
                    timed.error = str(error)
                elif timed.first is None and response.get_response().raw_output_contents:
                    timed.first = now

        return await time_request(request_id, send)

    async def start() -> None:
        await client.is_server_ready()

    return one, start, client.close


TICK = os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    """CPU seconds spent by the whole machine (all cores, not idle or iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def _group_cpu_s(pgid: int) -> float:
    """CPU seconds of every live process in a process group (the server and its Python-backend stubs)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def read_trace(path: Path) -> dict[str, dict]:
    out = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        out[entry["id"]] = entry
    return out


def achieved(timed: list[Timed]) -> tuple[float, int]:
    """Time-weighted mean and max of requests in flight."""
    events = sorted([(t.sent, 1) for t in timed] + [(t.end or t.sent, -1) for t in timed])
    level = peak = 0
    area = 0.0
    for (t0, step), (t1, _) in zip(events, events[1:]):
        level += step
        peak = max(peak, level)
        area += level * (t1 - t0)
    span = events[-1][0] - events[0][0]
    return (area / span if span else 0.0), peak


def report(name: str, concurrency: int, timed: list[Timed], cpu_s: float, trace: dict[str, dict],
           foreign: float | None = None, server: float | None = None,
           concurrency_achieved: tuple[float, int] | None = None) -> dict:
    ok = [t for t in timed if t.error is None and t.first is not None]
    over = np.array([t.first - t.sent - TRUTH_S for t in ok]) * 1000
    send = np.array([trace[t.request_id]["arrival"] - t.sent for t in ok]) * 1000
    recv = np.array([t.first - trace[t.request_id]["arrival"] - trace[t.request_id]["sends"][0] for t in ok]) * 1000
    mean, peak = concurrency_achieved or achieved(timed)
    row = {
        "client": name, "concurrency": concurrency, "requests": len(timed), "errors": len(timed) - len(ok),
        "foreign_cores": None if foreign is None else round(foreign, 2),
        "server_cores": None if server is None else round(server, 2),
        "over_p50_ms": round(float(np.percentile(over, 50)), 2), "over_p99_ms": round(float(np.percentile(over, 99)), 2),
        "send_p50_ms": round(float(np.percentile(send, 50)), 2), "recv_p50_ms": round(float(np.percentile(recv, 50)), 2),
        "recv_p99_ms": round(float(np.percentile(recv, 99)), 2),
        "cpu_s_per_100": round(100 * cpu_s / max(1, len(timed)), 3),
        "achieved_mean": round(mean, 1), "achieved_max": peak,
    }
    print(json.dumps(row), flush=True)
    return row


Pooled = dict[tuple[str, int], list[tuple[list[Timed], float, tuple[float, int]]]]


async def measure_phase(name: str, concurrency: int, run: Callable[[], Awaitable[tuple[list[Timed], float]]],
                        server_pgid: int, trace_path: Path, max_foreign: float, pooled: Pooled) -> None:
    """Run one client's phase, print it, and pool it when other processes stayed under ``max_foreign`` cores."""
    busy0, server0, wall0 = _busy_s(), _group_cpu_s(server_pgid), time.monotonic()
    timed, cpu_s = await run()
    server_s = _group_cpu_s(server_pgid) - server0
    wall = time.monotonic() - wall0
    foreign = (_busy_s() - busy0 - cpu_s - server_s) / wall
    await asyncio.sleep(0.5)  # let the server finish writing its trace
    report(name, concurrency, timed, cpu_s, read_trace(trace_path), foreign, server_s / wall)
    if foreign <= max_foreign:
        pooled.setdefault((name, concurrency), []).append((timed, cpu_s, achieved(timed)))


def report_pooled(pooled: Pooled, trace_path: Path, max_foreign: float) -> dict[tuple[str, int], dict]:
    print(f"pooled over phases with other work under {max_foreign} cores:")
    trace = read_trace(trace_path)
    rows = {}
    for (name, concurrency), phases in sorted(pooled.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        timed = [t for phase, _, _ in phases for t in phase]
        mean = float(np.mean([a[0] for _, _, a in phases]))
        peak = max(a[1] for _, _, a in phases)
        rows[(name, concurrency)] = report(name, concurrency, timed, sum(c for _, c, _ in phases), trace,
                                           concurrency_achieved=(mean, peak))
    return rows


async def bench(url: str, server_pgid: int, trace_path: Path, levels: list[int], rounds: int, seconds: float,
                max_foreign: float, clients: dict[str, Client] | None = None) -> dict[tuple[str, int], dict]:
    """Alternate the clients (default: cvload's target and the lean one; the first also probes) at each level."""
    clients = clients or {"target": target_client(url), "lean": lean_client(url)}
    for _, start, _ in clients.values():
        await start()
    probe, _, _ = next(iter(clients.values()))
    timed = await probe(f"probe-{os.getpid()}")
    request_s = (timed.end or timed.sent) - timed.sent  # how long one request lasts unloaded
    pooled: Pooled = {}
    try:
        for concurrency in levels:
            requests = max(40, int(seconds * concurrency / request_s))
            for _ in range(rounds):
                for name, (one, _, _) in clients.items():
                    await closed_loop(min(concurrency, 4), 8, one, 0.0)  # warm up

                    async def run(one=one, concurrency=concurrency, requests=requests) -> tuple[list[Timed], float]:
                        timed, cpu_s, _ = await closed_loop(concurrency, requests, one, ramp_s=0.3)
                        return timed, cpu_s

                    await measure_phase(name, concurrency, run, server_pgid, trace_path, max_foreign, pooled)
    finally:
        for _, _, close in clients.values():
            await close()
    return report_pooled(pooled, trace_path, max_foreign)


def add_bench_options(parser: argparse.ArgumentParser) -> None:
    """Options of the benchmarks that alternate two clients on one emulator."""
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two clients this many times")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured load per client and round")
    parser.add_argument("--max-foreign", type=float, default=0.15,
                        help="pool only phases where other processes used at most this many cores")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bench_options(parser)
    parser.add_argument("--no-prompt", action="store_true", help="spk-cache requests: target_text only")
    parser.add_argument("--text", default=None, help="target text (its length sets the chunks per request)")
    args = parser.parse_args(argv)
    global USE_PROMPT, TEXT
    USE_PROMPT, TEXT = not args.no_prompt, args.text or TEXT
    from cvload.emulator import EmulatedModel, build_repository, get_profile
    from cvload.triton.launcher import TritonServer

    with tempfile.TemporaryDirectory(prefix="cvload-overhead-") as tmp:
        root = Path(tmp)
        repo = build_repository(root, [EmulatedModel("cosyvoice2", get_profile("fixed"), "streaming")])
        with TritonServer(repo, workdir=root / "server") as server:
            assert server.process is not None
            asyncio.run(bench(server.grpc_url, server.process.pid, root / "cosyvoice2.trace.jsonl",
                              args.concurrency, args.rounds, args.seconds, args.max_foreign))
    return 0


if __name__ == "__main__":
    sys.exit(main())
