"""Latency profiles of the CosyVoice emulator: how fast the pretend LLM and vocoder are, and what goes wrong.

A profile is fixed per server start and travels to the Triton model as JSON in its config parameters.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields

from cvload.errors import UsageError

VOICES = ("speech", "tone", "espeak")


@dataclass(frozen=True)
class Profile:
    """Timing and fault knobs; every duration in seconds.

    The streaming schedule mirrors CosyVoice2 on Triton: speech tokens at 25 per second of audio, chunks of
    ``first_hop_tokens`` tokens growing by ``hop_growth`` (25, 50, 100, ...), each chunk vocoded by ONE shared
    vocoder worker (the single token2wav instance), so latency grows with concurrency the way it does on a GPU.
    """

    name: str = "custom"
    # LLM: time to first token, then tokens per second for one request; each further request in the LLM slows
    # every request by ``llm_batch_slowdown`` (in-flight batching is cheap but not free).
    llm_prefill_s: float = 0.0
    # Added to the time to first token for each other request in flight (a busy server admits a new request
    # later: TRT-LLM's context phase competing with the batch's decoding, the front model's queue).
    llm_prefill_per_active_s: float = 0.0
    llm_tokens_per_s: float = 0.0  # 0 = instant
    llm_batch_slowdown: float = 0.0
    lookahead_tokens: int = 3
    # Vocoder (token2wav): one shared worker, each chunk costs base + per_token * tokens.
    vocoder_base_s: float = 0.0
    vocoder_per_token_s: float = 0.0
    # Which queued vocoder job goes next: "fifo" (first queued) or "oldest" (the job of the earliest request, so
    # requests in progress finish before a new one gets its first chunk).
    vocoder_priority: str = "fifo"
    # Chunk schedule in speech tokens.
    first_hop_tokens: int = 25
    hop_growth: float = 2.0
    max_hop_tokens: int = 400
    # Ground-truth mode: first chunk exactly ``fixed_first_s`` after arrival, then one every ``fixed_interval_s``.
    fixed_first_s: float | None = None
    fixed_interval_s: float | None = None
    # Multiplicative log-normal jitter on every delay (sigma of the log); 0 = none.
    jitter: float = 0.0
    # Faults.
    error_rate: float = 0.0  # share of requests answered with an error response
    stall_prob: float = 0.0  # share of requests that stall once mid-stream
    stall_s: float = 0.0
    crash_after: int = 0  # kill the server process when request N arrives (0 = never)
    # A server that keeps generating a request its client cancelled (abandoned, timed out) to the end: the waste
    # barge-in load exposes (cvload/load/barge_in.py). Default: cancellation is honoured between stages.
    ignore_cancel: bool = False
    # Audio: "speech" (the text spoken: hibari for English, espeak-ng's library for Chinese, fitted to the
    # emulated duration and cached; docs/emulator.md), "tone" (a speech-like synthetic signal, for pure timing
    # work) or "espeak" (the espeak-ng program's own speech and length, when installed).
    voice: str = "speech"
    seed: int = 0  # 0: timing jitter differs run to run; garbling is seeded by it either way
    # Content faults on purpose (speech voice): above this many requests in flight, responses carry another
    # request's audio, lose words or drown in noise (a share (n - N) / n of them, chosen by the seed); None: never.
    garble_above: int | None = None
    leading_silence_s: float = 0.0  # quiet before the speech in the first chunk (the stream grows by as much)
    speech_cache: str = ""  # where spoken texts are kept ("": CVLOAD_SPEECH_CACHE or ~/.cache/cvload/speech)
    # Pipeline emulator (--pipeline): the deployment's instance counts and batch size (the bootstrap's
    # bls_instance_num, token2wav instances, triton_max_batch_size) and the costs of the once-per-request models.
    bls_instances: int = 4  # cosyvoice2 instances: each works on one request at a time, as upstream's front
    token2wav_instances: int = 1  # token2wav instances: each vocodes one chunk at a time
    max_batch_size: int = 16  # every model's max_batch_size (the dynamic batcher hands an instance up to this many)
    tokenizer_s: float = 0.0  # audio_tokenizer, per request with a prompt
    spk_embedding_s: float = 0.0  # speaker_embedding, per request with a prompt
    vocoder_prompt_s: float = 0.0  # token2wav, added per chunk of a request bringing its own prompt (no cache)
    llm_step_s: float = 0.02  # tensorrt_llm streams the tokens of each step this long (in-flight batching)

    def __post_init__(self) -> None:
        if self.voice not in VOICES:
            raise UsageError(f"emulator voice {self.voice!r} is unknown", hint="use " + ", ".join(VOICES))
        if self.garble_above is not None and (type(self.garble_above) is not int or self.garble_above < 0):
            raise UsageError(f"emulator profile garble_above must be a count of requests (0 or more), "
                             f"got {self.garble_above!r}")
        if not 0.0 <= self.leading_silence_s <= 30.0:
            raise UsageError(f"emulator profile leading_silence_s must be between 0 and 30 seconds, "
                             f"got {self.leading_silence_s}")
        if self.vocoder_priority not in ("fifo", "oldest"):
            raise UsageError(f"vocoder_priority {self.vocoder_priority!r} is unknown", hint="use fifo or oldest")
        for name in ("bls_instances", "token2wav_instances", "max_batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"emulator profile {name} must be at least 1, got {getattr(self, name)}")
        if self.llm_step_s <= 0:
            raise UsageError(f"emulator profile llm_step_s must be positive, got {self.llm_step_s}")
        for name in ("error_rate", "stall_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"emulator profile {name} must be between 0 and 1, got {getattr(self, name)}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def with_overrides(self, overrides: dict[str, object]) -> Profile:
        known = {f.name: f for f in fields(self)}
        values: dict[str, object] = {}
        for key, raw in overrides.items():
            if key not in known:
                raise UsageError(
                    f"unknown emulator profile setting {key!r}",
                    hint="known settings: " + ", ".join(sorted(known)),
                )
            current = getattr(self, key)
            try:
                if isinstance(raw, str) and not isinstance(current, str):
                    raw = json.loads(raw)
                keep = isinstance(current, bool) or current is None
                value = raw if keep else type(current)(raw)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"emulator profile setting {key}={raw!r}: {exc}") from None
            values[key] = value
        return dataclasses.replace(self, **values)  # type: ignore[arg-type]  # each value has its field's type, checked above


PRESETS: dict[str, Profile] = {
    # No added delay: what remains is client and transport overhead.
    "instant": Profile(name="instant"),
    # Ground truth for measurement fidelity: first chunk at exactly 200 ms, then every 100 ms.
    "fixed": Profile(name="fixed", fixed_first_s=0.200, fixed_interval_s=0.100),
    # Calibrated to the published single-L20 CosyVoice2-0.5B streaming figures (first chunk avg 220 / 477 / 1107 ms,
    # RTF 0.124 at concurrency 1 / 2 / 4) by benchmarks/calibrate_l20.py: a fast LLM whose time to first token grows
    # with the requests in flight, and one vocoder worker (73 ms + 3 ms per token and chunk) that all requests share.
    "l20": Profile(
        name="l20",
        llm_prefill_s=0.054,
        llm_prefill_per_active_s=0.134,
        llm_tokens_per_s=1600.0,
        llm_batch_slowdown=0.6,
        vocoder_base_s=0.073,
        vocoder_per_token_s=0.00298,
        jitter=0.05,
    ),
    # The pipeline emulator (--pipeline) calibrated to the same L20 figures, with and without the speaker cache, by
    # benchmarks/calibrate_l20.py --pipeline: queueing comes from the instances (one token2wav), not from formulas.
    # Nearly all of the wait at concurrency 2 and 4 is the one token2wav: a closed loop's next request arrives just
    # as its own last chunk left token2wav, while the other request's job is queued, so it waits for that whole job.
    # A fast LLM with little batch slowdown and a 65 ms + 3 ms/token vocoder keep concurrency 2 with the speaker
    # cache near its published 323 ms while concurrency 4 still queues to ~1 s (docs/emulator.md has the tables).
    "l20_pipeline": Profile(
        name="l20_pipeline",
        llm_prefill_s=0.005,
        llm_prefill_per_active_s=0.010,
        llm_tokens_per_s=1750.0,
        llm_batch_slowdown=0.025,
        vocoder_base_s=0.065,
        vocoder_per_token_s=0.0030,
        tokenizer_s=0.006,
        spk_embedding_s=0.006,
        vocoder_prompt_s=0.045,
        jitter=0.05,
    ),
    # A quick realistic-looking profile for demos and the dashboard.
    "demo": Profile(
        name="demo",
        llm_prefill_s=0.030,
        llm_tokens_per_s=600.0,
        llm_batch_slowdown=0.05,
        vocoder_base_s=0.010,
        vocoder_per_token_s=0.0012,
        jitter=0.1,
    ),
    # Faults for exercising error handling: errors, stalls.
    "faulty": Profile(
        name="faulty",
        llm_prefill_s=0.010,
        llm_tokens_per_s=2000.0,
        vocoder_base_s=0.002,
        error_rate=0.2,
        stall_prob=0.2,
        stall_s=0.5,
    ),
}


def get_profile(name: str, overrides: dict[str, object] | None = None) -> Profile:
    try:
        profile = PRESETS[name]
    except KeyError:
        raise UsageError(
            f"unknown emulator profile {name!r}", hint="choose one of: " + ", ".join(sorted(PRESETS))
        ) from None
    return profile.with_overrides(overrides) if overrides else profile
