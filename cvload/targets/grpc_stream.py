"""A long-lived Triton ``ModelStreamInfer`` call shared by several streaming requests of a target on one loop.

Opening a gRPC stream per request costs ~0.8 ms of first-chunk latency, so requests share bidirectional
streams (a few requests each, see ``TritonGrpcStreaming._stream``): each carries a unique id, one reader task
per stream stamps every response the moment gRPC hands it over and routes it by id to that request's inbox. When
the stream breaks (server died), or cvload drops its connection to reconnect, every request still on it fails
with kind ``connection``; a stream the server ends cleanly fails them with ``no_final``. The next request opens
a new stream.

A stream may carry a bounded number of requests (``max_requests``, ``--requests-per-stream``): after the last
one it is half-closed, the server ends it once their responses are out, and the next request opens another.
Proxies count a whole HTTP/2 stream as one request body (nginx's ``client_max_body_size``, 1 MB by default):
a stream reset after more than ``PROXY_SUSPECT_BYTES`` were sent on it says so (``PROXY_BODY_LIMIT``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import grpc

from cvload.results.records import ERR_CONNECTION, ERR_NO_FINAL, PROXY_BODY_LIMIT
from cvload.targets.base import TargetError
from cvload.targets.grpc_errors import error_kind

# What an inbox holds: (arrival time, ModelStreamInferResponse), a TargetError, or TIMED_OUT.
TIMED_OUT = object()
_HALF_CLOSE = object()  # in the outbox after a stream's last request: the writer half-closes the call
GRPC_FRAME_BYTES = 5  # each gRPC message's prefix on the wire (a flag and a length)
# A stream reset (not UNAVAILABLE: the server is there) after more than this was sent on it: a proxy's request-body
# limit (nginx's client_max_body_size is 1 MB by default; a larger one is met later, by the same rule).
PROXY_SUSPECT_BYTES = 1024 * 1024


class Inbox:
    """A request's queue of responses: cheaper than asyncio.Queue, one waiter at most."""

    __slots__ = ("items", "waiter", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.items: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.loop = loop

    def put(self, item: Any) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        items = self.items
        while not items:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return items.popleft()


class SharedStream:
    """A ``ModelStreamInfer`` call, its reader and writer tasks, and the inboxes of the requests on it.

    Writes go through one writer task, never from the request's own task: gRPC cancels the whole call when a
    pending write is cancelled, so a request cancelled mid-send (Ctrl-C, a caller's timeout) would otherwise
    fail every other request on the stream. gRPC also allows only one pending write per call.
    """

    def __init__(self, open_call: Any, address: str, *, max_requests: int = 0) -> None:
        """``open_call()`` starts the ``ModelStreamInfer`` call (a ``grpc.aio`` stream-stream method, the run's
        headers bound as its metadata); ``max_requests``: requests it carries before it is half-closed (0: no
        bound)."""
        self.address = address
        self.loop = asyncio.get_running_loop()
        self.call = open_call()
        self.inboxes: dict[str, Inbox] = {}
        self.broken: TargetError | None = None
        self.max_requests = max_requests
        self.requests_sent = 0
        self.bytes_sent = 0  # gRPC messages handed to the call, prefixes included
        self._closing = False
        self._outbox = Inbox(self.loop)
        self._reader = self.loop.create_task(self._read())
        self._writer = self.loop.create_task(self._write())

    @property
    def usable(self) -> bool:
        """Open for another request: not broken, not closing, not at its ``max_requests``."""
        return (self.broken is None and not self._closing
                and not (self.max_requests and self.requests_sent >= self.max_requests))

    @property
    def finished(self) -> bool:
        """Its reader ended (broken, closed, or ended by the server after the half-close)."""
        return self._reader.done()

    def register(self, request_id: str) -> Inbox:
        if request_id in self.inboxes:
            raise ValueError(f"request id {request_id!r} is already in flight on this stream: ids must be unique")
        inbox = self.inboxes[request_id] = Inbox(self.loop)
        return inbox

    def unregister(self, request_id: str) -> None:
        # Responses still coming for it (after a timeout) are dropped by the reader: nobody waits for them.
        self.inboxes.pop(request_id, None)

    def send(self, message: Any) -> None:
        """Queue a request for the writer; a failure to write reaches the request through its inbox."""
        if self.broken is not None:
            raise TargetError(self.broken.kind, self.broken.message)
        self._outbox.put(message)
        self.requests_sent += 1
        if self.max_requests and self.requests_sent >= self.max_requests:
            self._outbox.put(_HALF_CLOSE)

    async def _write(self) -> None:
        outbox, write = self._outbox, self.call.write
        try:
            while True:
                message = outbox.items.popleft() if outbox.items else await outbox.get()
                if message is _HALF_CLOSE:
                    await self.call.done_writing()
                    return
                self.bytes_sent += GRPC_FRAME_BYTES + (len(message) if message.__class__ is bytes
                                                       else message.ByteSize())
                await write(message)
        except asyncio.CancelledError:
            return
        except grpc.aio.AioRpcError as exc:
            self._fail(self._broke(exc))
        except Exception as exc:  # noqa: BLE001 - e.g. InvalidStateError: the call ended, the reader knows why
            await asyncio.wait([self._reader], timeout=1.0)
            self._fail(TargetError(ERR_CONNECTION, f"gRPC stream to {self.address} closed: {exc!r}"))

    async def _read(self) -> None:
        read = self.call.read
        route = self.inboxes.get
        clock = time.monotonic
        eof = grpc.aio.EOF
        try:
            while True:
                response = await read()
                t = clock()  # stamp first: decoding happens later, in the request's own task
                if response is eof:
                    break
                inbox = route(response.infer_response.id)
                if inbox is not None:
                    inbox.put((t, response))
        except asyncio.CancelledError:
            self._fail(self._closed())
            return
        except grpc.aio.AioRpcError as exc:
            if self._closing and exc.code() == grpc.StatusCode.CANCELLED:
                self._fail(self._closed())
            else:
                self._fail(self._broke(exc))
            return
        except Exception as exc:  # noqa: BLE001 - never leave requests waiting on a dead reader
            self._fail(TargetError(ERR_CONNECTION, f"gRPC stream to {self.address} failed: {exc!r}"))
            return
        self._fail(TargetError(ERR_NO_FINAL, f"the server ({self.address}) ended the gRPC stream before the "
                               "final response"))

    def _closed(self) -> TargetError:
        """Requests still on the stream when cvload closed it: that happens only when its connection is dropped
        to dial the server afresh (a request of the target failed to connect; the reconnect probe's failed
        ``open()`` closes the connection), so they are the outage's victims, ``connection`` failures counted in
        the totals. The user's stop never ends here: it cancels each request in the engine (``cancelled``)."""
        return TargetError(ERR_CONNECTION, f"gRPC stream to {self.address} dropped with its connection after the "
                                           "server stopped answering")

    def _fail(self, error: TargetError) -> None:
        """Mark the stream broken and fail every request on it."""
        if self.broken is None:
            self.broken = error
        for inbox in list(self.inboxes.values()):
            inbox.put(TargetError(error.kind, error.message, reset=error.reset))
        self.inboxes.clear()
        if not self._writer.done() and asyncio.current_task() is not self._writer:
            self._writer.cancel()

    async def close(self) -> None:
        self._closing = True
        self.call.cancel()
        self._writer.cancel()
        await asyncio.wait([self._reader, self._writer], timeout=2.0)
        if not self._reader.done():
            self._reader.cancel()


    def _broke(self, exc: grpc.aio.AioRpcError) -> TargetError:
        """The error of a stream that broke (``connection`` unless its status says otherwise): a reset after
        more than ``PROXY_SUSPECT_BYTES`` sent on it, while the server is reachable (not UNAVAILABLE), names the
        proxy's body limit and the ways around it."""
        what = f"{exc.code().name}: {exc.details()}"
        kind = error_kind(exc.code(), ERR_CONNECTION)
        reset = exc.code() != grpc.StatusCode.UNAVAILABLE  # a status from the other end: it was there
        if self.bytes_sent > PROXY_SUSPECT_BYTES and reset:
            return TargetError(kind, f"gRPC stream to {self.address} was reset after "
                               f"{self.bytes_sent / 1e6:.1f} MB were sent on it ({what}): {PROXY_BODY_LIMIT}",
                               reset=True)
        return TargetError(kind, f"gRPC stream to {self.address} broke: {what}", reset=reset)
