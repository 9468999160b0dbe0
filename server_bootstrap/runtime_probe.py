"""Does a port answer as CosyVoice's Python runtime? The check ``status``, ``doctor`` and ``up`` of the
python-runtime target share: the cosyvoice targets' own ``open()``, which tells the runtime from a Triton server,
an OpenAI speech server or nothing at all, without synthesizing anything."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cvload.errors import CvloadError
from cvload.settings.address import hostport
from cvload.targets.base import Target
from cvload.targets.cosyvoice_grpc import CosyVoiceGrpc
from cvload.targets.cosyvoice_http import CosyVoiceHttp
from cvload.triton.launcher import accepts

TRITON = "this port speaks Triton, not the CosyVoice runtime"


@dataclass(frozen=True)
class Answer:
    ok: bool
    detail: str
    cause: str = ""
    fix: str = ""


def _target(host: str, port: int, server: str) -> Target:
    where = hostport(host, port)
    return CosyVoiceGrpc(where) if server == "grpc" else CosyVoiceHttp(where)


async def _open(target: Target) -> None:
    try:
        await target.open()
    finally:
        await target.close()


def probe(host: str, port: int, server: str) -> Answer:
    """Open the runtime's ``server`` ("grpc" or "fastapi") API on ``host:port``: what it is and what to do."""
    where = hostport(host, port)
    api = "gRPC" if server == "grpc" else "FastAPI (HTTP)"
    if not accepts(host, port):
        return Answer(False, f"{where}: refuses connections", "no server listens there: the container is not "
                      "running, still loading the model (the runtime opens its port after loading), or exited",
                      "cvload bootstrap logs server (the container's output); then cvload bootstrap up")
    try:
        asyncio.run(_open(_target(host, port, server)))
    except CvloadError as exc:
        text = exc.message
        if "Triton server" in text:
            return Answer(False, f"{where}: {TRITON}", text,
                          "point the deployment at the runtime's port ([runtime] port, default 50000), or "
                          "diagnose that Triton server with `cvload bootstrap doctor --target trtllm`")
        return Answer(False, f"{where}: not CosyVoice's runtime {api} server", text,
                      f"check [runtime] server (grpc or fastapi) matches what listens on port {port}")
    return Answer(True, f"{where}: CosyVoice's runtime {api} server answers")
