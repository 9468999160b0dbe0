"""The small interface every protocol sits behind: open, synthesize (timed chunks), close.

A target stamps ``time.monotonic()`` the moment a response arrives, before decoding it, and raises
``TargetError`` with one of the error kinds of ``cvload.results.records`` when a request fails. Between one read and the
next read's timestamp a target does only work that costs a small fraction of a millisecond: whatever costs more
(parsing a JSON float array) waits in a ``LazyAudio`` until someone needs the samples, off the measuring path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from cvload.settings.transport import Transport

Samples: TypeAlias = npt.NDArray[np.float32]  # mono float32 audio: what a chunk decodes to, a prompt as loaded


@dataclass(frozen=True)
class SynthesisRequest:
    """One synthesis: what to say and, for zero-shot, the prompt (16 kHz mono float32)."""

    request_id: str
    target_text: str
    reference_text: str | None = None
    reference_wav: Samples | None = None  # 16 kHz float32 mono, unpadded
    pad_to_samples: int | None = None  # zero-pad reference_wav to this length (upstream client behaviour)
    item_id: str = ""
    # It may be abandoned (--barge-in): send it on a call of its own, so that cancelling it cancels no other
    # request (a shared gRPC stream is cancelled whole).
    own_call: bool = False
    wire: Any = field(default=None, compare=False, repr=False)  # the target's prepared wire form (prepare())


class LazyAudio(Protocol):
    """Audio as it came off the wire, decoded only on demand (``decode`` may raise ``TargetError``)."""

    def count(self) -> int:
        """How many samples, without materialising them (cheap: a byte scan at most)."""

    def decode(self) -> Samples:
        """The float32 samples."""


class Chunk:
    """One audio chunk as it arrived: monotonic arrival time ``t`` and its samples at ``sample_rate``.

    ``audio`` is a float32 array, or a ``LazyAudio`` that turns into one on first access of ``.audio``;
    ``samples`` counts either without decoding.
    """

    __slots__ = ("t", "sample_rate", "_audio", "_lazy")

    def __init__(self, t: float, audio: Samples | LazyAudio, sample_rate: int = 24000) -> None:
        self.t = t
        self.sample_rate = sample_rate
        if isinstance(audio, np.ndarray):
            self._audio: Samples | None = audio
            self._lazy: LazyAudio | None = None
        else:
            self._audio, self._lazy = None, audio

    @property
    def decoded(self) -> bool:
        return self._audio is not None

    @property
    def audio(self) -> Samples:
        if self._audio is None:
            assert self._lazy is not None
            self._audio, self._lazy = self._lazy.decode(), None
        return self._audio

    @property
    def lazy(self) -> LazyAudio | None:
        """The audio still in wire form, or None once decoded (or when it arrived decoded)."""
        return self._lazy

    @property
    def samples(self) -> int:
        if self._audio is not None:
            return int(self._audio.size)
        assert self._lazy is not None
        return self._lazy.count()

    def __repr__(self) -> str:
        state = f"{self.samples} samples" + ("" if self.decoded else ", not decoded")
        return f"Chunk(t={self.t:.6f}, {state}, {self.sample_rate} Hz)"


class TargetError(Exception):
    """A failed request; ``kind`` is one of cvload.results.records.ERROR_KINDS.

    ``reset``: the server, or a proxy in front of it, had answered (a stream opened, response headers came) and
    then ended the request's stream or connection: it was reachable. A run whose every connection failure is
    one says so instead of calling the server unreachable.
    """

    def __init__(self, kind: str, message: str, reset: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.reset = reset

    def __reduce__(self) -> tuple[Any, ...]:  # it crosses process boundaries (cvload.measure.audio_checks)
        return TargetError, (self.kind, self.message, self.reset)


@dataclass
class TargetInfo:
    """What a target learned when it opened: for config.json and for checking the mode against the server."""

    address: str
    protocol: str
    mode: str
    model: str
    decoupled: bool | None = None
    server_version: str | None = None
    model_config: dict[str, Any] = field(default_factory=dict)


class Target(ABC):
    """One server endpoint speaking one protocol in one mode."""

    protocol: str = ""
    mode: str = ""
    # Modules of the LazyAudio this target's chunks carry, when a helper process should decode them
    # (cvload.measure.audio_checks starts those processes before a run and imports these modules there).
    lazy_audio_modules: tuple[str, ...] = ()

    def __init__(self, address: str, model: str = "cosyvoice2", *, timeout: float | None = None,
                 transport: Transport | None = None) -> None:
        self.address = address
        self.model = model
        self.timeout = timeout
        self.transport = transport or Transport()  # TLS and headers (cvload.settings.transport)

    async def open(self) -> TargetInfo:
        """Connect and check the server; on failure release what was opened before raising."""
        try:
            return await self._open()
        except BaseException:
            await self.close()
            raise

    @abstractmethod
    async def _open(self) -> TargetInfo:
        """Connect, read the model config and fail with a ``CvloadError`` the user can act on when the server,
        the model or the mode is wrong (e.g. offline HTTP infer against a decoupled model)."""

    def prepare(self, request: SynthesisRequest) -> SynthesisRequest:
        """The request with its wire form (body, message) built, for ``synthesize``: the engine calls this
        before it stamps the send time, so building a megabyte-sized body is not counted as latency.
        ``synthesize`` builds the wire form itself for a request that was not prepared."""
        wire = self._wire(request)
        return request if wire is None else replace(request, wire=wire)

    def _wire(self, request: SynthesisRequest) -> Any:
        """What ``prepare`` builds; None: nothing worth building ahead."""
        return None

    @abstractmethod
    def synthesize(self, request: SynthesisRequest) -> AsyncIterator[Chunk]:
        """Yield chunks as they arrive; end after the final response; raise TargetError on failure."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    async def statistics(self) -> dict[str, Any] | None:
        """Per-model inference statistics (Triton statistics API), if the server has them."""
        return None

    async def trace_setting(self, update: dict[str, list[str]] | None = None) -> dict[str, list[str]] | None:
        """Triton's request-trace settings (trace API), after ``update`` where given; None where the server has
        no such API."""
        return None
