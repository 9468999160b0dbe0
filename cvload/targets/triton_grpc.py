"""Triton over gRPC: streaming (decoupled model, one shared bidirectional stream) and offline (ModelInfer).

Built on the generated stubs (``tritonclient.grpc.service_pb2*``) on ``grpc.aio`` rather than
``tritonclient.grpc.aio``: its ``stream_infer`` cannot ask for ``triton_enable_empty_final_response``, and
without it a request's end is only visible as the end of its own stream, which costs a stream per request.
A streaming request that times out cannot be cancelled on the server (Triton cancels whole streams, not one
request on them): cvload stops waiting and drops its late responses. A request that may be abandoned
(``--barge-in``) goes on a stream of its own, whose cancellation cancels it alone. Offline requests carry their deadline to
the server, which cancels them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from cvload.results.records import ERR_CONNECTION, ERR_PROTOCOL, ERR_SERVER, ERR_TIMEOUT
from cvload.settings.transport import Transport
from cvload.targets import checks
from cvload.targets.base import Chunk, Samples, SynthesisRequest, Target, TargetError, TargetInfo
from cvload.targets.grpc_errors import CHANNEL_OPTIONS, TRANSPORT_CODES, error_kind
from cvload.targets.grpc_stream import TIMED_OUT, SharedStream
from cvload.targets.per_loop import PerLoop
from cvload.targets.proto_dict import message_to_dict
from cvload.targets.tensors import WAVEFORM, Prompt, PromptCache, Tensor, bytes_tensor
from cvload.targets.triton_options import TritonOptions

_SERVICE = "/inference.GRPCInferenceService/"
STREAM_SHARE = 8  # requests in flight per shared stream before another stream opens
MAX_STREAMS = 32


def decode_waveform(response: Any) -> Samples:
    """The ``waveform`` tensor of a ModelInferResponse as float32, a view on the received bytes (no copy)."""
    outputs = response.outputs
    index = next((i for i, output in enumerate(outputs) if output.name == WAVEFORM), None)
    if index is None:
        names = ", ".join(o.name for o in outputs) or "none"
        raise TargetError(ERR_PROTOCOL, f"response has no {WAVEFORM} tensor (outputs: {names})")
    output = outputs[index]
    if output.datatype != "FP32":
        raise TargetError(ERR_PROTOCOL, f"{WAVEFORM} is {output.datatype}, expected FP32")
    count = int(np.prod(output.shape)) if len(output.shape) else 1
    raw_contents = response.raw_output_contents
    if index < len(raw_contents):
        raw = raw_contents[index]
        if len(raw) != 4 * count:
            raise TargetError(ERR_PROTOCOL, f"{WAVEFORM} has {len(raw)} bytes for shape {list(output.shape)} "
                              f"({4 * count} expected)")
        return np.frombuffer(raw, dtype="<f4")
    values = output.contents.fp32_contents
    if len(values) != count:
        raise TargetError(ERR_PROTOCOL, f"{WAVEFORM} holds {len(values)} values for shape {list(output.shape)}")
    return np.asarray(values, dtype=np.float32)


def _serialize(message: Any) -> bytes:
    """Requests go out as the bytes ``_TritonGrpc._request`` already built (or as a message, serialized here)."""
    return message if message.__class__ is bytes else message.SerializeToString()


class _Connection:
    """A channel, its stub and (for streaming) the shared streams, all bound to one event loop; ``metadata``
    goes with every call (the run's headers).

    The two inference methods take requests already serialized: a request is its small per-request head
    joined to the prompt's tensors serialized once (``_TritonGrpc._request``), instead of the prompt's
    samples being copied into a new message and serialized again for every request, on the event loop.
    """

    def __init__(self, address: str, transport: Transport) -> None:
        self.channel = transport.grpc_channel(address, CHANNEL_OPTIONS)
        self.metadata = transport.grpc_metadata
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.stream_infer = self.channel.stream_stream(
            _SERVICE + "ModelStreamInfer", request_serializer=_serialize,
            response_deserializer=pb.ModelStreamInferResponse.FromString)
        self.infer = self.channel.unary_unary(
            _SERVICE + "ModelInfer", request_serializer=_serialize, response_deserializer=pb.ModelInferResponse.FromString)
        self.streams: list[SharedStream] = []
        self.streams_opened = 0
        self.own_streams = 0  # streams of one request each (requests that may be abandoned, --barge-in)

    async def close(self) -> None:
        streams, self.streams = self.streams, []
        await asyncio.gather(*(stream.close() for stream in streams))
        await self.channel.close()


class _TritonGrpc(Target):
    protocol = "grpc"

    def __init__(self, address: str, model: str = "cosyvoice2", *, timeout: float | None = None,
                 options: TritonOptions | None = None, transport: Transport | None = None) -> None:
        super().__init__(checks.check_address(address, "grpc"), model, timeout=timeout, transport=transport)
        self.options = options or TritonOptions()  # read where used: --requests-per-stream (streaming)
        self._connections = PerLoop(lambda: _Connection(self.address, self.transport), lambda c: c.close())
        self._prompts = PromptCache()
        # Serialized prompt tensors (reference_wav, reference_wav_len, reference_text) by (prompt, transcript).
        self._prompt_wires: dict[tuple[int, str], tuple[Prompt, bytes]] = {}
        self._id_prefix = f"cvload-{uuid.uuid4().hex[:8]}-"
        self._ids = itertools.count()

    # ---- connection --------------------------------------------------------------------------------------
    async def _open(self) -> TargetInfo:
        connection = self._connections.get()
        stub, metadata = connection.stub, connection.metadata
        deadline = time.monotonic() + checks.OPEN_TIMEOUT_S

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        try:
            server = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=left(), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # gRPC, but no Triton service
                raise checks.other_api(self.address, "gRPC", "cosyvoice") from None
            refusal = await self.transport.grpc_refusal(self.address, exc)  # TLS or token
            if refusal is not None:
                raise refusal from None
            raise checks.unreachable(self.address, "gRPC", f"{exc.code().name}: {exc.details()}") from None
        try:
            reply = await stub.ModelConfig(pb.ModelConfigRequest(name=self.model), timeout=left(),
                                           metadata=metadata)
        except grpc.aio.AioRpcError:
            raise await self._missing_model(stub, left()) from None
        try:
            ready = await stub.ModelReady(pb.ModelReadyRequest(name=self.model), timeout=left(), metadata=metadata)
        except grpc.aio.AioRpcError:
            raise await self._missing_model(stub, left()) from None
        if not ready.ready:
            raise await self._missing_model(stub, left())
        config = message_to_dict(reply.config)
        checks.check_tensors(config, self.model, self.address)
        decoupled = checks.decoupled_of(config)
        checks.check_mode(self.mode, decoupled, self.model, self.address, "grpc")
        return TargetInfo(address=self.address, protocol=self.protocol, mode=self.mode, model=self.model,
                          decoupled=decoupled, server_version=server.version, model_config=config)

    async def _missing_model(self, stub: Any, timeout: float) -> Exception:
        """Not ready (listed in the repository) or unknown (listed with the server's models)."""
        try:
            index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=timeout,
                                               metadata=self._connections.get().metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in TRANSPORT_CODES:
                return checks.unreachable(self.address, "gRPC", f"{exc.code().name}: {exc.details()}")
            return checks.unknown_model(self.model, self.address, None)
        for entry in index.models:
            if entry.name == self.model:
                return checks.not_ready(self.model, self.address, entry.state, entry.reason)
        return checks.unknown_model(self.model, self.address, [(m.name, m.state) for m in index.models])

    async def statistics(self) -> dict[str, Any] | None:
        connection = self._connections.get()
        reply = await self._unary(connection.stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=10.0,
                                                                  metadata=connection.metadata), "statistics")
        return message_to_dict(reply)

    async def trace_setting(self, update: dict[str, list[str]] | None = None) -> dict[str, list[str]] | None:
        connection = self._connections.get()
        request = pb.TraceSettingRequest()
        for key, values in (update or {}).items():
            request.settings[key].value.extend(values)
        reply = await self._unary(connection.stub.TraceSetting(request, timeout=10.0, metadata=connection.metadata),
                                  "trace setting")
        return {key: list(value.value) for key, value in reply.settings.items()}

    async def _unary(self, call: Any, what: str) -> Any:
        """Await a unary call; a call cancelled because its channel closed (a reconnect probe dropped the
        connection, the target was closed) is a connection error, not a cancellation of the caller: grpcio raises
        CancelledError for both, and one escaping a run's closing statistics read ended the run with a traceback."""
        try:
            return await call
        except asyncio.CancelledError:
            task = asyncio.current_task()
            cancelling = getattr(task, "cancelling", None)  # Python 3.11+; before it, pass every cancellation on
            if task is None or cancelling is None or cancelling():
                raise
            raise TargetError(ERR_CONNECTION, f"gRPC {what} call to {self.address} ended: its connection was "
                                              "closed") from None

    async def close(self) -> None:
        await self._connections.close()

    # ---- requests ----------------------------------------------------------------------------------------
    def _request(self, request: SynthesisRequest, request_id: str) -> bytes:
        """The serialized ModelInferRequest: a head (model, id, parameters, target_text) joined to the prompt's
        tensors serialized once per prompt. Serialized messages concatenate as a merge, repeated fields in
        order, so ``inputs`` and ``raw_input_contents`` stay in step: target_text first, then the prompt's."""
        head = pb.ModelInferRequest(model_name=self.model, id=request_id)
        if self.mode == "streaming":
            head.parameters["triton_enable_empty_final_response"].bool_param = True
        tensors = [bytes_tensor("target_text", request.target_text)]
        if request.reference_wav is None and request.reference_text is not None:
            tensors.append(bytes_tensor("reference_text", request.reference_text))
        _add_tensors(head, tensors)
        wire: bytes = head.SerializeToString()  # (tritonclient's messages carry no types)
        return wire if request.reference_wav is None else wire + self._prompt_wire(request)

    def _prompt_wire(self, request: SynthesisRequest) -> bytes:
        assert request.reference_wav is not None
        prompt = self._prompts.get(request.reference_wav, request.pad_to_samples)
        key = (id(prompt), request.reference_text or "")
        entry = self._prompt_wires.get(key)
        if entry is None or entry[0] is not prompt:
            part = pb.ModelInferRequest()
            _add_tensors(part, [*prompt.tensors(), bytes_tensor("reference_text", request.reference_text or "")])
            if len(self._prompt_wires) >= self._prompts.size:
                self._prompt_wires.pop(next(iter(self._prompt_wires)))
            entry = self._prompt_wires[key] = (prompt, part.SerializeToString())
        return entry[1]

    def _request_id(self, request: SynthesisRequest) -> str:
        return request.request_id or f"{self._id_prefix}{next(self._ids)}"

    def _wire(self, request: SynthesisRequest) -> tuple[str, bytes]:
        """The request id and the serialized request: built before the send time when the caller prepares it."""
        if request.wire is not None:
            wire: tuple[str, bytes] = request.wire  # what prepare() built with this method
            return wire
        request_id = self._request_id(request)
        return request_id, self._request(request, request_id)


def _add_tensors(message: Any, tensors: list[Tensor]) -> None:
    inputs, contents = message.inputs, message.raw_input_contents
    for tensor in tensors:
        inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        contents.append(tensor.raw)


class TritonGrpcStreaming(_TritonGrpc):
    """Decoupled model over long-lived ``ModelStreamInfer`` streams shared by up to ``STREAM_SHARE`` requests."""

    mode = "streaming"

    @property
    def streams_opened(self) -> int:
        """How many streams this loop's connection opened (one per ``STREAM_SHARE`` requests in flight at
        most, and another each time the server went away)."""
        connection = self._connections.current()
        return connection.streams_opened if connection is not None else 0

    def _stream(self) -> SharedStream:
        """The usable shared stream with the fewest requests, or a new one when each carries ``STREAM_SHARE``.

        One stream for every request would cost each its opening; one stream for all serialises every
        response through one reader (a receive at a time) and every request through one writer: at 64
        streams, responses that arrive together were stamped one loop turn after another, up to ~7 ms late.
        """
        connection = self._connections.get()
        if any(stream.finished for stream in connection.streams):
            connection.streams = [stream for stream in connection.streams if not stream.finished]
        # Streams at their --requests-per-stream (half-closed, delivering their last responses) or broken stay
        # listed until they end, so closing the connection closes them too; new requests go to usable ones.
        streams = [stream for stream in connection.streams if stream.usable]
        best = min(streams, key=lambda stream: len(stream.inboxes), default=None)
        if best is None or (len(best.inboxes) >= STREAM_SHARE and len(streams) < MAX_STREAMS):
            best = SharedStream(lambda: connection.stream_infer(metadata=connection.metadata), self.address,
                                max_requests=self.options.requests_per_stream)
            connection.streams.append(best)
            connection.streams_opened += 1
        return best

    def _own_stream(self) -> SharedStream:
        """A stream for one request that may be abandoned (``SynthesisRequest.own_call``): Triton cancels whole
        streams, so cancelling this call cancels that request alone. Closed when the request ends."""
        connection = self._connections.get()
        connection.own_streams += 1
        return SharedStream(lambda: connection.stream_infer(metadata=connection.metadata), self.address)

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[Chunk]:
        request_id, message = self._wire(request)
        stream = self._own_stream() if request.own_call else self._stream()
        inbox = stream.register(request_id)
        timer = None
        if self.timeout is not None:
            timer = stream.loop.call_later(self.timeout, inbox.put, TIMED_OUT)
        try:
            stream.send(message)
            while True:
                item = inbox.items.popleft() if inbox.items else await inbox.get()
                if item.__class__ is not tuple:
                    if item is TIMED_OUT:
                        raise TargetError(ERR_TIMEOUT, f"no final response within {self.timeout:g} s "
                                          f"(request {request_id})")
                    raise item
                t, response = item
                if response.error_message:
                    raise checks.failed_response(response.error_message)
                result = response.infer_response
                final = result.parameters.get("triton_final_response")
                is_final = final is not None and final.bool_param
                if len(result.outputs):
                    yield Chunk(t, decode_waveform(result))
                elif not is_final:
                    raise TargetError(ERR_PROTOCOL, f"a non-final response without a {WAVEFORM} tensor")
                if is_final:
                    return
        finally:
            if timer is not None:
                timer.cancel()
            stream.unregister(request_id)
            if request.own_call:  # abandoned or done: cancelling its own call tells Triton to stop
                await stream.close()


class TritonGrpcOffline(_TritonGrpc):
    """Non-decoupled model: one ``ModelInfer`` call and one response holding the whole waveform."""

    mode = "offline"

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[Chunk]:
        _, message = self._wire(request)
        connection = self._connections.get()
        try:
            # The deadline travels to the server, which cancels the request when it passes.
            response = await connection.infer(message, timeout=self.timeout, metadata=connection.metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            kind = error_kind(code)
            if kind == ERR_TIMEOUT:
                raise TargetError(ERR_TIMEOUT, f"no response within {self.timeout:g} s") from None
            if kind == ERR_SERVER:
                raise checks.failed_response(exc.details() or code.name) from None
            raise TargetError(kind, f"gRPC {self.address}: {code.name}: {exc.details()}") from None
        t = time.monotonic()
        yield Chunk(t, decode_waveform(response))
