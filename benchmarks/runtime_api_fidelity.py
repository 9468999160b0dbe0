"""How far cvload's ``--api cosyvoice`` targets move first-chunk latency, beside bare reference clients.

The emulated CosyVoice Python runtime (a real grpcio server and a real FastAPI app under uvicorn, in a child
process) runs the ``fixed`` profile: the first sentence leaves exactly 200 ms after the request arrived. Two
clients take turns in the same run, phase by phase, at each concurrency (a closed loop of N streams, zero-shot
requests with a 3 s prompt, one sentence each):

- ``cvload``: the target a run uses (``CosyVoiceGrpc`` / ``CosyVoiceHttp``);
- ``bare``: the least code that measures the same thing: the generated gRPC stub on ``grpc.aio`` stamping the
  first ``Response``, or aiohttp stamping the end of the first HTTP chunk (the first sentence).

Printed per protocol, client and concurrency: first-chunk latency minus the 200 ms (p50, p99), and the
difference cvload - bare. The figures include the server's own overhead (the same for both clients); the
difference is what cvload adds. Targets: p50 within 0.5 ms of the reference, p99 within 2 ms.

    .venv/bin/python -m benchmarks.runtime_api_fidelity --concurrency 1 16 --requests 48 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import numpy as np

TRUTH_S = 0.200
TEXT = "Hello there world."  # one sentence: one response at 200 ms
PROMPT_TEXT = "A three second prompt."
PROMPT = (0.1 * np.sin(np.arange(48000) * 2 * np.pi * 220 / 16000)).astype(np.float32)

Client = Callable[[], Awaitable[float]]  # one request -> first-chunk latency (s)


async def cvload_client(protocol: str, address: str) -> tuple[Client, Callable[[], Awaitable[None]]]:
    from cvload.settings.config import RunConfig
    from cvload.targets import make_target
    from cvload.targets.base import SynthesisRequest

    target = make_target(protocol, "streaming", address, api="cosyvoice", timeout=30,
                         config=RunConfig(inference="zero_shot"))
    await target.open()
    ids = iter(range(10**9))

    async def one() -> float:
        request = SynthesisRequest(f"r{next(ids)}", TEXT, PROMPT_TEXT, PROMPT)
        sent = time.monotonic()
        first = None
        async for chunk in target.synthesize(request):
            if first is None:
                first = chunk.t
        assert first is not None
        return first - sent

    return one, target.close


async def bare_grpc(address: str) -> tuple[Client, Callable[[], Awaitable[None]]]:
    import grpc

    from cvload.cosyvoice_runtime import cosyvoice_pb2 as pb
    from cvload.cosyvoice_runtime import cosyvoice_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)])
    stub = pb_grpc.CosyVoiceStub(channel)
    pcm = (np.clip(PROMPT, -1, 1) * 32767).astype("<i2").tobytes()
    message = pb.Request(zero_shot_request=pb.zeroshotRequest(tts_text=TEXT, prompt_text=PROMPT_TEXT,
                                                              prompt_audio=pcm))

    async def one() -> float:
        sent = time.monotonic()
        call = stub.Inference(message)
        first = None
        while True:
            response = await call.read()
            t = time.monotonic()
            if response is grpc.aio.EOF:
                break
            if first is None:
                first = t
        assert first is not None
        return first - sent

    return one, channel.close


async def bare_http(address: str) -> tuple[Client, Callable[[], Awaitable[None]]]:
    import aiohttp

    from cvload.targets.cosyvoice_common import pcm16, wav_file

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    wav = wav_file(pcm16(PROMPT))
    url = f"http://{address}/inference_zero_shot"

    async def one() -> float:
        form = aiohttp.FormData()
        form.add_field("tts_text", TEXT)
        form.add_field("prompt_text", PROMPT_TEXT)
        form.add_field("prompt_wav", wav, filename="prompt_wav", content_type="application/octet-stream")
        sent = time.monotonic()
        first = None
        async with session.post(url, data=form) as resp:
            assert resp.status == 200, resp.status
            while True:
                data, end = await resp.content.readchunk()
                t = time.monotonic()
                if not data and not end:
                    break
                if end and first is None:
                    first = t
        assert first is not None
        return first - sent

    return one, session.close


async def closed_loop(one: Client, concurrency: int, requests: int) -> list[float]:
    counter = iter(range(requests))
    out: list[float] = []

    async def worker(k: int) -> None:
        await asyncio.sleep(k * TRUTH_S / concurrency)  # spread the streams over one request
        for _ in counter:
            out.append(await one())

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return out


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) - TRUTH_S, q) * 1000)


async def measure(protocol: str, address: str, concurrencies: list[int], requests: int,
                  rounds: int) -> list[dict[str, object]]:
    bare = bare_grpc if protocol == "grpc" else bare_http
    rows = []
    for concurrency in concurrencies:
        got: dict[str, list[float]] = {"cvload": [], "bare": []}
        for _ in range(rounds):  # alternate, so a slow moment of the machine hits both clients
            for name, make in (("cvload", lambda: cvload_client(protocol, address)), ("bare", lambda: bare(address))):
                one, close = await make()
                try:
                    await closed_loop(one, concurrency, min(concurrency, 4))  # warm the connection
                    got[name] += await closed_loop(one, concurrency, requests)
                finally:
                    await close()
        row: dict[str, object] = {"protocol": protocol, "concurrency": concurrency, "requests": len(got["cvload"])}
        for name, values in got.items():
            row[f"{name}_p50_ms"], row[f"{name}_p99_ms"] = ms(values, 50), ms(values, 99)
        row["diff_p50_ms"] = row["cvload_p50_ms"] - row["bare_p50_ms"]  # type: ignore[operator]
        row["diff_p99_ms"] = row["cvload_p99_ms"] - row["bare_p99_ms"]  # type: ignore[operator]
        rows.append(row)
        print(f"{protocol:4} x{concurrency:<3} n={row['requests']:<4} overhead over 200 ms: "
              f"cvload p50 {row['cvload_p50_ms']:6.2f} p99 {row['cvload_p99_ms']:6.2f}   "
              f"bare p50 {row['bare_p50_ms']:6.2f} p99 {row['bare_p99_ms']:6.2f}   "
              f"cvload-bare p50 {row['diff_p50_ms']:+6.2f} p99 {row['diff_p99_ms']:+6.2f} ms", flush=True)
    return rows


def main() -> None:
    from cvload.emulator import get_profile
    from cvload.emulator.runtime_server import RuntimeServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=48, help="measured requests per client, phase and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--protocol", choices=("grpc", "http"), nargs="+", default=["grpc", "http"])
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    rows = []
    with RuntimeServer(get_profile("fixed"), max_conc=max(args.concurrency), die_with_parent=True) as server:
        for protocol in args.protocol:
            address = server.grpc_url if protocol == "grpc" else server.http_url
            rows += asyncio.run(measure(protocol, address, args.concurrency, args.requests, args.rounds))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
