"""What the gRPC and FastAPI targets of CosyVoice's Python runtime share: request kinds, options, audio forms.

The runtime (``runtime/python/grpc`` and ``runtime/python/fastapi`` of CosyVoice, port 50000) calls the model
without ``stream=True``, so each response piece is one whole sentence of raw int16 PCM, mono, with no header
and no sample rate: the rate is the model's (24000 Hz CosyVoice2/3, 22050 Hz CosyVoice-300M) and cvload takes
it from ``--sample-rate`` (default 24000). Prompts travel as 16 kHz int16 (raw over gRPC, a WAV file over HTTP).
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cvload.errors import UsageError
from cvload.results.records import ERR_PROTOCOL, ERR_REJECTED
from cvload.targets import checks
from cvload.targets.base import Samples, SynthesisRequest, Target, TargetError

if TYPE_CHECKING:
    from cvload.settings.config import RunConfig
    from cvload.settings.transport import Transport

DEFAULT_SAMPLE_RATE = 24000  # CosyVoice2/3; upstream's clients assume 22050 (CosyVoice-300M)
DEFAULT_SPK_ID = "中文女"  # the speaker upstream's clients ask for
PROMPT_RATE = 16000
KINDS_WITH_PROMPT = ("zero_shot", "cross_lingual", "instruct2")
KINDS_WITH_INSTRUCTION = ("instruct", "instruct2")
GRPC_KINDS = ("sft", "zero_shot", "cross_lingual", "instruct")  # the proto has no instruct2
REJECTED_HINT = "the server refuses requests past its --max_conc: raise it, or send fewer streams"


@dataclass(frozen=True)
class RuntimeOptions:
    """The run's request settings for this API (``--inference``, ``--spk-id``, ``--instruct-text``,
    ``--sample-rate``)."""

    inference: str | None = None  # None: zero_shot for items with a prompt, sft for those without
    spk_id: str = DEFAULT_SPK_ID
    instruct_text: str | None = None
    sample_rate: int = DEFAULT_SAMPLE_RATE

    @classmethod
    def of(cls, config: RunConfig | None, protocol: str) -> RuntimeOptions:
        """From a RunConfig (or None: defaults), checked for ``protocol``."""
        opts = cls() if config is None else cls(
            inference=config.inference, spk_id=config.spk_id or DEFAULT_SPK_ID, instruct_text=config.instruct_text,
            sample_rate=config.sample_rate or DEFAULT_SAMPLE_RATE)
        opts.check(protocol)
        return opts

    def check(self, protocol: str) -> None:
        """A kind the protocol lacks or a missing instruction is a UsageError, before the first request."""
        if protocol == "grpc" and self.inference not in (None, *GRPC_KINDS):
            raise UsageError(f"--inference {self.inference}: the runtime's gRPC service has no such request "
                             f"(it has {', '.join(GRPC_KINDS)})",
                             hint="use --protocol http (the FastAPI server has /inference_instruct2)")
        if self.inference in KINDS_WITH_INSTRUCTION and not self.instruct_text:
            raise UsageError(f"--inference {self.inference} needs --instruct-text TEXT (the style instruction)")

    def kind(self, request: SynthesisRequest) -> str:
        """The request kind of one request; a kind that needs a prompt fails an item without one."""
        kind = self.inference or ("zero_shot" if request.reference_wav is not None else "sft")
        if kind in KINDS_WITH_PROMPT and request.reference_wav is None:
            raise TargetError(ERR_PROTOCOL, f"item {request.item_id or request.request_id!r} has no prompt audio: "
                              f"--inference {kind} needs one (use inputs with prompts, or sft/instruct)")
        return kind


class Int16Audio:
    """Raw little-endian int16 PCM as it came off the wire: counted by its length, decoded on demand."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def count(self) -> int:
        return len(self.data) // 2

    def decode(self) -> Samples:
        if len(self.data) % 2:
            raise TargetError(ERR_PROTOCOL, f"audio of {len(self.data)} bytes is not whole int16 samples")
        return np.frombuffer(self.data, dtype="<i2").astype(np.float32) / 32768.0


def pcm16(wav: Samples) -> bytes:
    """Float samples (-1..1) as raw little-endian int16, as the runtime's clients send prompts."""
    return (np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_file(pcm: bytes, sample_rate: int = PROMPT_RATE) -> bytes:
    """A mono 16-bit WAV file around raw PCM (the FastAPI server reads its prompt with a WAV loader)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return out.getvalue()


class PromptForms:
    """A prompt's wire forms (raw int16, WAV file), made once per prompt array and kept for the run."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: dict[int, tuple[Samples, bytes, bytes | None]] = {}

    def _entry(self, wav: Samples) -> tuple[Samples, bytes, bytes | None]:
        entry = self._entries.get(id(wav))
        if entry is None or entry[0] is not wav:
            if len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            entry = self._entries[id(wav)] = (wav, pcm16(wav), None)
        return entry

    def raw(self, wav: Samples) -> bytes:
        return self._entry(wav)[1]

    def wav(self, wav: Samples) -> bytes:
        entry = self._entry(wav)
        if entry[2] is None:
            entry = self._entries[id(wav)] = (entry[0], entry[1], wav_file(entry[1]))
        assert entry[2] is not None
        return entry[2]


class RuntimeTarget(Target):
    """What the gRPC and the FastAPI target share: whole sentences as chunks, the options checked for the
    protocol, the sample rate the PCM answers come at, and the prompts' wire forms."""

    mode = "sentence"  # one response per whole sentence: the runtime has no streaming of its own

    def __init__(self, address: str, model: str = "cosyvoice2", *, timeout: float | None = None,
                 options: RuntimeOptions | None = None, transport: Transport | None = None) -> None:
        super().__init__(checks.check_address(address, self.protocol), model, timeout=timeout, transport=transport)
        self.options = options or RuntimeOptions()
        self.options.check(self.protocol)
        self.sample_rate = self.options.sample_rate
        self._prompts = PromptForms()


def rejected(detail: str) -> TargetError:
    return TargetError(ERR_REJECTED, f"server at its concurrency cap ({detail}); {REJECTED_HINT}")


def api_of_routes(paths: Any) -> str | None:
    """Which server API an OpenAPI ``paths`` listing belongs to: ``cosyvoice`` (the runtime's FastAPI routes),
    ``openai`` (``/v1/audio/speech``) or None."""
    if not isinstance(paths, dict):
        return None
    if any(str(p).startswith("/inference_") for p in paths):
        return "cosyvoice"
    if any(str(p).rstrip("/").endswith("/audio/speech") for p in paths):
        return "openai"
    return None
