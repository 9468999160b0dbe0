"""Triton over HTTP: offline ``POST /v2/models/{m}/infer`` and streaming ``POST /v2/models/{m}/generate_stream``.

Offline sends the prompt audio and asks for the waveform through the binary tensor extension
(``Inference-Header-Content-Length``): JSON floats cost far more to print and parse than the audio is worth.
A server that answers in plain JSON is read too. Streaming reads server-sent events, one per chunk, each
stamped when its last byte arrives. An event carries its chunk as a JSON float array (about 1 MB of text for
2 s of audio): parsing that on the event loop held the loop for ~20 ms per event and stamped every other
stream's bytes late. So the stream reader only looks at the event's head (where the array starts) and its end,
and checks the small rest of the event; the array stays in the reads it arrived in (joining a megabyte per event
was itself a quarter of the measuring loop's work at 64 streams) and the floats are parsed later, off the
measuring path, by whoever needs them (``JsonAudio``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import pickle
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
import orjson

from cvload.errors import ServerError
from cvload.results.records import ERR_CONNECTION, ERR_PROTOCOL, ERR_TIMEOUT
from cvload.settings.transport import Transport
from cvload.targets import checks, sse
from cvload.targets.base import Chunk, Samples, SynthesisRequest, Target, TargetError, TargetInfo
from cvload.targets.cosyvoice_common import api_of_routes
from cvload.targets.http_common import describe, http_sessions
from cvload.targets.sse import Parts, SseParser
from cvload.targets.tensors import WAVEFORM, PromptCache, request_tensors
from cvload.targets.triton_options import TritonOptions

HEADER_LENGTH = "Inference-Header-Content-Length"
# A request's TCP connect must succeed within this (a host that drops SYNs), whatever --request-timeout says.
CONNECT_TIMEOUT_S = 10.0

# Why an answer may not be HTTP/1.1 (for a connection failure's message).
_NOT_HTTP = "is this Triton's gRPC port? then use --protocol grpc"


def error_text(payload: bytes, status: int) -> str:
    """Triton's ``{"error": ...}`` message (plain JSON or one SSE event), else the body itself."""
    text = payload.decode("utf-8", errors="replace").strip()
    body = text[5:].strip() if text.startswith("data:") else text
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {status}: {message or text[:300] or 'no body'}"


def decode_infer_response(payload: bytes, header_length: str | None) -> Samples:
    """The waveform of an ``infer`` response: binary (a view on the body, no copy) or JSON ``data``."""
    try:
        offset = int(header_length) if header_length is not None else len(payload)
        if not 0 <= offset <= len(payload):
            raise ValueError(f"{HEADER_LENGTH} {offset} for a {len(payload)}-byte body")
        header = orjson.loads(payload[:offset])
        outputs = header["outputs"]
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise TypeError("outputs is not a list of objects")
    except (ValueError, KeyError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise TargetError(ERR_PROTOCOL, f"unreadable infer response: {exc}") from None
    for output in outputs:
        parameters = output.get("parameters")
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise TargetError(ERR_PROTOCOL, f"output {output.get('name')!r} has binary_data_size {size!r}")
        if output.get("name") != WAVEFORM:
            offset += size or 0
            continue
        if output.get("datatype") != "FP32":
            raise TargetError(ERR_PROTOCOL, f"{WAVEFORM} is {output.get('datatype')}, expected FP32")
        count = _element_count(output.get("shape"))
        if size is not None:
            if size != 4 * count or offset + size > len(payload):
                raise TargetError(ERR_PROTOCOL, f"{WAVEFORM} binary data of {size} bytes does not fit shape "
                                  f"{output.get('shape')} and a {len(payload)}-byte body")
            return np.frombuffer(payload, dtype="<f4", count=count, offset=offset)
        data = output.get("data")
        if not isinstance(data, list):
            raise TargetError(ERR_PROTOCOL, f"{WAVEFORM} has neither binary nor JSON data")
        return _float_array(data, count)
    names = ", ".join(str(o.get("name")) for o in outputs) or "none"
    raise TargetError(ERR_PROTOCOL, f"response has no {WAVEFORM} tensor (outputs: {names})")


_ARRAY_KEY = b'"%s":[' % WAVEFORM.encode()
_HEAD_BYTES = 4096  # the waveform key comes after the id and model name, well within this
_SLICE_BYTES = 1 << 16  # JsonAudio parses this much at a time: the GIL is never held for long


class JsonAudio:
    """An event's JSON float array, bytes ``start`` to ``end`` of its data (``parts``, the pieces of the reads it
    arrived in, never joined on the measuring path), parsed only when the samples are needed.

    It pickles as its parts and offsets (``portable``), so the audio checks can parse it in a helper process
    instead of beside the event loop. Parsing runs in slices of ``_SLICE_BYTES`` (~0.1 ms each), so a thread
    decoding it in the measuring process holds the interpreter lock only briefly at a time. The reader checked
    only the event's head and end: an array that is not the event's last member (a ``]`` inside) is found here,
    and the event is then parsed whole (``decode_event``).
    """

    __slots__ = ("parts", "start", "end")
    portable = True  # cheap to pickle and decodable anywhere: cvload.measure.audio_checks may decode it in a process

    def __init__(self, parts: Parts | bytes, start: int = 0, end: int | None = None) -> None:
        self.parts: Parts = [parts] if isinstance(parts, bytes) else parts
        self.start = start
        self.end = sse.size(self.parts) if end is None else end

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # Protocol 5: the parts travel out of band, written from where they lie (no copy into the pickle).
        parts = [pickle.PickleBuffer(p) if protocol >= 5 else bytes(p) for p in self.parts]
        return JsonAudio, (parts, self.start, self.end)

    @property
    def text(self) -> bytes:
        """The array's text (a copy: off the measuring path)."""
        return b"".join(sse.views(self.parts, self.start, self.end))

    def count(self) -> int:
        commas, blank, bracket = 0, True, False
        for view in sse.views(self.parts, self.start, self.end):
            text = np.frombuffer(view, dtype=np.uint8)
            commas += int(np.count_nonzero(text == 0x2C))
            blank = blank and not np.any(text > 0x20)
            bracket = bracket or bool(np.any(text == 0x5D))
        if bracket:  # the event's own layout decides; malformed, it fails its request's check, not this count
            with contextlib.suppress(TargetError):
                return int(self.decode().size)
        return 0 if blank else commas + 1

    def decode(self) -> Samples:
        text = self.text
        if b"]" in text:  # not the event's last member: the event's own layout decides
            return decode_event(b"".join(self.parts))
        parts, start, size = [], 0, len(text)
        while start < size:
            end = text.find(b",", start + _SLICE_BYTES) if start + _SLICE_BYTES < size else -1
            end = size if end < 0 else end
            try:
                parts.append(_float_array(orjson.loads(b"[" + text[start:end] + b"]"), None))
            except orjson.JSONDecodeError as exc:
                raise TargetError(ERR_PROTOCOL, f"{WAVEFORM} is not a JSON array of numbers: {exc}") from None
            start = end + 1
        if not parts:
            return np.zeros(0, np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def read_event(payload: Parts | bytes) -> Samples | JsonAudio:
    """One ``generate_stream`` event, checked but not parsed: its waveform as ``JsonAudio`` (or, for an event
    of an unexpected layout, decoded at once), or the server's error as a TargetError.

    Cost: its first few kilobytes copied and parsed without the array, and its last two bytes looked at,
    whatever the chunk's size: the array's bytes are neither read nor copied here.
    """
    parts: Parts = [payload] if isinstance(payload, bytes) else payload
    head = sse.head(parts, _HEAD_BYTES)
    key = head.find(_ARRAY_KEY)
    if key >= 0 and sse.tail(parts, 2) == b"]}":
        first, close = key + len(_ARRAY_KEY), sse.size(parts) - 2
        if first <= close:
            try:
                rest = orjson.loads(head[:first] + b"]}")
            except orjson.JSONDecodeError:
                rest = None
            if isinstance(rest, dict):
                if "error" in rest:
                    raise checks.failed_response(str(rest["error"]))
                return JsonAudio(parts, first, close)
    return decode_event(b"".join(parts))


def decode_event(payload: bytes) -> Samples:
    """One ``generate_stream`` event parsed whole: its waveform, or the server's error as a TargetError."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise TargetError(ERR_PROTOCOL, f"unreadable server-sent event ({exc}): {payload[:100]!r}") from None
    if not isinstance(event, dict):
        raise TargetError(ERR_PROTOCOL, f"server-sent event is not a JSON object: {payload[:100]!r}")
    if "error" in event:
        raise checks.failed_response(str(event["error"]))
    data = event.get(WAVEFORM)
    if not isinstance(data, list):
        raise TargetError(ERR_PROTOCOL, f"server-sent event without a {WAVEFORM} array (keys: "
                          f"{', '.join(event) or 'none'})")
    return _float_array(data, None)


def _element_count(shape: Any) -> int:
    """The number of elements of a JSON tensor shape (non-negative integers), or a protocol error."""
    if not shape:
        return 0
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise TargetError(ERR_PROTOCOL, f"{WAVEFORM} has shape {str(shape)[:80]}, not a list of sizes")
    return math.prod(shape)


def _float_array(data: list[Any], count: int | None) -> Samples:
    try:
        with np.errstate(over="ignore"):  # beyond float32: inf, which the audio check flags as non-finite
            audio = np.asarray(data, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise TargetError(ERR_PROTOCOL, f"{WAVEFORM} is not an array of numbers: {exc}") from None
    if count is not None and audio.size != count:
        raise TargetError(ERR_PROTOCOL, f"{WAVEFORM} holds {audio.size} values, its shape says {count}")
    return audio


class _TritonHttp(Target):
    protocol = "http"

    def __init__(self, address: str, model: str = "cosyvoice2", *, timeout: float | None = None,
                 options: TritonOptions | None = None, transport: Transport | None = None) -> None:
        super().__init__(checks.check_address(address, "http"), model, timeout=timeout, transport=transport)
        self.options = options or TritonOptions()
        self.base = f"{self.transport.scheme}://{self.address}"
        self._model_path = f"/v2/models/{quote(model, safe='')}"
        self._sessions = http_sessions(self.transport)
        self._prompts = PromptCache()
        self._id_prefix = f"cvload-{uuid.uuid4().hex[:8]}-"
        self._ids = itertools.count()

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.timeout, sock_connect=CONNECT_TIMEOUT_S)

    def _request_id(self, request: SynthesisRequest) -> str:
        return request.request_id or f"{self._id_prefix}{next(self._ids)}"

    # ---- open ----------------------------------------------------------------------------------------------
    async def _call(self, method: str, path: str, deadline: float) -> tuple[int, Any]:
        """A small JSON call of open(); an unreachable server becomes the user-facing ServerError."""
        timeout = aiohttp.ClientTimeout(total=max(0.1, deadline - time.monotonic()))
        try:
            async with self._sessions.get().request(method, self.base + path, timeout=timeout,
                                               json={} if method == "POST" else None) as resp:
                payload = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise await self.transport.explain_error(self.address, "http", exc) or checks.unreachable(
                self.address, "HTTP", describe(exc, _NOT_HTTP)) from None
        if resp.status in (401, 403):  # a load balancer's token check
            raise self.transport.refused(self.base, f"HTTP {resp.status} on {method} {path}")
        try:
            return resp.status, json.loads(payload) if payload else None
        except ValueError:
            return resp.status, payload.decode("utf-8", errors="replace")

    async def _open(self) -> TargetInfo:
        deadline = time.monotonic() + checks.OPEN_TIMEOUT_S
        status, server = await self._call("GET", "/v2", deadline)
        if status != 200 or not isinstance(server, dict) or "version" not in server:
            _, spec = await self._call("GET", "/openapi.json", deadline)  # FastAPI apps list their routes there
            api = api_of_routes(spec.get("paths") if isinstance(spec, dict) else None)
            if api is not None:
                raise checks.other_api(self.address, "HTTP", api)
            raise await self.transport.explain(self.address, "http") or ServerError(
                f"{self.base} answered GET /v2 with HTTP {status}: not a Triton server",
                hint="check --server HOST:PORT (Triton serves HTTP on port 8000 by default) and --protocol",
            )
        status, config = await self._call("GET", f"{self._model_path}/config", deadline)
        if status != 200 or not isinstance(config, dict):
            raise await self._missing_model(deadline)
        status, _ = await self._call("GET", f"{self._model_path}/ready", deadline)
        if status != 200:
            raise await self._missing_model(deadline)
        checks.check_tensors(config, self.model, self.address)
        decoupled = checks.decoupled_of(config)
        checks.check_mode(self.mode, decoupled, self.model, self.address, "http")
        return TargetInfo(address=self.address, protocol=self.protocol, mode=self.mode, model=self.model,
                          decoupled=decoupled, server_version=server.get("version"), model_config=config)

    async def _missing_model(self, deadline: float) -> Exception:
        status, index = await self._call("POST", "/v2/repository/index", deadline)
        if status != 200 or not isinstance(index, list):
            return checks.unknown_model(self.model, self.address, None)
        for entry in index:
            if entry.get("name") == self.model:
                return checks.not_ready(self.model, self.address, entry.get("state", ""), entry.get("reason", ""))
        return checks.unknown_model(self.model, self.address,
                                    [(str(e.get("name")), str(e.get("state", ""))) for e in index])

    async def statistics(self) -> dict[str, Any] | None:
        async with self._sessions.get().get(f"{self.base}/v2/models/stats",
                                       timeout=aiohttp.ClientTimeout(total=10.0)) as resp:
            resp.raise_for_status()
            stats = await resp.json()
        return stats if isinstance(stats, dict) else None  # the API answers an object: anything else is none

    async def trace_setting(self, update: dict[str, list[str]] | None = None) -> dict[str, list[str]] | None:
        session, url = self._sessions.get(), f"{self.base}/v2/trace/setting"
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with (session.get(url, timeout=timeout) if update is None else
                    session.post(url, json={k: v if k == "trace_level" else v[0] for k, v in update.items()},
                                 timeout=timeout)) as resp:
            if resp.status >= 400:
                raise RuntimeError(f"{url}: HTTP {resp.status} {(await resp.text())[:200]}")
            reply: dict[str, Any] = await resp.json()
        return {key: value if isinstance(value, list) else [str(value)] for key, value in reply.items()}

    async def close(self) -> None:
        await self._sessions.close()

    def _failure(self, exc: BaseException, *, answered: bool = False) -> TargetError:
        """``answered``: the response's headers had come (a connection failure then is a reset)."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):  # also a TimeoutError: the connect, not the answer
            return TargetError(ERR_CONNECTION, f"HTTP {self.address}: no connection within {CONNECT_TIMEOUT_S:g} s")
        if isinstance(exc, asyncio.TimeoutError):
            return TargetError(ERR_TIMEOUT, f"no final response within {self.timeout:g} s")
        return TargetError(ERR_CONNECTION, f"HTTP {self.address}: {describe(exc, _NOT_HTTP)}", reset=answered)


class TritonHttpOffline(_TritonHttp):
    """``POST /v2/models/{m}/infer``: text as JSON, prompt audio and waveform as binary tensors."""

    mode = "offline"

    def _wire(self, request: SynthesisRequest) -> tuple[bytes, int]:
        return request.wire if request.wire is not None else self._body(request)

    def _body(self, request: SynthesisRequest) -> tuple[bytes, int]:
        inputs: list[dict[str, Any]] = []
        binary: list[bytes] = []
        for tensor in request_tensors(request, self._prompts):
            entry: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
            if tensor.text is not None:
                entry["data"] = [tensor.text]
            else:
                entry["parameters"] = {"binary_data_size": len(tensor.raw)}
                binary.append(tensor.raw)
            inputs.append(entry)
        header = json.dumps({
            "id": self._request_id(request),
            "inputs": inputs,
            "outputs": [{"name": WAVEFORM, "parameters": {"binary_data": True}}],
        }).encode()
        return header + b"".join(binary), len(header)

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[Chunk]:
        body, header_length = self._wire(request)
        headers = {HEADER_LENGTH: str(header_length), "Content-Type": "application/octet-stream"}
        try:
            async with self._sessions.get().post(f"{self.base}{self._model_path}/infer", data=body, headers=headers,
                                            timeout=self._timeout()) as resp:
                payload = await resp.read()
                t = time.monotonic()
                status, returned_length = resp.status, resp.headers.get(HEADER_LENGTH)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._failure(exc) from None
        if status != 200:
            raise checks.failed_response(error_text(payload, status))
        yield Chunk(t, decode_infer_response(payload, returned_length))


class TritonHttpStreaming(_TritonHttp):
    """``POST /v2/models/{m}/generate_stream``: inputs as JSON keys, one server-sent event per chunk."""

    mode = "streaming"
    lazy_audio_modules = (__name__,)  # JsonAudio chunks: parsed by cvload.measure.audio_checks' helper processes

    def _wire(self, request: SynthesisRequest) -> bytes:
        return request.wire if request.wire is not None else self._body(request)

    def _body(self, request: SynthesisRequest) -> bytes:
        # One copy of the (cached) prompt JSON, which can be a megabyte, made in prepare(): before the send time.
        head = f'{{"id": {json.dumps(self._request_id(request))}, "target_text": {json.dumps(request.target_text)}'
        if request.reference_wav is not None:
            prompt = self._prompts.get(request.reference_wav, request.pad_to_samples)
            head += f', "reference_text": {json.dumps(request.reference_text or "")}, "reference_wav": '
            return b"".join((head.encode(), prompt.json, f', "reference_wav_len": [{prompt.length}]}}'.encode()))
        if request.reference_text is not None:
            head += f', "reference_text": {json.dumps(request.reference_text)}'
        return (head + "}").encode()

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[Chunk]:
        url = f"{self.base}{self._model_path}/generate_stream"
        clock = time.monotonic
        answered = False
        try:
            async with self._sessions.get().post(url, data=self._wire(request), timeout=self._timeout(),
                                            headers={"Content-Type": "application/json"}) as resp:
                answered = True
                if resp.status != 200:
                    raise checks.failed_response(error_text(await resp.read(), resp.status))
                parser = SseParser()
                content = resp.content
                while True:
                    data = await content.readany()
                    t = clock()
                    if not data:
                        break
                    for payload in parser.feed(data):
                        yield Chunk(t, read_event(payload))
                t = clock()
                for payload in parser.finish():
                    yield Chunk(t, _last_event(payload))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._failure(exc, answered=answered) from None


def _last_event(payload: Parts) -> Samples | JsonAudio:
    """An event the stream ended without its closing blank line: whole, it counts; cut short, the connection
    broke mid-event (a server that died while writing it), which is not the server's answer."""
    try:
        return read_event(payload)
    except TargetError as exc:
        if exc.kind != ERR_PROTOCOL:
            raise
        raise TargetError(ERR_CONNECTION, f"the stream ended inside an event ({sse.size(payload)} bytes of it "
                          f"came): {exc.message}", reset=True) from None

