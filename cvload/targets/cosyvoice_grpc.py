"""CosyVoice's Python runtime over gRPC: ``cosyvoice.CosyVoice/Inference``, one request, a stream of sentences.

Each request is its own server-streaming call on one shared channel (HTTP/2 streams are cheap; the runtime
has no ids to share a stream by). Each ``Response`` carries one whole sentence as raw int16 PCM: the reader
stamps it the moment gRPC hands it over and keeps the message as it is; the samples are counted by its length
and converted later, off the measuring path. The server refuses calls past its ``--max_conc`` with
RESOURCE_EXHAUSTED, counted as ``rejected``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import numpy as np

from cvload.cosyvoice_runtime import cosyvoice_pb2 as pb
from cvload.errors import ServerError, UsageError
from cvload.results.records import ERR_CONNECTION, ERR_PROTOCOL, ERR_REJECTED, ERR_SERVER, ERR_TIMEOUT
from cvload.settings.transport import Transport
from cvload.targets import checks
from cvload.targets.base import Chunk, Samples, SynthesisRequest, TargetError, TargetInfo
from cvload.targets.cosyvoice_common import RuntimeOptions, RuntimeTarget, rejected
from cvload.targets.grpc_errors import CHANNEL_OPTIONS, TRANSPORT_CODES, error_kind
from cvload.targets.per_loop import PerLoop

INFERENCE = "/cosyvoice.CosyVoice/Inference"
TRITON_LIVE = "/inference.GRPCInferenceService/ServerLive"


class ResponseAudio:
    """A ``Response`` message as received; its ``tts_audio`` bytes are read out only when counted or decoded."""

    __slots__ = ("message",)

    def __init__(self, message: pb.Response) -> None:
        self.message = message

    def count(self) -> int:
        return len(self.message.tts_audio) // 2

    def decode(self) -> Samples:
        data = self.message.tts_audio
        if len(data) % 2:
            raise TargetError(ERR_PROTOCOL, f"tts_audio of {len(data)} bytes is not whole int16 samples")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


class _Connection:
    def __init__(self, address: str, transport: Transport) -> None:
        self.channel = transport.grpc_channel(address, CHANNEL_OPTIONS)
        self.metadata = transport.grpc_metadata  # the run's headers, sent with every call
        # The one method of the generated CosyVoiceStub, made as it makes it (grpcio-tools writes it untyped).
        self.inference = self.channel.unary_stream(INFERENCE, request_serializer=pb.Request.SerializeToString,
                                                   response_deserializer=pb.Response.FromString)


class CosyVoiceGrpc(RuntimeTarget):
    """``--api cosyvoice --protocol grpc``: the runtime's gRPC server (``runtime/python/grpc/server.py``)."""

    protocol = "grpc"

    def __init__(self, address: str, model: str = "cosyvoice2", *, timeout: float | None = None,
                 options: RuntimeOptions | None = None, transport: Transport | None = None) -> None:
        super().__init__(address, model, timeout=timeout, options=options, transport=transport)
        self._connections = PerLoop(lambda: _Connection(self.address, self.transport), lambda c: c.channel.close())

    async def _open(self) -> TargetInfo:
        """Check that the service is there without synthesizing anything: a request the server cannot parse is
        refused by grpcio before the servicer runs (INTERNAL), a server without the service says UNIMPLEMENTED."""
        connection = self._connections.get()
        channel = connection.channel
        deadline = time.monotonic() + checks.OPEN_TIMEOUT_S
        probe = channel.unary_stream(INFERENCE)  # no serializers: bytes as they are
        try:
            async for _ in probe(b"\xff", timeout=max(0.1, deadline - time.monotonic()),
                                 metadata=connection.metadata):
                break
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise await self._not_runtime(channel, deadline) from None
            refusal = await self.transport.grpc_refusal(self.address, exc)  # TLS or token
            if refusal is not None:
                raise refusal from None
            if code in TRANSPORT_CODES:
                raise ServerError(
                    f"cannot reach CosyVoice's gRPC runtime at {self.address}: {code.name}: {exc.details()}",
                    hint="start it (runtime/python/grpc/server.py --port 50000), check --server HOST:PORT and "
                         "--protocol (its FastAPI server speaks HTTP: --protocol http), or pass --emulator",
                ) from None
            # INTERNAL (the probe could not be parsed: the service is there) or RESOURCE_EXHAUSTED (there, busy)
        return TargetInfo(address=self.address, protocol=self.protocol, mode=self.mode, model=self.model)

    async def _not_runtime(self, channel: grpc.aio.Channel, deadline: float) -> UsageError:
        try:
            await channel.unary_unary(TRITON_LIVE)(b"", timeout=max(0.1, deadline - time.monotonic()),
                                                   metadata=self._connections.get().metadata)
        except grpc.aio.AioRpcError:
            return UsageError(f"{self.address} answers gRPC but has no cosyvoice.CosyVoice service (UNIMPLEMENTED)",
                              hint="point --server at CosyVoice's Python runtime (port 50000 by default)")
        return UsageError(f"{self.address} is a Triton server, not CosyVoice's Python runtime (it has Triton's "
                          "inference service and no cosyvoice.CosyVoice)", hint="use --api triton")

    def _message(self, request: SynthesisRequest) -> pb.Request:
        kind = self.options.kind(request)
        text = request.target_text
        if kind == "sft":
            return pb.Request(sft_request=pb.sftRequest(spk_id=self.options.spk_id, tts_text=text))
        if kind == "zero_shot":
            assert request.reference_wav is not None
            return pb.Request(zero_shot_request=pb.zeroshotRequest(
                tts_text=text, prompt_text=request.reference_text or "",
                prompt_audio=self._prompts.raw(request.reference_wav)))
        if kind == "cross_lingual":
            assert request.reference_wav is not None
            return pb.Request(cross_lingual_request=pb.crosslingualRequest(
                tts_text=text, prompt_audio=self._prompts.raw(request.reference_wav)))
        return pb.Request(instruct_request=pb.instructRequest(
            tts_text=text, spk_id=self.options.spk_id, instruct_text=self.options.instruct_text or ""))

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[Chunk]:
        message = self._message(request)
        connection = self._connections.get()
        call = connection.inference(message, timeout=self.timeout, metadata=connection.metadata)
        read, clock, eof, rate = call.read, time.monotonic, grpc.aio.EOF, self.sample_rate
        try:
            while True:
                response = await read()
                t = clock()  # stamp first: the audio is counted and converted after the final response
                if response is eof:
                    break
                yield Chunk(t, ResponseAudio(response), rate)
        except grpc.aio.AioRpcError as exc:
            raise self._failure(exc) from None
        finally:
            if not call.done():
                call.cancel()

    def _failure(self, exc: grpc.aio.AioRpcError) -> TargetError:
        code, details = exc.code(), exc.details()
        status = f"{code.name}: {details}"
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return TargetError(ERR_SERVER, f"{self.address} has no {INFERENCE} ({status}): is it a Triton port? "
                               "then use --api triton")
        kind = error_kind(code)
        if kind == ERR_REJECTED:
            return rejected(f"gRPC {status}")
        if kind == ERR_TIMEOUT:
            return TargetError(ERR_TIMEOUT, f"no final response within {self.timeout:g} s")
        if kind == ERR_CONNECTION:
            return TargetError(ERR_CONNECTION, f"gRPC {self.address}: {status}")
        return TargetError(ERR_SERVER, f"gRPC {status}")

    async def close(self) -> None:
        await self._connections.close()
