"""OpenAI-style speech: ``POST {base}/v1/audio/speech`` with ``{model, input, voice, response_format}``.

``pcm`` is raw int16 mono with no header and no rate (24 kHz unless ``--sample-rate``), streamed with chunked
transfer by servers that stream; ``wav`` is one RIFF file whose header gives the rate and where the samples
start. A chunk is one HTTP chunk of a chunked response, stamped when its last byte arrives (a server's write can
reach us in several network reads, and counting reads would make chunk gaps of a few microseconds), or one network
read of a response with a length. Samples never align with reads or HTTP chunks: an odd byte waits for the
next one. Bytes are only counted on the measuring path (``len // 2``); they become floats when someone asks.

A bearer token comes from ``--header``/``--header-file``/``CVLOAD_HEADERS`` or the ``OPENAI_API_KEY``
environment variable (``cvload.settings.transport``), and is written to no results file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
import orjson

from cvload.apis import api_spec
from cvload.errors import ServerError, UsageError
from cvload.results.records import (
    ERR_CONNECTION,
    ERR_NO_FINAL,
    ERR_PROTOCOL,
    ERR_REJECTED,
    ERR_SERVER,
    ERR_TIMEOUT,
)
from cvload.settings.address import parse
from cvload.settings.transport import Transport
from cvload.targets import checks
from cvload.targets.base import Chunk, Samples, SynthesisRequest, Target, TargetError, TargetInfo
from cvload.targets.http_common import describe

if TYPE_CHECKING:
    from cvload.settings.config import RunConfig

API_KEY_ENV = api_spec("openai").token_env
DEFAULT_SAMPLE_RATE = 24000  # OpenAI's pcm; CosyVoice2/3 speak at 24 kHz too
PROBE_TEXT = "Hello."
REJECTED = (429, 503)

# Why an answer may not be HTTP/1.1 (for a connection failure's message).
_NOT_HTTP = "a gRPC port? the OpenAI-style API is HTTP"


class PcmAudio:
    """Little-endian PCM bytes (int16, or float32 from a WAV that says so), decoded on demand."""

    __slots__ = ("data", "dtype")

    def __init__(self, data: bytes, dtype: str = "<i2") -> None:
        self.data = data
        self.dtype = dtype

    def count(self) -> int:
        return len(self.data) // (2 if self.dtype == "<i2" else 4)

    def decode(self) -> Samples:
        if len(self.data) % np.dtype(self.dtype).itemsize:
            raise TargetError(ERR_PROTOCOL, f"audio of {len(self.data)} bytes is not whole {self.dtype} samples")
        audio = np.frombuffer(self.data, dtype=self.dtype)
        return audio.astype(np.float32) / 32768.0 if self.dtype == "<i2" else audio.astype(np.float32)


class WavHeader:
    """Reads a RIFF/WAVE header as its bytes arrive: ``feed`` returns the sample bytes after it (or None while
    the header is incomplete); ``rate`` and ``dtype`` are set once the ``fmt`` chunk has been read."""

    def __init__(self) -> None:
        self._buffer = b""
        self.rate: int | None = None
        self.dtype = "<i2"
        self.done = False

    def feed(self, data: bytes) -> bytes | None:
        buffer = self._buffer + data
        if len(buffer) < 12:
            self._buffer = buffer
            return None
        if buffer[:4] != b"RIFF" or buffer[8:12] != b"WAVE":
            raise TargetError(ERR_PROTOCOL, f"response_format wav: the body is not a RIFF/WAVE file "
                              f"(starts {buffer[:12]!r})")
        pos = 12
        while pos + 8 <= len(buffer):
            tag, size = buffer[pos:pos + 4], int.from_bytes(buffer[pos + 4:pos + 8], "little")
            if tag == b"data":
                if self.rate is None:
                    raise TargetError(ERR_PROTOCOL, "response_format wav: data chunk before the fmt chunk")
                self.done, self._buffer = True, b""
                return buffer[pos + 8:]  # the size may be 0 or 0xFFFFFFFF in a streamed WAV: read to the end
            if pos + 8 + size > len(buffer):
                break
            if tag == b"fmt ":
                self._format(buffer[pos + 8:pos + 8 + size])
            pos += 8 + size + (size & 1)
        self._buffer = buffer
        return None

    def _format(self, fmt: bytes) -> None:
        if len(fmt) < 16:
            raise TargetError(ERR_PROTOCOL, f"response_format wav: fmt chunk of {len(fmt)} bytes")
        code, channels = int.from_bytes(fmt[0:2], "little"), int.from_bytes(fmt[2:4], "little")
        rate, bits = int.from_bytes(fmt[4:8], "little"), int.from_bytes(fmt[14:16], "little")
        if code == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real code opens the sub-format GUID
            code = int.from_bytes(fmt[24:26], "little")
        if channels != 1 or (code, bits) not in ((1, 16), (3, 32)):
            raise TargetError(ERR_PROTOCOL, f"response_format wav: {channels} channel(s), format {code}, {bits} "
                              "bits; cvload reads mono 16-bit PCM or 32-bit float")
        if rate <= 0:
            raise TargetError(ERR_PROTOCOL, f"response_format wav: sample rate {rate} in the header")
        self.rate, self.dtype = rate, "<i2" if code == 1 else "<f4"


def error_detail(payload: bytes) -> tuple[str, str | None]:
    """(message, field) of an error body: OpenAI's ``{"error": {"message", "param"}}``, FastAPI's 422
    ``{"detail": [{"loc": [..., field], "msg"}]}`` or ``{"detail": "..."}``, else the text itself."""
    text = payload.decode("utf-8", errors="replace").strip()
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return text[:300] or "no body", None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error), (str(error["param"]) if error.get("param") else None)
        if isinstance(error, str):
            return error, None
        detail = body.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            loc = [str(p) for p in detail[0].get("loc") or [] if p not in ("body", "query")]
            messages = "; ".join(f"{'.'.join(str(p) for p in d.get('loc') or [])}: {d.get('msg')}"
                                 for d in detail if isinstance(d, dict))
            return messages, ".".join(loc) or None
        if detail is not None:
            return str(detail), None
    return text[:300], None


@dataclass(frozen=True)
class SpeechOptions:
    """The run's request settings for this API (``--voice``, ``--response-format``, ``--sample-rate``,
    ``--instruct-text``)."""

    voice: str | None = None
    response_format: str = "pcm"
    sample_rate: int = DEFAULT_SAMPLE_RATE  # of pcm, which says no rate (a WAV header says its own)
    instructions: str | None = None

    @classmethod
    def of(cls, config: RunConfig | None, protocol: str = "http") -> SpeechOptions:
        """From a RunConfig (None: the defaults)."""
        if config is None:
            return cls()
        return cls(voice=config.voice, response_format=config.response_format or "pcm",
                   sample_rate=config.sample_rate or DEFAULT_SAMPLE_RATE, instructions=config.instruct_text)


class OpenAISpeech(Target):
    """One OpenAI-style speech endpoint; ``address`` is its full URL (``cvload.settings.address.speech_url``)."""

    protocol = "http"

    def __init__(self, address: str, model: str = "cosyvoice2", *, timeout: float | None = None,
                 options: SpeechOptions | None = None, transport: Transport | None = None) -> None:
        super().__init__(address, model, timeout=timeout, transport=transport or Transport.of(token_env=API_KEY_ENV))
        if self.transport.tls and address.startswith("http://"):
            address = "https://" + address[len("http://"):]
        self.url = address
        self.base = address.split("://", 1)[0] + "://" + str(parse(address, paths=True, default_port=80))
        self.options = options = options or SpeechOptions()
        self.voice = options.voice
        self.response_format = options.response_format
        self.sample_rate = options.sample_rate
        self.instructions = options.instructions
        self.mode = "streaming" if self.response_format == "pcm" else "offline"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self.transport.http_session({"Content-Type": "application/json",
                                                         "Accept-Encoding": "identity"})
        return self._session

    def _body(self, text: str) -> bytes:
        body: dict[str, Any] = {"model": self.model, "input": text, "response_format": self.response_format}
        if self.voice is not None:
            body["voice"] = self.voice
        if self.instructions is not None:
            body["instructions"] = self.instructions
        return orjson.dumps(body)

    # ---- open: one short synthesis proves route, token, model, voice and format before any load ----------
    async def _open(self) -> TargetInfo:
        timeout = aiohttp.ClientTimeout(total=max(checks.OPEN_TIMEOUT_S, self.timeout or 0.0),
                                        sock_connect=checks.OPEN_TIMEOUT_S)
        try:
            async with self._client().post(self.url, data=self._body(PROBE_TEXT), timeout=timeout) as resp:
                payload = await resp.read()
                status, server = resp.status, resp.headers.get("Server")
                chunked = resp.headers.get("Transfer-Encoding", "").lower() == "chunked"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise await self.transport.explain_error(self.url, "http", exc) or ServerError(
                f"cannot reach an OpenAI-style speech endpoint at {self.url}: {describe(exc, _NOT_HTTP)}",
                hint="start the server, check --server (HOST:PORT or http://HOST:PORT[/v1]), or pass --emulator "
                     "to run against the embedded emulator") from None
        if status != 200:
            raise await self._refusal(status, payload)
        if self.response_format == "wav":
            header = WavHeader()
            if header.feed(payload) is None:
                raise ServerError(f"{self.url} answered response_format wav without a complete WAV header")
        elif len(payload) < 2:
            raise ServerError(f"{self.url} answered {PROBE_TEXT!r} with {len(payload)} bytes of pcm: no audio")
        return TargetInfo(address=self.url, protocol=self.protocol, mode=self.mode, model=self.model,
                          server_version=server,
                          model_config={"api": "openai", "url": self.url, "voice": self.voice,
                                        "response_format": self.response_format, "chunked": chunked,
                                        "sample_rate": header.rate if self.response_format == "wav"
                                        else self.sample_rate})

    async def _refusal(self, status: int, payload: bytes) -> Exception:
        """The user-facing error for a non-200 answer of the probe."""
        message, field = error_detail(payload)
        if status == 400 and not self.transport.tls:  # e.g. nginx: "plain HTTP request sent to HTTPS port"
            problem = await self.transport.explain(self.url, "http")
            if problem is not None:
                return problem
        if status in (401, 403):
            return self.transport.refused(self.url, f"HTTP {status}: {message}", token_env=API_KEY_ENV)
        if status == 404:
            return await self._not_found(message)
        if status in (400, 422):
            flag = {"voice": "--voice", "model": "--model", "response_format": "--response-format",
                    "instructions": "--instruct-text"}.get(field or "")
            what = f"field {field!r}" if field else "the request"
            return UsageError(f"{self.url} rejected {what} (HTTP {status}: {message})",
                              hint=f"check {flag}" if flag else "check --model, --voice and --response-format")
        if status in REJECTED:
            return ServerError(f"{self.url} refused a single request (HTTP {status}: {message}): the server is "
                               "at its concurrency cap before the run started", hint="wait for other clients")
        return ServerError(f"{self.url} answered a short synthesis with HTTP {status}: {message}")

    async def _not_found(self, message: str) -> Exception:
        """HTTP 404 for the route: say which API the server looks like (Triton, CosyVoice's FastAPI runtime)."""
        route = self.url[len(self.base):]
        looks = await self._which_api()
        return UsageError(f"{self.base} has no route POST {route} (HTTP 404: {message})"
                          + (f"; it looks like {looks[0]}" if looks else ""),
                          hint=looks[1] if looks else "give the route's prefix or full path in --server, e.g. "
                          "http://HOST:PORT/v1 or http://HOST:PORT/tts/speech")

    async def _which_api(self) -> tuple[str, str] | None:
        timeout = aiohttp.ClientTimeout(total=2.0)
        session = self._client()
        try:
            async with session.get(f"{self.base}/v2/health/ready", timeout=timeout) as resp:
                if resp.status == 200:
                    return ("a Triton server (GET /v2/health/ready answers 200)",
                            "use --api triton --protocol http for its HTTP port")
            async with session.get(f"{self.base}/openapi.json", timeout=timeout) as resp:
                if resp.status == 200 and b"/inference_sft" in await resp.read():
                    return ("CosyVoice's FastAPI runtime (it serves /inference_sft)",
                            "use --api cosyvoice --protocol http")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- the measured request ------------------------------------------------------------------------------
    def _failure(self, exc: BaseException) -> TargetError:
        if isinstance(exc, asyncio.TimeoutError):
            return TargetError(ERR_TIMEOUT, f"no end of the response within {self.timeout:g} s")
        if isinstance(exc, aiohttp.ClientPayloadError):
            return TargetError(ERR_NO_FINAL, f"{self.url} ended the response before its last byte: {exc}")
        return TargetError(ERR_CONNECTION, f"HTTP {self.url}: {describe(exc, _NOT_HTTP)}")

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[Chunk]:
        clock = time.monotonic
        wav = self.response_format == "wav"
        header = WavHeader() if wav else None
        rate, dtype, width = self.sample_rate, "<i2", 2
        try:
            async with self._client().post(self.url, data=self._body(request.target_text),
                                           timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                if resp.status != 200:
                    raise _status_error(resp.status, await resp.read())
                content = resp.content
                by_http_chunk = resp.headers.get("Transfer-Encoding", "").lower() == "chunked"
                carry = b""  # bytes of an incomplete sample, and of an HTTP chunk not yet complete
                while True:
                    data, end_of_chunk = await content.readchunk()
                    t = clock()
                    if not data and not end_of_chunk:
                        break  # end of the body
                    if header is not None and not header.done:
                        samples = header.feed(data)
                        if samples is None or header.rate is None:  # the header is incomplete (done: it has a rate)
                            continue
                        data, rate, dtype = samples, header.rate, header.dtype
                        width = 2 if dtype == "<i2" else 4
                    if carry:
                        data = carry + data
                    if by_http_chunk and not end_of_chunk:
                        carry = data
                        continue
                    whole = len(data) - len(data) % width
                    if whole:
                        carry = data[whole:]
                        yield Chunk(t, PcmAudio(data[:whole] if carry else data, dtype), rate)
                    else:
                        carry = data
                if header is not None and not header.done:
                    raise TargetError(ERR_PROTOCOL, "response_format wav: the body ended inside the WAV header")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._failure(exc) from None


def _status_error(status: int, payload: bytes) -> TargetError:
    message, field = error_detail(payload)
    if status in REJECTED:
        return TargetError(ERR_REJECTED, f"HTTP {status}: server at its concurrency cap ({message}); lower "
                           "--num-tasks/--rate or raise the server's limit")
    where = f" (field {field!r})" if field else ""
    return TargetError(ERR_SERVER, f"HTTP {status}{where}: {message}")

