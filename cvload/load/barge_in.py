"""Barge-in load (``--barge-in SHARE@WHEN``): which requests their listener abandons, and when.

A voice agent's caller talks over it, so the agent drops the speech it was streaming: the request is abandoned
after its first chunk or a second or two of audio. This module is the policy only: parsing the option, choosing
the requests (deterministically from the run's seed, spread evenly over the run) and watching a chosen request's
chunks to abandon it at its moment. Abandoning is closing the target's stream: each target's cancel path (its
generator's ``finally``) cancels the RPC or closes the connection, which is what tells the server to stop.

WHEN is ``1.5s`` (that long after the first chunk), ``first_chunk`` (right after it), ``uniform(0.5s,3s)`` (a
delay after the first chunk drawn per request) or ``audio(2s)`` (once that much audio was received).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from cvload.errors import UsageError
from cvload.results.records import RequestRecord
from cvload.settings.config import parse_duration
from cvload.targets.base import Chunk, SynthesisRequest

HINT = "use SHARE@WHEN, e.g. 30%@1.5s, 50%@first_chunk, 20%@uniform(0.5s,3s) or 30%@audio(2s)"
_SPEC = re.compile(r"^\s*(?P<share>[^@]*?)\s*@\s*(?P<when>.*?)\s*$")
_CALL = re.compile(r"^(?P<name>[a-z_]+)\((?P<args>[^()]*)\)$")
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # a low-discrepancy step: any stretch of requests gets about its share


@dataclass(frozen=True)
class Plan:
    """When one chosen request is abandoned: ``after_first_s`` after its first chunk, or once ``after_audio_s``
    seconds of audio arrived (whichever is set)."""

    after_first_s: float | None = None
    after_audio_s: float | None = None


@dataclass(frozen=True)
class BargeIn:
    """A parsed ``--barge-in``: the share of requests abandoned and when (``kind``: after, first_chunk, uniform,
    audio; ``low``/``high`` in seconds)."""

    text: str
    share: float  # 0..1
    kind: str
    low: float = 0.0
    high: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> BargeIn:
        m = _SPEC.match(str(text))
        if not m or not m.group("share") or not m.group("when"):
            raise UsageError(f"--barge-in {text!r} is not SHARE@WHEN", hint=HINT)
        share = _share(text, m.group("share"))
        when = m.group("when").replace(" ", "")
        if when == "first_chunk":
            return cls(str(text), share, "first_chunk", seed=seed)
        call = _CALL.match(when)
        if call is None:
            try:
                return cls(str(text), share, "after", low=parse_duration(when, what="--barge-in delay"), seed=seed)
            except UsageError:
                raise UsageError(f"--barge-in {text!r}: unknown WHEN {when!r}", hint=HINT) from None
        name, args = call.group("name"), [a for a in call.group("args").split(",")]
        if name == "uniform" and len(args) == 2:
            low, high = (_seconds(text, a) for a in args)
            if high < low:
                raise UsageError(f"--barge-in {text!r}: uniform(LOW,HIGH) needs LOW <= HIGH", hint=HINT)
            return cls(str(text), share, "uniform", low=low, high=high, seed=seed)
        if name == "audio" and len(args) == 1:
            seconds = _seconds(text, args[0])
            if seconds <= 0:
                raise UsageError(f"--barge-in {text!r}: audio(T) needs T > 0", hint=HINT)
            return cls(str(text), share, "audio", low=seconds, seed=seed)
        raise UsageError(f"--barge-in {text!r}: unknown WHEN {when!r}", hint=HINT)

    def plan(self, index: int) -> Plan | None:
        """Request ``index``'s abandonment, or None where it plays to the end. Deterministic: the same seed
        abandons the same requests at the same delays (a rerun, a paired baseline, another process)."""
        if self.share <= 0.0:
            return None
        offset = random.Random(self.seed).random()
        if (offset + index * _GOLDEN) % 1.0 >= self.share:
            return None
        if self.kind == "audio":
            return Plan(after_audio_s=self.low)
        if self.kind == "uniform":
            return Plan(after_first_s=random.Random(f"{self.seed}:{index}").uniform(self.low, self.high))
        return Plan(after_first_s=0.0 if self.kind == "first_chunk" else self.low)


def _share(text: str, raw: str) -> float:
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        raise UsageError(f"--barge-in {text!r}: share {raw!r} is not a number", hint=HINT) from None
    share = value / 100.0 if percent else value
    if not math.isfinite(share) or not 0.0 <= share <= 1.0:
        raise UsageError(f"--barge-in {text!r}: share {raw!r} is outside 0-100%", hint=HINT)
    return share


def _seconds(text: str, raw: str) -> float:
    try:
        return parse_duration(raw, what="--barge-in delay")
    except UsageError as exc:
        raise UsageError(f"--barge-in {text!r}: {exc.message}", hint=HINT) from None


def check(barge_in: str | None, *, mode: str, seed: int) -> BargeIn | None:
    """The parsed option, refused where it cannot apply: offline requests answer in one piece, so there is no
    first chunk to abandon after and nothing to cut short."""
    if barge_in is None:
        return None
    parsed = BargeIn.parse(barge_in, seed)
    if mode == "offline":
        raise UsageError(f"--barge-in {barge_in!r} with --mode offline: an offline request answers in one piece, "
                         "so it cannot be abandoned after its first chunk",
                         hint="barge-in needs --mode streaming (or leave --barge-in out)")
    return parsed


def own_call(request: SynthesisRequest) -> SynthesisRequest:
    """``request`` marked to go on a call of its own (a Triton gRPC stream of its own rather than a shared one)."""
    return replace(request, own_call=True)


async def watch(stream: AsyncIterator[Chunk], plan: Plan, record: RequestRecord) -> AsyncIterator[Chunk]:
    """``stream``'s chunks until ``plan`` says abandon: then ``record.abandon_offset`` is stamped and the stream
    closed (its target cancels the call or closes the connection). Only abandoned requests pass through here;
    the chunks keep the times their target stamped."""
    deadline: float | None = None
    audio = 0.0
    try:
        while True:
            if deadline is None:
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    return
            else:
                read = asyncio.ensure_future(anext(stream))
                await asyncio.wait([read], timeout=max(0.0, deadline - time.monotonic()))
                if not read.done():  # the moment came between chunks: stop waiting, cancel the read
                    record.abandon_offset = time.monotonic() - record.sent
                    read.cancel()
                    with contextlib.suppress(BaseException):
                        await read
                    return
                try:
                    chunk = read.result()
                except StopAsyncIteration:
                    return
            yield chunk
            audio += chunk.samples / chunk.sample_rate if chunk.sample_rate else 0.0
            if plan.after_audio_s is not None and audio >= plan.after_audio_s - 1e-9:
                record.abandon_offset = time.monotonic() - record.sent
                return
            if plan.after_first_s is not None and deadline is None:
                if plan.after_first_s <= 0:
                    record.abandon_offset = time.monotonic() - record.sent
                    return
                deadline = chunk.t + plan.after_first_s
    finally:
        await stream.aclose()  # type: ignore[attr-defined]  # targets' streams are async generators; the target's cancel path: its finally cancels the call / closes the response
