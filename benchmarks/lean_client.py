"""The lean reference client: a bare asyncio closed loop over ``tritonclient.grpc.aio``.

Other benchmarks compare cvload against it. It does as little as a streaming client can: one ``stream_infer``
per request (the end of that stream marks the request's completion, since the aio client does not forward
``enable_empty_final_response``), no audio decoding (only the byte count of each chunk), clocks read with
``time.perf_counter()`` right before the request goes out and as each response comes in.

Closed loop as the upstream CosyVoice benchmark client: the items are split into ``concurrency`` contiguous
shards, each worker sends its shard one request after the other; workers start ``stagger_s`` apart (closed loops
started together stay in lock-step). Latency names and meanings follow the CosyVoice team's:

- first_chunk: first waveform response - request sent
- second_chunk: second waveform response - first one (a gap, not from the start)
- total: end of the request's stream - request sent

Use from Python (``from benchmarks.lean_client import run_load``) or the command line::

    python -m benchmarks.lean_client --url 127.0.0.1:8001 --concurrency 4 --requests 40
    python -m benchmarks.lean_client --emulator fixed --concurrency 8 --requests 80   # embedded server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cvload.triton.launcher import TritonServer

SAMPLE_RATE = 24000
DEFAULT_TEXTS = (
    "The quick brown fox jumps over the lazy dog, then rests in the warm afternoon sun.",
    "今天天气很好，我们一起去公园散步，然后在湖边喝一杯茶。",
)
_ids = itertools.count()


@dataclass
class RequestResult:
    """One request as the client saw it; times in seconds."""

    worker: int
    index: int
    request_id: str
    text: str
    sent: float  # time.perf_counter() right before the request went out
    sent_monotonic: float  # the same instant on time.monotonic() (the emulator's trace clock)
    first_chunk: float | None = None
    second_chunk: float | None = None  # gap between the first and the second waveform response
    total: float | None = None
    chunks: int = 0
    samples: int = 0
    error: str | None = None
    chunk_times: list[float] = field(default_factory=list)  # arrival of each waveform response, after `sent`

    @property
    def audio_s(self) -> float:
        return self.samples / SAMPLE_RATE


@dataclass
class RunResult:
    concurrency: int
    requests: list[RequestResult]
    wall_s: float  # first request sent -> last request done
    cpu_s: float  # client process CPU seconds (user + system, all threads) over the run
    cpu_process_time_s: float  # time.process_time() over the run (the same, as Python counts it)

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.requests if r.error is None]

    @property
    def errors(self) -> list[RequestResult]:
        return [r for r in self.requests if r.error is not None]

    @property
    def audio_s(self) -> float:
        return sum(r.audio_s for r in self.ok)

    @property
    def rtf(self) -> float:
        """Wall time of the run / seconds of audio produced (the upstream benchmark's RTF)."""
        return self.wall_s / self.audio_s if self.audio_s else float("nan")

    def latencies(self, name: str) -> list[float]:
        return [v for r in self.ok if (v := getattr(r, name)) is not None]

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "concurrency": self.concurrency,
            "requests": len(self.requests),
            "errors": len(self.errors),
            "wall_s": round(self.wall_s, 3),
            "audio_s": round(self.audio_s, 3),
            "rtf": round(self.rtf, 4),
            "client_cpu_s": round(self.cpu_s, 3),
            "client_cpu_ms_per_request": round(1000 * self.cpu_s / max(1, len(self.requests)), 3),
        }
        for name in ("first_chunk", "second_chunk", "total"):
            out[name + "_ms"] = stats_ms(self.latencies(name))
        return out


def stats_ms(values: Sequence[float]) -> dict[str, float]:
    """avg and percentiles in milliseconds (numpy's linear interpolation, as the upstream client)."""
    if not values:
        return {}
    arr = np.asarray(values) * 1000.0
    return {
        "avg": round(float(arr.mean()), 2),
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p90": round(float(np.percentile(arr, 90)), 2),
        "p95": round(float(np.percentile(arr, 95)), 2),
        "p99": round(float(np.percentile(arr, 99)), 2),
        "min": round(float(arr.min()), 2),
        "max": round(float(arr.max()), 2),
    }


def shard(items: Sequence[str], n: int) -> list[list[tuple[int, str]]]:
    """Split into ``n`` contiguous shards whose sizes differ by at most one (as datasets' ``shard``)."""
    base, extra = divmod(len(items), n)
    shards, start = [], 0
    for k in range(n):
        size = base + (1 if k < extra else 0)
        shards.append([(i, items[i]) for i in range(start, start + size)])
        start += size
    return shards


def _inputs(text: str, prompt: tuple[np.ndarray, str] | None = None):
    """target_text, and with ``prompt`` (16 kHz samples, transcript) the zero-shot inputs too."""
    import tritonclient.grpc.aio as grpcclient

    tensor = grpcclient.InferInput("target_text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode("utf-8")]], dtype=object))
    if prompt is None:
        return [tensor]
    wav, prompt_text = prompt
    inputs = [grpcclient.InferInput("reference_wav", [1, wav.size], "FP32"),
              grpcclient.InferInput("reference_wav_len", [1, 1], "INT32"),
              grpcclient.InferInput("reference_text", [1, 1], "BYTES"), tensor]
    inputs[0].set_data_from_numpy(wav.reshape(1, -1).astype(np.float32))
    inputs[1].set_data_from_numpy(np.array([[wav.size]], dtype=np.int32))
    inputs[2].set_data_from_numpy(np.array([[prompt_text.encode("utf-8")]], dtype=object))
    return inputs


async def stream_one(client, model: str, text: str, *, worker: int = 0, index: int = 0,
                     timeout_s: float | None = None, prompt: tuple[np.ndarray, str] | None = None) -> RequestResult:
    """Send one streaming request on its own gRPC stream and time its responses."""
    request_id = f"lean-{os.getpid()}-{next(_ids)}"
    inputs = _inputs(text, prompt)

    async def requests():
        yield {"model_name": model, "inputs": inputs, "request_id": request_id}

    result = RequestResult(worker, index, request_id, text, sent=0.0, sent_monotonic=0.0)
    result.sent_monotonic = time.monotonic()
    result.sent = time.perf_counter()
    stream = client.stream_infer(inputs_iterator=requests(), stream_timeout=timeout_s)
    try:
        async for response, error in stream:
            now = time.perf_counter()
            if error is not None:
                result.error = str(error)
                continue
            raw = response.get_response().raw_output_contents
            n = len(raw[0]) // 4 if raw else 0
            if n:
                result.chunk_times.append(now - result.sent)
                result.chunks += 1
                result.samples += n
    except Exception as exc:  # noqa: BLE001 - a transport failure is this request's error, the run goes on
        result.error = result.error or f"{type(exc).__name__}: {exc}"
    result.total = time.perf_counter() - result.sent
    if result.chunk_times:
        result.first_chunk = result.chunk_times[0]
        if len(result.chunk_times) > 1:
            result.second_chunk = result.chunk_times[1] - result.chunk_times[0]
    if result.error is None and not result.chunks:
        result.error = "stream ended without audio"
    return result


async def run_load(url: str, texts: Sequence[str], *, model: str = "cosyvoice2", concurrency: int = 1,
                   stagger_s: float = 0.01, timeout_s: float | None = 120.0,
                   prompt: tuple[np.ndarray, str] | None = None) -> RunResult:
    """Closed loop: ``concurrency`` workers each send their contiguous shard of ``texts`` sequentially."""
    import tritonclient.grpc.aio as grpcclient

    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    shards = shard(list(texts), concurrency)
    results: list[RequestResult] = []
    client = grpcclient.InferenceServerClient(url)
    try:

        async def worker(k: int) -> None:
            if k and stagger_s > 0:
                await asyncio.sleep(k * stagger_s)
            for index, text in shards[k]:
                results.append(await stream_one(client, model, text, worker=k, index=index, timeout_s=timeout_s,
                                                prompt=prompt))

        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - start
        cpu_pt = time.process_time() - cpu0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await client.close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    results.sort(key=lambda r: r.index)
    return RunResult(concurrency, results, wall, cpu, cpu_pt)


def run_load_sync(url: str, texts: Sequence[str], **kwargs: object) -> RunResult:
    return asyncio.run(run_load(url, texts, **kwargs))  # type: ignore[arg-type]


@contextlib.contextmanager
def emulated_server(profile: str = "fixed", *, model: str = "cosyvoice2", mode: str = "streaming",
                    overrides: dict[str, object] | None = None, pipeline: bool = False) -> Iterator[TritonServer]:
    """The embedded Triton server with one emulated model (or the five of ``pipeline``), in a temporary folder
    removed afterwards."""
    from cvload.emulator import EmulatedModel, build_pipeline_repository, build_repository, get_profile
    from cvload.triton.launcher import TritonServer

    with tempfile.TemporaryDirectory(prefix="cvload-bench-") as root:
        emulated = get_profile(profile, overrides)
        repo = (build_pipeline_repository(Path(root), emulated, name=model, mode=mode) if pipeline else
                build_repository(Path(root), [EmulatedModel(model, emulated, mode)]))
        with TritonServer(repo, workdir=Path(root) / "server", die_with_parent=True) as server:
            yield server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lean_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="gRPC endpoint host:port (default: start the emulator)")
    parser.add_argument("--emulator", default=None, metavar="PROFILE",
                        help="start the embedded server with this emulator profile (default fixed without --url)")
    parser.add_argument("--model", default="cosyvoice2")
    parser.add_argument("--concurrency", "-c", type=int, default=1)
    parser.add_argument("--requests", "-n", type=int, default=20)
    parser.add_argument("--text", action="append", default=None, help="text to send (repeatable, cycled)")
    parser.add_argument("--stagger-ms", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print the summary and every request as JSON")
    args = parser.parse_args(argv)
    texts = list(itertools.islice(itertools.cycle(args.text or DEFAULT_TEXTS), args.requests))

    def go(url: str) -> RunResult:
        return run_load_sync(url, texts, model=args.model, concurrency=args.concurrency,
                             stagger_s=args.stagger_ms / 1000.0)

    if args.url and not args.emulator:
        run = go(args.url)
    else:
        with emulated_server(args.emulator or "fixed", model=args.model) as server:
            run = go(server.grpc_url)
    if args.json:
        print(json.dumps({"summary": run.summary(), "requests": [asdict(r) for r in run.requests]}, indent=1))
    else:
        print(json.dumps(run.summary(), indent=1))
    return 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
