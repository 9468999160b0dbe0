"""CosyVoice's Python runtime over HTTP: the FastAPI server's ``/inference_<kind>`` routes.

A request is a form (multipart when it carries the prompt as a WAV file, urlencoded otherwise) sent by POST;
the server also takes GET with the same form body, which is what upstream's client sends. The answer streams
raw int16 PCM with no content type and no rate. The server hands the response one whole sentence at a time and
uvicorn sends each as one HTTP chunk, so with chunked transfer a cvload chunk is one HTTP chunk, stamped when
its last byte arrives; a body without chunked transfer becomes one cvload chunk per network read. Reads do not
align with samples: an odd byte waits for the next read. Nothing is decoded on the way: the sample count is
the byte count over two.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp

from cvload.errors import ServerError, UsageError
from cvload.results.records import ERR_CONNECTION, ERR_PROTOCOL, ERR_SERVER, ERR_TIMEOUT
from cvload.settings.transport import Transport
from cvload.targets import checks
from cvload.targets.base import Chunk, SynthesisRequest, TargetError, TargetInfo
from cvload.targets.cosyvoice_common import (
    KINDS_WITH_PROMPT,
    Int16Audio,
    RuntimeOptions,
    RuntimeTarget,
    api_of_routes,
    rejected,
)
from cvload.targets.http_common import describe, http_sessions

# Why an answer may not be HTTP/1.1 (for a connection failure's message).
_NOT_HTTP = "is this the runtime's gRPC port? then use --protocol grpc"


def route(kind: str) -> str:
    return f"/inference_{kind}"


def status_error(status: int, payload: bytes, method: str, path: str) -> TargetError:
    """A refused request: 429/503 are ``rejected``; 404/405/422 name the route and the fields FastAPI named."""
    text = payload.decode("utf-8", errors="replace").strip()
    where = f"{method} {path}"
    if status in (429, 503):
        return rejected(f"HTTP {status} on {where}")
    try:
        detail = json.loads(text).get("detail") if text else None
    except (ValueError, AttributeError):
        detail = None
    if status == 422 and isinstance(detail, list):
        fields = "; ".join(
            f"field {'.'.join(str(p) for p in (d.get('loc') or [])[1:]) or '?'}: {d.get('msg', d)}"
            if isinstance(d, dict) else str(d) for d in detail)
        return TargetError(ERR_SERVER, f"HTTP 422 on {where}: the server refused the form ({fields})")
    if status == 404:
        return TargetError(ERR_SERVER, f"HTTP 404 on {where}: the server has no such route (an older runtime "
                           "without this request kind, or not CosyVoice's FastAPI server?)")
    if status == 405:
        return TargetError(ERR_SERVER, f"HTTP 405 on {where}: the route does not take {method}")
    message = detail if isinstance(detail, str) else text[:300] or "no body"
    return TargetError(ERR_SERVER, f"HTTP {status} on {where}: {message}")


class CosyVoiceHttp(RuntimeTarget):
    """``--api cosyvoice --protocol http``: the runtime's FastAPI server (``runtime/python/fastapi/server.py``);
    one HTTP chunk per whole sentence."""

    protocol = "http"
    method = "POST"

    def __init__(self, address: str, model: str = "cosyvoice2", *, timeout: float | None = None,
                 options: RuntimeOptions | None = None, transport: Transport | None = None) -> None:
        super().__init__(address, model, timeout=timeout, options=options, transport=transport)
        self.base = f"{self.transport.scheme}://{self.address}"
        self._sessions = http_sessions(self.transport)
        self._boundary = f"cvload{uuid.uuid4().hex}"
        self._multipart = f"multipart/form-data; boundary={self._boundary}"

    # ---- open ----------------------------------------------------------------------------------------------
    async def _get(self, path: str, deadline: float) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=max(0.1, deadline - time.monotonic()))
        try:
            async with self._sessions.get().get(self.base + path, timeout=timeout) as resp:
                payload = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise await self.transport.explain_error(self.address, "http", exc) or ServerError(
                f"cannot reach CosyVoice's FastAPI runtime at {self.base}: {describe(exc, _NOT_HTTP)}",
                hint="start it (runtime/python/fastapi/server.py --port 50000), check --server HOST:PORT and "
                     "--protocol (its gRPC server: --protocol grpc), or pass --emulator",
            ) from None
        if resp.status in (401, 403):  # a load balancer's token check
            raise self.transport.refused(self.base, f"HTTP {resp.status} on GET {path}")
        try:
            return resp.status, json.loads(payload) if payload else None
        except ValueError:
            return resp.status, None

    async def _open(self) -> TargetInfo:
        """Read the app's route list (FastAPI serves it at /openapi.json) to tell a runtime missing the route,
        a Triton port or an OpenAI speech server from the right server, before any load."""
        deadline = time.monotonic() + checks.OPEN_TIMEOUT_S
        status, spec = await self._get("/openapi.json", deadline)
        paths = spec.get("paths") if status == 200 and isinstance(spec, dict) else None
        looks_like = api_of_routes(paths)
        wanted = [route(self.options.inference)] if self.options.inference else [route("zero_shot"), route("sft")]
        if looks_like == "cosyvoice":
            assert isinstance(paths, dict)
            missing = [p for p in wanted if p not in paths]
            if missing:
                have = ", ".join(sorted(p for p in paths if p.startswith("/inference_")))
                raise UsageError(f"{self.base} has no {', '.join(missing)} (its routes: {have})",
                                 hint="choose another --inference, or update the server")
        elif looks_like == "openai":
            raise UsageError(f"{self.base} is an OpenAI-style speech server (/v1/audio/speech), not CosyVoice's "
                             "Python runtime", hint="use --api openai")
        else:
            status, server = await self._get("/v2", deadline)
            if status == 200 and isinstance(server, dict) and "version" in server:
                raise UsageError(f"{self.base} is a Triton server (GET /v2 answers), not CosyVoice's Python "
                                 "runtime", hint="use --api triton")
            problem = await self.transport.explain(self.address, "http")  # e.g. plain HTTP to a TLS port
            if problem is not None:
                raise problem
            # No route list and not Triton: a runtime with its docs turned off. The first request will tell.
        version = spec.get("info", {}).get("version") if isinstance(spec, dict) else None
        return TargetInfo(address=self.address, protocol=self.protocol, mode=self.mode, model=self.model,
                          server_version=version)

    # ---- requests ------------------------------------------------------------------------------------------
    def _body(self, request: SynthesisRequest, kind: str) -> tuple[bytes, str]:
        fields = {"tts_text": request.target_text}
        if kind == "zero_shot":
            fields["prompt_text"] = request.reference_text or ""
        if kind in ("sft", "instruct"):
            fields["spk_id"] = self.options.spk_id
        if kind in ("instruct", "instruct2"):
            fields["instruct_text"] = self.options.instruct_text or ""
        if kind not in KINDS_WITH_PROMPT:
            return urlencode(fields).encode(), "application/x-www-form-urlencoded"
        assert request.reference_wav is not None
        dash = f"--{self._boundary}\r\n"
        head = "".join(f'{dash}Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                       for name, value in fields.items())
        head += (f'{dash}Content-Disposition: form-data; name="prompt_wav"; filename="prompt_wav"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n")
        tail = f"\r\n--{self._boundary}--\r\n".encode()
        return b"".join((head.encode(), self._prompts.wav(request.reference_wav), tail)), self._multipart

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[Chunk]:
        kind = self.options.kind(request)
        path = route(kind)
        body, content_type = self._body(request, kind)
        clock, rate = time.monotonic, self.sample_rate
        try:
            async with self._sessions.get().request(self.method, self.base + path, data=body,
                                               headers={"Content-Type": content_type},
                                               timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                if resp.status != 200:
                    raise status_error(resp.status, await resp.read(), self.method, path)
                content = resp.content
                carry = b""
                if "chunked" in resp.headers.get("Transfer-Encoding", "").lower():
                    parts: list[bytes] = []
                    while True:
                        data, end = await content.readchunk()
                        t = clock()
                        if data:
                            parts.append(data)
                        elif not end:
                            break  # end of body
                        if end and parts:
                            whole = carry + b"".join(parts) if carry or len(parts) > 1 else parts[0]
                            parts.clear()
                            carry, whole = (whole[-1:], whole[:-1]) if len(whole) % 2 else (b"", whole)
                            if whole:
                                yield Chunk(t, Int16Audio(whole), rate)
                    if parts:  # bytes after the last chunk boundary: not expected, still audio
                        carry += b"".join(parts)
                else:
                    while True:
                        data = await content.readany()
                        t = clock()
                        if not data:
                            break
                        if carry:
                            data, carry = carry + data, b""
                        if len(data) % 2:
                            data, carry = data[:-1], data[-1:]
                        if data:
                            yield Chunk(t, Int16Audio(data), rate)
                if len(carry) % 2:
                    raise TargetError(ERR_PROTOCOL, f"{self.method} {path}: the audio ends with half a sample "
                                      "(an odd number of bytes)")
                if carry:
                    yield Chunk(clock(), Int16Audio(carry), rate)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if isinstance(exc, asyncio.TimeoutError):
                raise TargetError(ERR_TIMEOUT, f"no final response within {self.timeout:g} s") from None
            raise TargetError(ERR_CONNECTION, f"HTTP {self.address}: {describe(exc, _NOT_HTTP)}") from None

    async def close(self) -> None:
        await self._sessions.close()

