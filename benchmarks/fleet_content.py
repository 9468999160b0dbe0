"""Where a fleet's content checks run (``--processes N --check-content``): what each choice costs a load process.

A load process's finished audio can reach a recogniser two ways:

a. **its own helper** (what cvload does): the engine hands the audio to a recogniser helper process of its own
   (``cvload.measure.audio_checks.Decoders``: a queue put on the loop, pickle protocol 5 with the arrays out of band, one
   pipe write from a feeder thread);
b. **the coordinator's checker**: the audio goes into the load process's record batches to the coordinator
   (pickled into the frame: copied), which unpickles it and hands it to its own helper.

Printed for a response of ``--audio-s`` (5) seconds at 24 kHz float32: the load process's CPU per response and the
time its event loop spends on it, for each way; the coordinator's extra CPU for b; and the memory of one loaded
Moonshine helper (what a's extra recognisers cost: one per load process at least).

    .venv/bin/python -m benchmarks.fleet_content [--responses 300 --audio-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cvload.listen.live import warm_job
from cvload.measure.audio_checks import Decoders


async def own_helper(audio: list[np.ndarray], n: int) -> tuple[float, float]:
    pool = Decoders(1)  # the job is ``len``: the helper only counts the chunks, so the transfer alone is measured
    loop = asyncio.get_running_loop()
    try:
        await pool.submit(loop, len, audio)
        cpu0, on_loop = time.process_time(), 0.0
        futures = []
        for _ in range(n):
            t = time.perf_counter()
            futures.append(pool.submit(loop, len, audio))
            on_loop += time.perf_counter() - t
            await asyncio.sleep(0)
        await asyncio.gather(*futures)
        return (time.process_time() - cpu0) / n, on_loop / n
    finally:
        pool.close()


def to_coordinator(audio: list[np.ndarray], n: int) -> tuple[float, float]:
    """The outbox's way: pickle a batch holding the audio (HIGHEST_PROTOCOL, in band) and write it to a pipe."""
    reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert reader.stdin is not None
    cpu0 = time.process_time()
    frames = []
    for i in range(n):
        data = pickle.dumps([("record", {"index": i}), ("audio", (i, audio))], protocol=pickle.HIGHEST_PROTOCOL)
        reader.stdin.write(len(data).to_bytes(4, "big") + data)
        if i < 20:
            frames.append(data)
    reader.stdin.flush()
    sent = (time.process_time() - cpu0) / n
    reader.stdin.close()
    reader.wait()
    cpu0 = time.process_time()
    for i in range(n):  # the coordinator: unpickle (a copy) before handing it to its helper
        pickle.loads(frames[i % len(frames)])
    return sent, (time.process_time() - cpu0) / n


def helper_rss_mb() -> float:
    async def warm() -> float:
        pool = Decoders(1, idle=True)
        try:
            await pool.submit(asyncio.get_running_loop(), warm_job, "moonshine")
            status = Path(f"/proc/{pool.pids[0]}/status").read_text()
            return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024
        finally:
            pool.close()

    return asyncio.run(warm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, default=300)
    parser.add_argument("--audio-s", type=float, default=5.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    samples = int(args.audio_s * 24000)
    audio = [rng.standard_normal(4800).astype(np.float32) for _ in range(samples // 4800)]  # 0.2 s chunks
    mb = sum(a.nbytes for a in audio) / 1e6
    print(f"{args.responses} responses of {args.audio_s:g} s ({mb:.2f} MB float32), {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}")
    cpu_a, loop_a = asyncio.run(own_helper(audio, args.responses))
    print(f"a. own helper:     load process CPU {cpu_a * 1e3:7.3f} ms/response, on its loop {loop_a * 1e6:6.1f} us")
    cpu_b, coord_b = to_coordinator(audio, args.responses)
    print(f"b. to coordinator: load process CPU {cpu_b * 1e3:7.3f} ms/response (pickling on the outbox thread, "
          f"holding the GIL), + coordinator {coord_b * 1e3:.3f} ms to unpickle, + its own hand-off as in a")
    print(f"one loaded Moonshine helper: {helper_rss_mb():.0f} MB resident")


if __name__ == "__main__":
    main()
