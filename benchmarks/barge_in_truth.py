"""Barge-in truth: does abandoning requests disturb the timestamps of the others?

One embedded server with the emulator's ``fixed`` profile (every request's first chunk leaves the model 200 ms
after it arrived, then one every 100 ms, whatever the load; cancellation honoured) and its per-request trace.
Two clients run the same closed-loop load with the same abandon pattern (``--barge-in``, default
``50%@first_chunk``: the same request indices abandoned), alternately, ``--rounds`` times:

- ``cvload``: a whole ``cvload run --barge-in`` (engine, targets, records, the barge-in hook);
- ``bare``: a bare ``grpc.aio`` closed loop on Triton's generated stubs, one ``ModelStreamInfer`` call per request,
  an abandoned one cancelled (``call.cancel()``) when its plan says so, nothing but a clock read per response.

Printed per level: the survivors' first chunk p50/p99 for both clients and the difference, the survivors'
receive delay against the server's trace (the model sent its first chunk -> the client stamped it; the client's
own timing error) p50/p99 for both, and cvload's own cost of a stream per abandoned request: the first chunk of
its abandoned requests (each on a stream of its own) minus that of its survivors (on shared streams).

    .venv/bin/python -m benchmarks.barge_in_truth --levels 8 32 --seconds 6 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


async def bare_load(url: str, model: str, concurrency: int, seconds: float, policy: Any, prefix: str,
                    text: str) -> list[dict[str, Any]]:
    """The bare client: returns one dict per request (id, sent, first, abandoned)."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    from cvload.targets.tensors import bytes_tensor

    channel = grpc.aio.insecure_channel(url)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    results: list[dict[str, Any]] = []
    counter = iter(range(1 << 30))
    deadline = time.monotonic() + seconds

    def message(request_id: str) -> Any:
        m = pb.ModelInferRequest(model_name=model, id=request_id)
        m.parameters["triton_enable_empty_final_response"].bool_param = True
        tensor = bytes_tensor("target_text", text)
        m.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        m.raw_input_contents.append(tensor.raw)
        return m

    async def worker(delay: float) -> None:
        await asyncio.sleep(delay)
        while time.monotonic() < deadline:
            index = next(counter)
            plan = policy.plan(index)
            request_id = f"{prefix}-{index}"
            call = stub.ModelStreamInfer()
            sent = time.monotonic()
            await call.write(message(request_id))
            first = None
            while True:
                response = await call.read()
                t = time.monotonic()
                if response is grpc.aio.EOF:
                    break
                result = response.infer_response
                final = result.parameters.get("triton_final_response")
                if first is None and len(result.outputs):
                    first = t
                    if plan is not None:  # abandoned right after its first chunk (the default pattern)
                        call.cancel()
                        break
                if final is not None and final.bool_param:
                    break
            if plan is None:
                await call.done_writing()
            results.append({"id": request_id, "sent": sent, "first": first, "abandoned": plan is not None})

    await asyncio.gather(*(worker(i / concurrency) for i in range(concurrency)))
    await channel.close()
    return results


def _trace(path: Path) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in (json.loads(line) for line in path.read_text().splitlines())}


SETTLE_S = 1.0  # requests sent in a client's first second are left out (streams opening, workers ramping)


def _figures(rows: list[dict[str, Any]], trace: dict[str, dict[str, Any]]) -> dict[str, float]:
    start = min(r["sent"] for r in rows)
    rows = [r for r in rows if r["sent"] - start >= SETTLE_S]
    survivors = [r for r in rows if not r["abandoned"] and r["first"] is not None]
    first = np.array([(r["first"] - r["sent"]) * 1e3 for r in survivors])
    recv = np.array([(r["first"] - (trace[r["id"]]["arrival"] + trace[r["id"]]["sends"][0])) * 1e3
                     for r in survivors if r["id"] in trace and trace[r["id"]]["sends"]])
    abandoned = np.array([(r["first"] - r["sent"]) * 1e3 for r in rows if r["abandoned"] and r["first"]])
    return {"n": len(survivors), "first_p50": float(np.percentile(first, 50)), "first_p99": float(np.percentile(first, 99)),
            "recv_p50": float(np.percentile(recv, 50)), "recv_p99": float(np.percentile(recv, 99)),
            "abandoned_first_p50": float(np.percentile(abandoned, 50)) if abandoned.size else float("nan")}


def cvload_rows(out: Path) -> list[dict[str, Any]]:
    rows = []
    for line in (out / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        first = r["sent"] + r["chunk_offsets"][0] if r["chunk_offsets"] else None
        rows.append({"id": r["request_id"], "sent": r["sent"], "first": first,
                     "abandoned": r["error_kind"] == "barged_in"})
    return rows


def main(argv: list[str] | None = None) -> int:
    from cvload.cli import main as cvload_main
    from cvload.emulator import EmulatedModel, build_repository, get_profile
    from cvload.load.barge_in import BargeIn
    from cvload.triton.launcher import TritonServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=6.0, help="load per client and round (the first second "
                        "is left out of the figures)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--barge-in", default="50%@first_chunk")
    args = parser.parse_args(argv)
    if "first_chunk" not in args.barge_in:
        parser.error("the bare client abandons right after the first chunk: use SHARE@first_chunk")
    policy = BargeIn.parse(args.barge_in)
    text = "The quick brown fox jumps over the lazy dog, then rests in the warm afternoon sun."
    root = Path(tempfile.mkdtemp(prefix="cvload-barge-truth-"))
    repo = build_repository(root, [EmulatedModel(name="cosyvoice2", profile=get_profile("fixed"))])
    rows_out = []
    with TritonServer(repo, workdir=root / "server", die_with_parent=True, extra_args=["--exit-timeout-secs=0"]) as srv:
        inputs = root / "inputs.jsonl"
        inputs.write_text(json.dumps({"id": "a", "target_text": text}) + "\n")
        for level in args.levels:
            for rnd in range(args.rounds):
                out = root / f"cvload-{level}-{rnd}"
                code = cvload_main(["run", "--quiet", "--json", "--server", srv.grpc_url, "--num-tasks", str(level),
                                    "--duration", f"{args.seconds}s", "--barge-in", args.barge_in, "--inputs",
                                    str(inputs), "--spk-cache", "--out", str(out), "--metrics-url", "none",
                                    "--gpu-source", "none"])
                assert code in (0, 3), code
                bare = asyncio.run(bare_load(srv.grpc_url, "cosyvoice2", level, args.seconds, policy,
                                             f"bare{level}r{rnd}", text))
                trace = _trace(root / "cosyvoice2.trace.jsonl")
                mine, ref = _figures(cvload_rows(out), trace), _figures(bare, trace)
                rows_out.append((level, rnd, mine, ref))
                print(f"streams {level:3d} round {rnd}: survivors' first chunk p50 cvload {mine['first_p50']:.2f} "
                      f"bare {ref['first_p50']:.2f} (diff {mine['first_p50'] - ref['first_p50']:+.2f} ms), p99 "
                      f"cvload {mine['first_p99']:.2f} bare {ref['first_p99']:.2f} (diff "
                      f"{mine['first_p99'] - ref['first_p99']:+.2f} ms); receive delay p50/p99 cvload "
                      f"{mine['recv_p50']:.2f}/{mine['recv_p99']:.2f} bare {ref['recv_p50']:.2f}/{ref['recv_p99']:.2f}"
                      f" ms; survivors n={mine['n']}/{ref['n']}; cvload's own stream per abandoned request: first "
                      f"chunk p50 {mine['abandoned_first_p50'] - mine['first_p50']:+.2f} ms vs its survivors",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
