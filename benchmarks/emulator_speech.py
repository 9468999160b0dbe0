"""Does speaking cost the emulator timing truth? The speech voice against the tone, same server, alternating.

One embedded Triton server holds two streaming models with the ``fixed`` profile (first chunk exactly 200 ms after
the request reaches the model, then one every 100 ms), one with ``voice = speech``, one with ``voice = tone``.
`cvload run` drives each in turn (rounds alternate) at the same concurrency. Printed per voice: the server's own
lateness (trace: first send minus 200 ms, and every send minus its due time), the client's first-chunk latency
(p50/p99), then the ratios speech / tone.

    .venv/bin/python -m benchmarks.emulator_speech --concurrency 16 --requests 160 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from cvload.emulator import EmulatedModel, build_repository, get_profile
from cvload.triton.launcher import TritonServer

VOICES = ("speech", "tone")


def run(server: TritonServer, model: str, out: Path, concurrency: int, requests: int) -> np.ndarray:
    """One `cvload run` against ``model``; the first-chunk latencies (ms) of its requests."""
    subprocess.run([sys.executable, "-m", "cvload", "run", "--quiet", "--server", server.grpc_url, "--model", model,
                    "--metrics-url", server.metrics_url,
                    "--num-tasks", str(concurrency), "--requests", str(requests), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "records.jsonl").open()]
    return np.array([r["chunk_offsets"][0] * 1000 for r in records if r["ok"]])


def lateness(trace: Path, seen: int) -> tuple[np.ndarray, np.ndarray, int]:
    """From the trace lines after the first ``seen``: first-send lateness and every send's lateness (ms)."""
    lines = [json.loads(line) for line in trace.open()][seen:]
    first = np.array([(t["sends"][0] - 0.2) * 1000 for t in lines if t["sends"]])
    every = np.array([(s - 0.2 - 0.1 * i) * 1000 for t in lines for i, s in enumerate(t["sends"])])
    return first, every, seen + len(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict[str, list[np.ndarray]]] = {v: {"client": [], "first": [], "every": []} for v in VOICES}
    with tempfile.TemporaryDirectory(prefix="cvload-speech-bench-") as tmp:
        root = Path(tmp)
        models = [EmulatedModel(v, get_profile("fixed", {"voice": v}), "streaming") for v in VOICES]
        repo = build_repository(root, models)
        seen = dict.fromkeys(VOICES, 0)
        with TritonServer(repo, workdir=root / "server", die_with_parent=True) as server:
            for r in range(args.rounds):
                for voice in VOICES if r % 2 == 0 else VOICES[::-1]:
                    client = run(server, voice, root / f"{voice}-{r}", args.concurrency, args.requests)
                    first, every, seen[voice] = lateness(root / f"{voice}.trace.jsonl", seen[voice])
                    for key, values in (("client", client), ("first", first), ("every", every)):
                        results[voice][key].append(values)
    print(f"fixed profile, concurrency {args.concurrency}, {args.requests} requests x {args.rounds} rounds per voice")
    stats: dict[str, dict[str, tuple[float, float]]] = {}
    for voice in VOICES:
        stats[voice] = {k: (float(np.percentile(np.concatenate(v), 50)), float(np.percentile(np.concatenate(v), 99)))
                        for k, v in results[voice].items()}
        s = stats[voice]
        print(f"  {voice:6} client first chunk p50/p99 {s['client'][0]:7.1f} / {s['client'][1]:7.1f} ms   "
              f"server first send late p50/p99 {s['first'][0]:5.2f} / {s['first'][1]:5.2f} ms   "
              f"every send late p50/p99 {s['every'][0]:5.2f} / {s['every'][1]:5.2f} ms")
    sp, tn = stats["speech"], stats["tone"]
    print(f"speech / tone: client first chunk p50 {sp['client'][0] / tn['client'][0]:.3f}, "
          f"p99 {sp['client'][1] / tn['client'][1]:.3f}; server first-send lateness p99 "
          f"{sp['first'][1]:.2f} vs {tn['first'][1]:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
