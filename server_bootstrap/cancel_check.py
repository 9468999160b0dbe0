"""Doctor's cancellation check: does the deployment stop a streaming request its client abandoned?

Voice agents abandon requests all the time (the caller talks over the agent: ``cvload run --barge-in``). Triton
cancels a request when its gRPC stream is cancelled, but only the front model can stop the work: the CosyVoice2
BLS front must check ``is_cancelled()`` between chunks, stop calling ``token2wav`` and stop pulling tokens from
TensorRT-LLM. This check sends one long streaming request on a gRPC stream of its own, cancels the stream right
after the first chunk, and counts the ``token2wav`` executions (Triton's statistics) that happen afterwards: a
front that stops makes at most the one call already under way.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

from cvload.load.barge_in import Plan, own_call, watch
from cvload.results.records import RequestRecord
from cvload.targets.base import SynthesisRequest
from cvload.targets.triton_grpc import TritonGrpcStreaming
from cvload.telemetry.server_release import TOKEN2WAV, Settling, token2wav_calls
from server_bootstrap.findings import Finding

NAME = "cancellation"
# About 40 s of speech: many chunks, so a front that does not stop keeps calling token2wav for a while.
TEXT = " ".join(["When the caller starts to talk, the agent stops speaking at once, and the server should stop "
                 "making audio that nobody will hear."] * 4)
LIMIT_S = 20.0
FIX = ("in the front model's streaming loop (model.py of cosyvoice2), check request.is_cancelled() before each "
       "token2wav call and return when it is true; also cancel the tensorrt_llm stream "
       "(InferenceResponseIterator.cancel(), Triton 24.11+) so the LLM stops generating tokens")


def _token2wav_calls(http: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{http}/v2/models/{TOKEN2WAV}/stats", timeout=5.0) as resp:
            return token2wav_calls(json.loads(resp.read()))
    except (OSError, ValueError, AttributeError, TypeError):
        return None


async def _abandon(grpc: str, model: str) -> RequestRecord:
    target = TritonGrpcStreaming(grpc, model, timeout=60.0)
    await target.open()
    try:
        request = own_call(SynthesisRequest(request_id=f"cvload-doctor-cancel-{time.time_ns()}", target_text=TEXT))
        record = RequestRecord(index=0, request_id=request.request_id, item_id="doctor", worker=0, server=grpc,
                               text=TEXT, sent=time.monotonic())
        async for _chunk in watch(target.synthesize(request), Plan(after_first_s=0.0), record):
            record.chunk_offsets.append(_chunk.t - record.sent)
        return record
    finally:
        await target.close()


def check_cancellation(http: str, grpc: str, model: str) -> Finding:
    """One request abandoned after its first chunk; the token2wav calls after it say whether the server stopped.
    Run it on an idle deployment: other clients' requests call token2wav too."""
    before = _token2wav_calls(http)
    if before is None:
        return Finding(NAME, "skip", "no token2wav statistics to watch (not the CosyVoice2 repository shape)")
    try:
        record = asyncio.run(_abandon(grpc, model))
    except Exception as exc:  # noqa: BLE001 - a failed probe is a finding, not a crash
        return Finding(NAME, "warn", f"the probe request failed: {str(exc).splitlines()[0][:200]}",
                       "the server refused or broke the stream", "see the other checks and the server log")
    if record.abandon_offset is None:
        return Finding(NAME, "info", "the probe request finished before it could be abandoned: cannot tell")
    at_cancel = _token2wav_calls(http) or 0
    calls = Settling(at_cancel)
    deadline = calls.changed + LIMIT_S
    while not calls.settled(deadline):
        time.sleep(0.1)
        calls.see(_token2wav_calls(http) or None)  # 0, like no answer, is no reading (as before)
    after = calls.last - at_cancel
    first_ms = record.chunk_offsets[0] * 1000 if record.chunk_offsets else 0.0
    kept_s = max(0.0, calls.changed - (record.sent + record.abandon_offset)) if after else 0.0
    if after <= 1:
        return Finding(NAME, "ok", f"abandoned after the first chunk ({first_ms:.0f} ms): the server stopped "
                       f"({after} token2wav call after the cancel)")
    return Finding(NAME, "FAIL", f"abandoned after the first chunk ({first_ms:.0f} ms), the server went on: "
                   f"{after} token2wav calls over {kept_s:.1f} s after the cancel",
                   "the front model ignores cancellation: every interrupted request (a voice agent's caller "
                   "talking over it) keeps using the GPU and delays everyone's first chunk", FIX)


def applies(expect: Any) -> bool:
    """Streaming deployments of the real shape (a front calling token2wav)."""
    return expect.mode == "streaming" and expect.sub_models
