"""What the HTTP targets share: their sessions (per event loop, no gzip) and the words for a failed connection."""

from __future__ import annotations

import asyncio

import aiohttp

from cvload.settings.transport import Transport
from cvload.targets.per_loop import PerLoop


def http_sessions(transport: Transport) -> PerLoop[aiohttp.ClientSession]:
    """A session per event loop, made again once closed. No gzip: compressing audio costs server CPU and latency,
    and every client here is local."""
    return PerLoop(lambda: transport.http_session({"Accept-Encoding": "identity"}), lambda s: s.close(),
                   usable=lambda s: not s.closed)


def describe(exc: BaseException, not_http: str) -> str:
    """A connection failure in words; ``not_http`` guesses why an answer was not HTTP/1.1 (a gRPC port, mostly)."""
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ClientResponseError) and "status line" in str(exc.message):
        return f"the answer is not HTTP/1.1 ({not_http})"
    return str(exc) or type(exc).__name__
