"""Truth under load: cvload's first-chunk latency beside a bare reference client, for every target, same run.

One embedded server with the emulator's ``fixed`` profile (first chunk leaves the model exactly 200 ms after
the request reached it, a streaming and an offline model, both writing a send trace). For each target and
number of streams, two clients run alternately (``--rounds`` times, ``--seconds`` of load each):

- ``cvload``: a whole ``cvload run`` (``Session`` -> ``Engine`` -> target, records written, audio checked);
- ``reference``: a bare closed loop that does nothing but timestamp bytes: for gRPC streaming the
  ``tritonclient.grpc.aio`` client of ``grpc_target_overhead``, for gRPC offline its ``infer``, for HTTP a bare
  ``aiohttp`` request that stamps the body's end (offline) or the first event boundary (streaming).

Printed per target and level: first-chunk p50/p99 of both clients, their differences (cvload - reference), the
receive delay of both against the server's trace (chunk sent by the model -> client stamp, p50), the wait of both
(request sent -> the model got it: transport, the server's parsing and its queue, p99), cvload's own loop-lag p99
and CPU (``client`` section of its summary), the CPU each measuring process spent per request (cvload's helper
processes that parse HTTP streaming's JSON audio are not the measuring process), and the mean size of the
batches the server served each client's requests in. Targets: p50 within 0.5 ms and p99 within 2 ms of the
reference where the reference is not saturated; loop-lag p99 under 2 ms at 64 gRPC streams.

Saturated rows (marked ``queued``): the reference's wait p99 is more than ``QUEUED_MS`` above its unloaded wait,
so the server queued requests. First-chunk latency is then a property of the arrival pattern, not of the client's
clock, and the two clients honestly differ. The offline model shows it most: four instances, dynamic batching
without a queue delay, the whole batch answered at once after 300 ms. When an instance frees up it takes exactly
the requests queued at that moment; a closed-loop client whose 16 answers arrive together and whose 16 next
requests leave within 0.1 ms puts them in one batch, one that spreads them over a few milliseconds (the work
after each answer) starts a batch with the first and leaves the rest queued for a whole cycle (+300 ms). So at
16 and 64 offline streams cvload's p50 depends on its think time per request (it now sends the next request
before checking the audio of the last) and the ``batch`` column shows it; compare such rows by ``recv`` (the
stamp against the server's send time), which is the client's timing error, not by first-chunk latency.

    .venv/bin/python -m benchmarks.truth_under_load --levels 1 16 64 --seconds 6 --json-out truth.json
    .venv/bin/python -m benchmarks.truth_under_load --targets http-streaming-spk --levels 1 12
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import grpc_target_overhead as harness
from benchmarks.grpc_target_overhead import Client, Timed, closed_loop, time_request
from benchmarks.run_overhead import run_session, timed_records, write_manifest

STREAMING_MODEL, OFFLINE_MODEL = "cosyvoice2", "cosyvoice2_offline"
RAMP_S = 0.3
PROCESSES: int | str = 1  # --processes: cvload's load processes (auto: as `cvload run --processes auto` decides)


@dataclass(frozen=True)
class TargetSpec:
    name: str
    protocol: str
    mode: str
    prompt: bool

    @property
    def model(self) -> str:
        return STREAMING_MODEL if self.mode == "streaming" else OFFLINE_MODEL


TARGETS = {t.name: t for t in (
    TargetSpec("grpc-streaming", "grpc", "streaming", True),
    TargetSpec("grpc-offline", "grpc", "offline", True),
    TargetSpec("http-offline", "http", "offline", True),
    TargetSpec("http-streaming", "http", "streaming", True),
    TargetSpec("http-streaming-spk", "http", "streaming", False),
)}

# ---- reference clients: nothing but timestamps -------------------------------------------------------------
def grpc_offline_reference(url: str, spec: TargetSpec) -> Client:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)

    async def one(request_id: str) -> Timed:
        inputs = harness.grpc_inputs(grpcclient, spec.prompt)

        async def send(timed: Timed) -> None:
            await client.infer(spec.model, inputs, request_id=request_id)
            timed.first = time.monotonic()

        return await time_request(request_id, send)

    async def start() -> None:
        await client.is_server_ready()

    return one, start, client.close


def http_reference(url: str, spec: TargetSpec) -> Client:
    import aiohttp

    from cvload.targets.base import SynthesisRequest
    from cvload.targets.triton_http import TritonHttpOffline, TritonHttpStreaming

    # The request bodies cvload would send (built once, outside the timed path): the reference differs only in
    # what it does with the answer.
    builder = (TritonHttpStreaming if spec.mode == "streaming" else TritonHttpOffline)(url, spec.model)
    state: dict[str, Any] = {}
    path = f"http://{url}/v2/models/{spec.model}/" + ("generate_stream" if spec.mode == "streaming" else "infer")

    def body(request_id: str) -> tuple[bytes, dict[str, str]]:
        request = (SynthesisRequest(request_id, harness.TEXT, harness.PROMPT_TEXT, harness.PROMPT) if spec.prompt
                   else SynthesisRequest(request_id, harness.TEXT))
        if spec.mode == "streaming":
            return builder._body(request), {"Content-Type": "application/json"}
        data, header_length = builder._body(request)
        return data, {"Inference-Header-Content-Length": str(header_length),
                      "Content-Type": "application/octet-stream"}

    async def one(request_id: str) -> Timed:
        data, headers = body(request_id)
        session = state["session"]

        async def send(timed: Timed) -> None:
            async with session.post(path, data=data, headers=headers) as resp:
                if spec.mode == "offline":
                    await resp.read()
                    timed.first = time.monotonic()
                else:
                    buffer = bytearray()
                    while True:
                        chunk = await resp.content.readany()
                        now = time.monotonic()
                        if not chunk:
                            break
                        if timed.first is None:
                            buffer += chunk
                            if buffer.find(b"\n\n") >= 0:
                                timed.first = now
                                buffer = bytearray()
                if resp.status != 200:
                    timed.error = f"HTTP {resp.status}"

        return await time_request(request_id, send)

    async def start() -> None:
        state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                 headers={"Accept-Encoding": "identity"})

    async def close() -> None:
        await state["session"].close()

    return one, start, close


def reference_client(spec: TargetSpec, grpc_url: str, http_url: str) -> Client:
    if spec.protocol == "grpc" and spec.mode == "streaming":
        harness.USE_PROMPT = spec.prompt
        return harness.lean_client(grpc_url)
    if spec.protocol == "grpc":
        return grpc_offline_reference(grpc_url, spec)
    return http_reference(http_url, spec)


# ---- cvload ------------------------------------------------------------------------------------------------
async def run_cvload(spec: TargetSpec, url: str, manifest: Path, out: Path, streams: int,
                     requests: int) -> tuple[list[Timed], dict[str, Any]]:
    from cvload.settings.config import RunConfig

    config = RunConfig(server=[url], protocol=spec.protocol, mode=spec.mode, model=spec.model,
                       spk_cache=not spec.prompt, num_tasks=streams, requests=requests, ramp=RAMP_S,
                       inputs=str(manifest), out=str(out), metrics_url="none", gpu_source="none",
                       processes=PROCESSES)
    session, summary, cpu_s = await run_session(config)
    return timed_records(session), {**summary["client"], "cpu_s": cpu_s}


# ---- figures -----------------------------------------------------------------------------------------------
def figures(timed: list[Timed], trace: dict[str, dict]) -> dict[str, Any]:
    ok = [t for t in timed if t.error is None and t.first is not None]
    first = np.array([(t.first - t.sent) * 1000 for t in ok]) if ok else np.zeros(0)
    traced = [t for t in ok if t.request_id in trace and trace[t.request_id].get("sends")]
    recv = np.array([(t.first - trace[t.request_id]["arrival"] - trace[t.request_id]["sends"][0]) * 1000
                     for t in traced]) if traced else np.zeros(0)
    # Request sent -> the model got it: transport, the server's parsing and, when every model instance is busy,
    # the time the request waited in the server's queue.
    wait = np.array([(trace[t.request_id]["arrival"] - t.sent) * 1000 for t in traced]) if traced else np.zeros(0)

    # Offline: the server's dynamic batcher serves the requests that are queued when a model instance frees up as
    # one batch (one execute: the same arrival time and instance). Smaller batches mean more batches behind each
    # other, so more queueing: the mean batch size a client's requests were served in shows its arrival pattern.
    batches: dict[tuple[Any, float], int] = {}
    for entry in trace.values():
        key = (entry.get("pid"), entry["arrival"])
        batches[key] = batches.get(key, 0) + 1
    batch = np.array([batches[(trace[t.request_id].get("pid"), trace[t.request_id]["arrival"])] for t in traced],
                     dtype=float) if traced else np.zeros(0)

    def pct(values: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if values.size else None

    return {"requests": len(timed), "errors": len(timed) - len(ok),
            "first_p50_ms": pct(first, 50), "first_p99_ms": pct(first, 99),
            "recv_p50_ms": pct(recv, 50), "recv_p99_ms": pct(recv, 99),
            "wait_p50_ms": pct(wait, 50), "wait_p99_ms": pct(wait, 99),
            "batch_mean": round(float(batch.mean()), 2) if batch.size else None}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


async def bench(spec: TargetSpec, grpc_url: str, http_url: str, root: Path, levels: list[int], rounds: int,
                seconds: float) -> list[dict[str, Any]]:
    url = grpc_url if spec.protocol == "grpc" else http_url
    manifest = write_manifest(root)
    one, start, close = reference_client(spec, grpc_url, http_url)
    await start()
    trace_path = root / f"{spec.model}.trace.jsonl"
    rows = []
    try:
        probes = [await one(f"probe-{spec.name}-{os.getpid()}-{i}") for i in range(3)]
        if any(p.error for p in probes):
            raise SystemExit(f"{spec.name}: the reference client failed: {probes[0].error or probes[-1].error}")
        request_s = max(0.05, min((p.end or p.sent) - p.sent for p in probes))
        await asyncio.sleep(0.2)  # the trace of the last probe
        unloaded = figures(probes, harness.read_trace(trace_path))["wait_p50_ms"]
        for streams in levels:
            requests = max(8, int(seconds * streams / request_s))
            pooled: dict[str, list[Timed]] = {"cvload": [], "reference": []}
            clients: list[dict[str, Any]] = []
            ref_cpu_s = 0.0
            for round_no in range(rounds):
                await closed_loop(min(streams, 4), 8, one, 0.0)  # warm the server
                timed, client = await run_cvload(spec, url, manifest, root / f"{spec.name}-{streams}-{round_no}",
                                                 streams, requests)
                pooled["cvload"] += timed
                clients.append(client)
                timed, cpu_s, _ = await closed_loop(streams, requests, one, ramp_s=RAMP_S)
                pooled["reference"] += timed
                ref_cpu_s += cpu_s
            await asyncio.sleep(0.5)  # the server writes its trace just before each final response
            trace = harness.read_trace(trace_path)
            c, ref = figures(pooled["cvload"], trace), figures(pooled["reference"], trace)
            row = {
                "target": spec.name, "streams": streams, "cvload": c, "reference": ref,
                "diff_p50_ms": _diff(c["first_p50_ms"], ref["first_p50_ms"]),
                "diff_p99_ms": _diff(c["first_p99_ms"], ref["first_p99_ms"]),
                "cvload_loop_lag_p99_ms": max((x["loop_lag_ms"]["p99"] or 0.0) for x in clients),
                "cvload_cpu_cores": max((x["cpu_cores"] or 0.0) for x in clients),
                "cvload_warnings": sorted({w for x in clients for w in x["warnings"]}),
                # CPU of the measuring process per request (cvload: the engine's process, not its helpers).
                "cvload_cpu_ms_per_request": round(1000 * sum(x["cpu_s"] for x in clients)
                                                   / max(1, len(pooled["cvload"])), 3),
                "reference_cpu_ms_per_request": round(1000 * ref_cpu_s / max(1, len(pooled["reference"])), 3),
                "reference_unloaded_wait_ms": unloaded,
            }
            row["saturated"] = saturated(row)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        await close()
    return rows


QUEUED_MS = 10.0  # the reference's requests waited this much longer than unloaded ones (p99): the server queued


def saturated(row: dict[str, Any]) -> bool:
    """Whether the server itself queued the reference's requests at this level: then first-chunk latency
    depends on when each request arrives relative to the server's free instances and batches, and two clients
    with slightly different arrival patterns honestly see different latencies (the targets do not apply)."""
    wait_p99, unloaded = row["reference"]["wait_p99_ms"], row.get("reference_unloaded_wait_ms")
    return wait_p99 is not None and unloaded is not None and wait_p99 > unloaded + QUEUED_MS


def print_table(rows: list[dict[str, Any]]) -> None:
    def f(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    print("\nfirst chunk (ms), cvload beside the reference in the same run (diff = cvload - reference); "
          "'queued': the server queued the reference's requests (wait p99 more than "
          f"{QUEUED_MS:g} ms above unloaded), the targets do not apply:")
    print(f"{'target':20s} {'streams':>7s} {'ref p50':>8s} {'ref p99':>8s} {'cv p50':>8s} {'cv p99':>8s} "
          f"{'d p50':>7s} {'d p99':>7s} {'recv ref/cv p50':>16s} {'wait ref/cv p99':>16s} {'lag p99':>8s} "
          f"{'cpu':>5s} {'ms/req ref/cv':>14s} {'batch ref/cv':>13s}")
    for r in rows:
        c, ref = r["cvload"], r["reference"]
        print(f"{r['target']:20s} {r['streams']:7d} {f(ref['first_p50_ms']):>8s} {f(ref['first_p99_ms']):>8s} "
              f"{f(c['first_p50_ms']):>8s} {f(c['first_p99_ms']):>8s} {f(r['diff_p50_ms']):>7s} "
              f"{f(r['diff_p99_ms']):>7s} {f(ref['recv_p50_ms']) + '/' + f(c['recv_p50_ms']):>16s} "
              f"{f(ref['wait_p99_ms']) + '/' + f(c['wait_p99_ms']):>16s} "
              f"{f(r['cvload_loop_lag_p99_ms']):>8s} {r['cvload_cpu_cores']:5.2f} "
              f"{f(r['reference_cpu_ms_per_request']) + '/' + f(r['cvload_cpu_ms_per_request']):>14s} "
              f"{f(ref['batch_mean']) + '/' + f(c['batch_mean']):>13s}"
              + ("  queued" if r["saturated"] else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64], help="concurrent streams")
    parser.add_argument("--seconds", type=float, default=6.0, help="load per client, level and round")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the two clients this many times")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--text", default=None, help="target text (its length sets the chunks per request)")
    parser.add_argument("--json-out", type=Path, default=None, help="write every row as JSON here")
    parser.add_argument("--processes", default="1", help="cvload's --processes (N or auto; default 1)")
    args = parser.parse_args(argv)
    global PROCESSES
    PROCESSES = int(args.processes) if args.processes.isdigit() else args.processes
    if args.text:
        harness.TEXT = args.text
    from cvload.emulator import EmulatedModel, build_repository, get_profile
    from cvload.triton.launcher import TritonServer

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cvload-truth-") as tmp:
        root = Path(tmp)
        repo = build_repository(root, [EmulatedModel(STREAMING_MODEL, get_profile("fixed"), "streaming"),
                                       EmulatedModel(OFFLINE_MODEL, get_profile("fixed"), "offline")])
        with TritonServer(repo, workdir=root / "server", die_with_parent=True) as server:
            for name in args.targets:
                rows += asyncio.run(bench(TARGETS[name], server.grpc_url, server.http_url, root, args.levels,
                                          args.rounds, args.seconds))
    print_table(rows)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"levels": args.levels, "seconds": args.seconds, "rounds": args.rounds,
                                             "text": harness.TEXT, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
