"""The single-model emulator: one `cosyvoice2` model for Triton's Python backend that answers as the whole
CosyVoice2 deployment would (front, LLM and vocoder in one, timed by a latency profile).

Speaks the tensors of the real `cosyvoice2` model (reference_wav, reference_wav_len, reference_text, target_text
-> waveform at 24 kHz) in decoupled (streaming) or offline mode, with the timing of a latency profile passed as
JSON in the model config's ``profile`` parameter. Self-contained: it runs inside the Python-backend stub, where
only numpy and triton_python_backend_utils can be imported.
"""

from __future__ import annotations

import fcntl
import heapq
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import zlib

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside the stub (tests use the text and audio helpers)
    pb_utils = None
try:
    from cvload.emulator import speech
except ImportError:  # in the stub: speech.py is copied beside this file as cvload_speech.py
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cvload_speech as speech  # type: ignore[no-redef]  # the same module under its stub-side name

SAMPLE_RATE = 24000
TOKENS_PER_S = 25
SAMPLES_PER_TOKEN = SAMPLE_RATE // TOKENS_PER_S
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9\u00c0-\u024f']+")
_PAUSE = re.compile(r"[,.;:!?\u3001\u3002\uff0c\uff1b\uff1a\uff01\uff1f]")


def speech_seconds(text: str) -> float:
    """Duration real speech of ``text`` would have: ~4.5 CJK characters or ~2.7 words per second."""
    cjk = len(_CJK.findall(text))
    words = len(_WORD.findall(_CJK.sub(" ", text)))
    pauses = len(_PAUSE.findall(text))
    return 0.25 + cjk * 0.22 + words * 0.37 + pauses * 0.18


def speech_tokens(text: str) -> int:
    """Speech tokens (25 per second of audio) the emulator produces for ``text`` with the synthetic voice."""
    return max(1, round(speech_seconds(text) * TOKENS_PER_S))


def chunk_schedule(total_tokens: int, profile: dict) -> list[int]:
    """Token counts of the streamed chunks: ``first_hop_tokens`` growing by ``hop_growth`` up to the maximum."""
    hop, chunks, left = float(profile.get("first_hop_tokens", 25)), [], total_tokens
    while left > 0:
        n = min(left, max(1, int(hop)))
        chunks.append(n)
        left -= n
        hop = min(hop * profile.get("hop_growth", 2.0), profile.get("max_hop_tokens", 400))
    return chunks


class ToneVoice:
    """A speech-like, never-silent signal: a gliding harmonic voice with a syllable-rate envelope.

    Rendering sines per chunk cost the server more CPU than everything else at 64 streams on 2 cores, so a few
    voices are rendered once per process and each request plays one from a seed-chosen offset, looping.
    """

    VOICES = 8
    LOOP_S = 6.0
    _loops: dict[int, np.ndarray] = {}

    def __init__(self, seed: int) -> None:
        self.loop = self._voice(seed % self.VOICES)
        self.pos = (seed // self.VOICES) % len(self.loop)

    @classmethod
    def _voice(cls, index: int) -> np.ndarray:
        loop = cls._loops.get(index)
        if loop is None:
            loop = cls._loops[index] = cls._render(index)
        return loop

    @staticmethod
    def _render(index: int) -> np.ndarray:
        rng = np.random.default_rng(index)
        f0_base, rate = float(rng.uniform(110, 210)), float(rng.uniform(3.5, 5.0))
        # Whole cycles of the slow contours, so the loop joins without a click.
        n = int(ToneVoice.LOOP_S * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        f0 = f0_base * (1.0 + 0.12 * np.sin(2 * np.pi * t / ToneVoice.LOOP_S) + 0.05 * np.sin(2 * np.pi * rate * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        voice = np.zeros(n)
        for k, amp in ((1, 1.0), (2, 0.6), (3, 0.45), (4, 0.3), (5, 0.2), (7, 0.1)):
            voice += amp * np.sin(k * phase)
        envelope = 0.35 + 0.65 * np.abs(np.sin(np.pi * rate * t))
        return (0.12 * voice * envelope + rng.normal(0.0, 0.02, n)).astype(np.float32)

    def render(self, n: int) -> np.ndarray:
        idx = (self.pos + np.arange(n)) % len(self.loop) if self.pos + n > len(self.loop) else None
        chunk = self.loop[idx] if idx is not None else self.loop[self.pos : self.pos + n].copy()
        self.pos = (self.pos + n) % len(self.loop)
        return chunk


class ArrayVoice:
    """Audio made before the request (the speech of its text), handed out in chunks; a quiet tail past its end."""

    def __init__(self, audio: np.ndarray) -> None:
        self.audio = audio
        self.pos = 0

    def render(self, n: int) -> np.ndarray:
        chunk = self.audio[self.pos : self.pos + n]
        self.pos += n
        if len(chunk) < n:  # pad with a quiet tail rather than silence
            chunk = np.concatenate([chunk, np.full(n - len(chunk), 1e-3, np.float32)])
        return chunk


class LeadingSilence:
    """``samples`` of quiet (``speech.FLOOR``, never digital zero) before ``voice``: a server that pads the
    start of its first chunk, so bytes arrive before anything can be heard."""

    def __init__(self, voice, samples: int) -> None:
        self.voice = voice
        self.left = samples

    def render(self, n: int) -> np.ndarray:
        quiet = min(n, self.left)
        self.left -= quiet
        if quiet == 0:
            return self.voice.render(n)
        head = np.full(quiet, speech.FLOOR, dtype=np.float32)
        head[1::2] = -speech.FLOOR
        return head if quiet == n else np.concatenate([head, self.voice.render(n - quiet)])


Voice = ToneVoice | ArrayVoice | LeadingSilence  # what a request is rendered from (RecordedVoice is an ArrayVoice)


class RecordedVoice(ArrayVoice):
    """Real speech from espeak-ng (Mandarin voice when the text has CJK characters), resampled to 24 kHz and
    handed out in chunks."""

    def __init__(self, text: str) -> None:
        voice = "cmn" if _CJK.search(text) else "en"
        # Text through stdin as UTF-8 bytes: the stub's embedded Python may have an ASCII filesystem encoding,
        # which cannot put CJK text into argv.
        out = subprocess.run(
            ["espeak-ng", "-v", voice, "-b", "1", "--stdin", "--stdout"],
            input=text.encode("utf-8"), capture_output=True, check=True, timeout=30,
        ).stdout
        rate, pcm = _parse_wav(out)
        n_out = max(1, int(len(pcm) * SAMPLE_RATE / rate))
        audio = np.interp(np.linspace(0, len(pcm) - 1, n_out), np.arange(len(pcm)), pcm)
        # espeak pauses are digital silence; a faint floor keeps every chunk audibly "on" for level checks
        super().__init__((audio + 1e-3 * np.sin(np.arange(n_out) * 0.05)).astype(np.float32))


def _parse_wav(data: bytes) -> tuple[int, np.ndarray]:
    """(sample rate, float samples) of a 16-bit PCM WAV as espeak-ng writes it to stdout (sizes unset)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("espeak-ng did not write a WAV")
    pos, rate = 12, 22050
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if tag == b"fmt ":
            rate = int.from_bytes(data[pos + 12 : pos + 16], "little")
        elif tag == b"data":
            body = data[pos + 8 :]
            body = body[: len(body) - len(body) % 2]
            return rate, np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0
        pos += 8 + size
    raise ValueError("espeak-ng WAV has no data chunk")


class Vocoder:
    """The one shared token2wav worker: chunk jobs from all requests wait in one queue for one worker.

    ``priority="fifo"`` serves jobs in the order they come; ``"oldest"`` serves the job of the request that
    arrived first (a request in progress finishes before a newer one gets its first chunk). Offline instances live in separate stub processes;
    with ``lock_path`` they share one worker through an exclusive file lock held for each job (first come,
    first served across processes). ``run`` returns the job's (start, end) on the host's monotonic clock.
    """

    def __init__(self, lock_path: str | None, priority: str = "fifo") -> None:
        # span: empty while queued, [None] once claimed, then [start, end]
        self.jobs: list[tuple[float, int, float, threading.Event, list[float | None]]] = []
        self.cond = threading.Condition()
        self.seq = 0
        self.lock_path = lock_path
        self.priority = priority
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.jobs:
                    self.cond.wait()
                _, _, cost, done, span = heapq.heappop(self.jobs)
                if done.is_set():  # withdrawn while queued (its request was cancelled)
                    continue
                span.append(None)  # claimed: too late to withdraw
            if self.lock_path:
                with open(self.lock_path, "a") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                    try:
                        span[0] = time.monotonic()
                        _sleep(cost)
                        span.append(time.monotonic())
                    finally:
                        fcntl.flock(fh, fcntl.LOCK_UN)
            else:
                span[0] = time.monotonic()
                _sleep(cost)
                span.append(time.monotonic())
            done.set()

    def run(self, cost: float, arrival: float, watch: CancelWatch | None = None) -> tuple[float, float] | None:
        """Queue a job and wait for it; None when it cost nothing, or was withdrawn from the queue because
        ``watch`` said stop (a job already running runs to its end, as a GPU kernel does)."""
        if cost <= 0:
            return None
        done, span = threading.Event(), list[float | None]()
        with self.cond:
            self.seq += 1
            key = arrival if self.priority == "oldest" else time.monotonic()
            heapq.heappush(self.jobs, (key, self.seq, cost, done, span))
            self.cond.notify()
        if watch is None:
            done.wait()
        else:
            while not done.wait(watch.poll_s):
                if watch.stop():
                    with self.cond:
                        if not span:  # still queued: withdraw it
                            done.set()
                            return None
        start, end = span
        assert start is not None and end is not None
        return start, end


def _sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class CancelWatch:
    """Whether the client gave up on a request, asked the way a correct server asks (Triton's
    ``is_cancelled()``, grpcio's ``context.is_active()``, a web server's disconnect), between pipeline stages
    and every ``poll_s`` of a wait. ``ignore`` (profile ``ignore_cancel``) is the bug cvload must expose: the
    cancellation is noticed (and traced) but the request is generated to its end all the same.

    Trace fields: ``cancelled`` (s after arrival when first noticed), ``stopped`` (s after arrival when the
    request's generation ended) and ``after_cancel_s`` (audio made after the notice, seconds)."""

    POLL_S = 0.025
    # Triton's is_cancelled() is a round trip from the stub to the server process (~40 us measured here): a
    # process polls about this many times a second at most, however many requests it serves (at 64 streams a
    # request is asked every 64 ms), so watching costs a few percent of a core, never the emulator's timing.
    QUERIES_PER_S = 1000.0

    def __init__(self, is_cancelled, ignore: bool = False, active: int = 1) -> None:
        self.is_cancelled = is_cancelled  # a callable answering True once the client went away
        self.ignore = ignore
        self.poll_s = max(self.POLL_S, active / self.QUERIES_PER_S)
        self.seen: float | None = None  # monotonic time the cancellation was first noticed
        self.after_samples = 0
        self.sample_rate = SAMPLE_RATE

    def cancelled(self) -> bool:
        if self.seen is None:
            try:
                gone = bool(self.is_cancelled())
            except Exception:  # noqa: BLE001 - a query that fails (server shutting down) is not a cancellation
                gone = False
            if gone:
                self.seen = time.monotonic()
        return self.seen is not None

    def stop(self) -> bool:
        """True when generation should end now: cancelled and honoured."""
        return self.cancelled() and not self.ignore

    def sleep_until(self, deadline: float) -> bool:
        """Wait until ``deadline`` (host monotonic clock) unless stopped first; True when stopped."""
        while True:
            if self.stop():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, self.poll_s))

    def made(self, samples: int) -> None:
        """Audio of ``samples`` was made for the request (counted against the cancellation once noticed)."""
        if self.cancelled():
            self.after_samples += samples

    def trace(self, arrival: float) -> dict:
        return {"cancelled": None if self.seen is None else self.seen - arrival,
                "stopped": time.monotonic() - arrival,
                "after_cancel_s": self.after_samples / self.sample_rate}


def _wait_until(deadline: float, watch: CancelWatch | None) -> bool:
    """Sleep until ``deadline``; True when ``watch`` says stop first."""
    if watch is None:
        _sleep_until(deadline)
        return False
    return watch.sleep_until(deadline)


class RequestError(Exception):
    """A bad request, answered with an error response (INVALID_ARG); the server stays up."""


def _error(message: str, invalid_argument: bool = False):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid_argument else None
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


class SharedState:
    """Arrival count and in-flight request ids, shared by every instance (stub process) of one model."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.arrivals = 0
        self.in_flight: set[str] = set()
        if path:  # the server is not ready before every instance has initialized: no request can be lost
            with open(path, "w") as fh:
                fh.write('{"arrivals": 0, "in_flight": []}')

    def _update(self, change):
        if not self.path:
            with self.lock:
                return change(self)
        with self.lock, open(self.path, "r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                data = json.loads(fh.read() or "{}")
                self.arrivals = int(data.get("arrivals", 0))
                self.in_flight = set(data.get("in_flight", []))
                result = change(self)
                fh.seek(0)
                fh.truncate()
                fh.write(json.dumps({"arrivals": self.arrivals, "in_flight": sorted(self.in_flight)}))
                fh.flush()  # before the unlock: the next process must read the whole state
                return result
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def admit(self, request_id: str) -> tuple[int, bool]:
        """Count an arrival; returns (arrival number, whether its id was already in flight)."""

        def change(state: SharedState) -> tuple[int, bool]:
            state.arrivals += 1
            duplicate = bool(request_id) and request_id in state.in_flight
            if request_id and not duplicate:
                state.in_flight.add(request_id)
            return state.arrivals, duplicate

        return self._update(change)

    def release(self, request_id: str) -> None:
        if request_id:
            self._update(lambda state: state.in_flight.discard(request_id))


def model_args(args: dict) -> tuple[dict, dict[str, str], dict]:
    """What Triton's ``initialize`` hands an emulated model: its config, its string parameters, its profile."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    return config, params, json.loads(params.get("profile", "{}"))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config, params, self.profile = model_args(args)
        self.model_name = args["model_name"]
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.trace_path = params.get("trace_path") or None
        # Streaming runs one instance (threads inside it); offline instances are separate processes that share
        # the vocoder through a file lock and the arrival count and in-flight ids through a state file.
        lock = params.get("vocoder_lock") or None
        shared = params.get("state_path") or None
        self.vocoder = Vocoder(None if self.decoupled else lock, self.profile.get("vocoder_priority", "fifo"))
        self.state = SharedState(None if self.decoupled else shared)
        self.rng = random.Random(self.profile.get("seed", 0) or None)
        self.lock = threading.Lock()
        self.active = 0
        self.trace_lock = threading.Lock()
        self._start_speech()

    # ---- request parsing -------------------------------------------------------------------------------------
    def _text(self, request, name: str) -> str | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        array = tensor.as_numpy()
        if array.size != 1:
            raise RequestError(f"{name} must hold exactly one string (shape [1, 1]), got shape {list(array.shape)}")
        value = array.reshape(-1)[0]
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)

    def _parse(self, request) -> dict:
        target = self._text(request, "target_text")
        if target is None:
            raise RequestError("missing required input 'target_text'")
        if not target.strip():
            raise RequestError("target_text is empty: nothing to synthesize")
        ref_text = self._text(request, "reference_text")
        wav = pb_utils.get_input_tensor_by_name(request, "reference_wav")
        ref_seconds = 0.0
        if wav is not None:
            samples = wav.as_numpy().reshape(-1)
            n = samples.size
            wav_len = pb_utils.get_input_tensor_by_name(request, "reference_wav_len")
            if wav_len is not None:
                lengths = wav_len.as_numpy().reshape(-1)
                if lengths.size != 1:
                    raise RequestError(f"reference_wav_len must hold one value, got {lengths.size}")
                n = int(lengths[0])
                if not 0 < n <= samples.size:
                    raise RequestError(
                        f"reference_wav_len {n} is outside 1..{samples.size} (the samples sent in reference_wav)"
                    )
            if not np.isfinite(samples[:n]).all():
                raise RequestError("reference_wav holds NaN or Inf samples")
            if ref_text is None:
                raise RequestError("reference_wav given without reference_text (zero-shot needs both)")
            ref_seconds = n / 16000.0
        elif ref_text is not None:
            raise RequestError("reference_text given without reference_wav (zero-shot needs both)")
        return {"target": target, "ref_seconds": ref_seconds}

    # ---- timing --------------------------------------------------------------------------------------------
    def _jitter(self, seconds: float) -> float:
        sigma = self.profile.get("jitter", 0.0)
        return seconds * math.exp(self.rng.gauss(0.0, sigma)) if sigma and seconds > 0 else seconds

    def _token_time(self, tokens: int) -> float:
        rate = self.profile.get("llm_tokens_per_s", 0.0)
        if rate <= 0:
            return 0.0
        slowdown = 1.0 + self.profile.get("llm_batch_slowdown", 0.0) * max(0, self.active - 1)
        return self._jitter(tokens * slowdown / rate)

    def _vocoder_cost(self, tokens: int) -> float:
        p = self.profile
        return self._jitter(p.get("vocoder_base_s", 0.0) + p.get("vocoder_per_token_s", 0.0) * tokens)

    def _chunks(self, total_tokens: int) -> list[int]:
        return chunk_schedule(total_tokens, self.profile)

    # ---- serving ---------------------------------------------------------------------------------------------
    def _voice(self, text: str, request_id: str):
        if self.profile.get("voice") == "espeak" and shutil.which("espeak-ng"):
            try:
                return RecordedVoice(text)
            except (OSError, subprocess.SubprocessError, ValueError):
                pass  # fall back to the synthetic voice rather than fail the request
        return ToneVoice(zlib.crc32(text.encode()) ^ zlib.crc32(request_id.encode()))

    # ---- what is said: speech, garbling, leading silence (cvload_speech) --------------------------------------
    def _start_speech(self) -> None:
        """The speech cache and the garbling state; ``initialize`` (and the servers without Triton) call it."""
        self.speech = speech.SpeechCache(self.profile.get("speech_cache") or None)
        self.garble_rng = random.Random(f"garble-{self.profile.get('seed', 0)}")  # seeded even when seed is 0
        self.recent: list[np.ndarray] = []  # the speech of the last requests, for garble's "swap"
        self.notes = threading.local()  # what the request on this thread said: its trace's voice and garble

    def _garble_mode(self) -> tuple[str, random.Random] | None:
        """Above ``garble_above`` requests in flight, each request is garbled with the share of the excess
        ((n - N) / n): which ones, and how, comes from the seed."""
        above = self.profile.get("garble_above")
        if above is None:
            return None
        with self.lock:
            n = max(self.active, len(self.state.in_flight))
            if n <= above or self.garble_rng.random() >= (n - above) / n:
                return None
            return self.garble_rng.choice(speech.GARBLE_MODES), random.Random(self.garble_rng.random())

    def _spoken(self, text: str, request_id: str) -> tuple[Voice, int]:
        """The request's voice (``render(samples)`` per chunk) and its length in speech tokens.

        ``voice`` ``speech`` (the default) speaks the text from the speech cache, fitted to the emulated
        duration; a text not cached yet gets the tone this once (noted in the trace) while it is synthesised
        off the response path. ``garble_above`` and ``leading_silence_s`` act here."""
        p = self.profile
        tokens = speech_tokens(text)
        samples = tokens * SAMPLES_PER_TOKEN
        kind = p.get("voice", "speech")
        voice: Voice | None = None
        note: dict[str, object] = {"voice": kind, "garble": None}
        if kind == "speech":
            audio = self.speech.lookup(text, samples)
            if audio is None:
                note["voice"] = "tone (speech not cached yet)"
            else:
                garbled = self._garble_mode()
                if garbled is not None:
                    mode, rng = garbled
                    others = [a for a in self.recent if a is not audio]
                    other = others[-1] if others else None
                    mode = mode if mode != "swap" or other is not None else "noise"
                    note["garble"] = mode
                    voice = ArrayVoice(speech.garble(audio, mode, rng, other))
                else:
                    voice = ArrayVoice(audio)
                with self.lock:
                    self.recent = [a for a in self.recent[-7:] if a is not audio] + [audio]
        elif kind == "espeak":
            voice = self._voice(text, request_id)
            if isinstance(voice, RecordedVoice):
                tokens = max(1, math.ceil(len(voice.audio) / SAMPLES_PER_TOKEN))
            else:
                note["voice"] = "tone (espeak-ng not found)"
        if voice is None:
            voice = ToneVoice(zlib.crc32(text.encode()) ^ zlib.crc32(request_id.encode()))
        lead = round(float(p.get("leading_silence_s", 0.0) or 0.0) * SAMPLE_RATE)
        if lead > 0:
            voice = LeadingSilence(voice, lead)
            tokens += math.ceil(lead / SAMPLES_PER_TOKEN)
        self.notes.value = note
        return voice, tokens

    def _take_note(self) -> dict:
        note = getattr(self.notes, "value", None) or {}
        self.notes.value = None
        return note

    def _admit(self, request_id: str) -> tuple[str | None, bool]:
        """Count the arrival and apply the crash/duplicate/error rules.

        Returns (error message or None, whether the error is the client's: INVALID_ARG rather than INTERNAL)."""
        arrivals, duplicate = self.state.admit(request_id)
        crash_after = self.profile.get("crash_after", 0)
        if crash_after and arrivals >= crash_after:
            os.kill(os.getppid(), signal.SIGKILL)  # the server dies mid-run, as a crashed GPU server does
            time.sleep(60)
        if duplicate:
            return f"request id {request_id!r} is already in flight: request ids must be unique", True
        with self.lock:
            self.active += 1
        if self.rng.random() < self.profile.get("error_rate", 0.0):
            self._release(request_id)
            return "emulated server error (profile error_rate)", False
        return None, False

    def _admit_safely(self, request_id: str) -> tuple[str | None, bool]:
        try:
            return self._admit(request_id)
        except Exception as exc:  # noqa: BLE001 - a request must always get its answer, never hang
            return f"emulator failure: {exc!r}", False

    def _release(self, request_id: str) -> None:
        with self.lock:
            self.active -= 1
        self.state.release(request_id)

    def _synthesize(self, parsed: dict, request_id: str, arrival: float, emit) -> tuple[list[float], list]:
        """Produce the chunks of one request, calling ``emit(audio)`` at each chunk's time.

        Returns the send offsets (seconds after arrival) and the vocoder jobs' (start, end) offsets."""
        p = self.profile
        voice, total_tokens = self._spoken(parsed["target"], request_id)
        chunks = self._chunks(total_tokens)
        stall_at = self.rng.randrange(len(chunks)) if self.rng.random() < p.get("stall_prob", 0.0) else -1
        sends: list[float] = []
        spans: list[list[float]] = []
        fixed_first = p.get("fixed_first_s")
        others = max(0, self.active - 1)  # other requests in flight when this one starts
        llm_clock = arrival + self._jitter(
            p.get("llm_prefill_s", 0.0) + p.get("llm_prefill_per_active_s", 0.0) * others
        )
        produced = 0
        shift = 0.0  # a stall delays this chunk and every later one
        watch = parsed.get("watch")  # the client's cancellation (streaming requests)
        for i, n in enumerate(chunks):
            if watch is not None and watch.stop():
                break
            if i == stall_at:
                stall = p.get("stall_s", 0.0)
                if _wait_until(time.monotonic() + stall, watch):
                    break
                llm_clock += stall
                shift += stall
            produced += n
            audio = voice.render(n * SAMPLES_PER_TOKEN)  # before the wait: rendering must not delay the send
            if fixed_first is not None:
                if _wait_until(arrival + shift + fixed_first + i * (p.get("fixed_interval_s") or 0.0), watch):
                    break
            else:
                lookahead = 0 if produced == total_tokens else p.get("lookahead_tokens", 3)
                llm_clock += self._token_time(n + (lookahead if i == 0 else 0))
                if _wait_until(llm_clock, watch):
                    break
                span = self.vocoder.run(self._vocoder_cost(n), arrival, watch)
                if span is not None:
                    spans.append([span[0] - arrival, span[1] - arrival])
                elif watch is not None and watch.stop():
                    break
            sends.append(time.monotonic() - arrival)
            if watch is not None:
                watch.made(audio.size)
            emit(audio)
        return sends, spans

    def _trace(self, request_id: str, arrival: float, sends: list[float], spans: list, error: str | None,
               watch: CancelWatch | None = None) -> None:
        if not self.trace_path:
            return
        line = json.dumps(
            {
                **(watch.trace(arrival) if watch is not None else {}),
                "model": self.model_name,
                "id": request_id,
                "pid": os.getpid(),
                "arrival": arrival,  # host monotonic clock (time.monotonic() of any process on this host)
                "sends": sends,  # seconds after arrival, one per response sent with audio
                "vocoder": spans,  # the request's vocoder jobs: [start, end] seconds after arrival
                "error": error,
                **self._take_note(),  # voice: what was said (speech, tone, ...); garble: null or how
            }
        )
        with self.trace_lock, open(self.trace_path, "a") as fh:
            fh.write(line + "\n")

    def _serve_stream(self, request, arrival: float) -> None:
        sender = request.get_response_sender()
        request_id = request.request_id()
        error, invalid = self._admit_safely(request_id)
        sends: list[float] = []
        spans: list = []
        watch = self._cancel_watch(request)
        if error is None:
            try:
                parsed = self._parse(request)
                parsed["watch"] = watch

                def emit(audio: np.ndarray) -> None:
                    out = pb_utils.Tensor("waveform", audio.reshape(1, -1))
                    try:
                        sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
                    except Exception:  # noqa: BLE001 - sending to a client that went away may fail
                        if not watch.cancelled():
                            raise

                sends, spans = self._synthesize(parsed, request_id, arrival, emit)
            except RequestError as exc:
                error, invalid = str(exc), True
            except Exception as exc:  # noqa: BLE001 - a bug in the emulator must not hang the client
                error = f"emulator failure: {exc!r}"
            finally:
                self._release(request_id)
        try:  # the trace goes before the final response: clients may read it
            self._trace(request_id, arrival, sends, spans, error, watch)
        finally:
            try:
                if error is not None:
                    sender.send(
                        pb_utils.InferenceResponse(error=_error(error, invalid)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                    )
                else:
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception:  # noqa: BLE001 - the final flag of a cancelled request may find no client
                if not watch.cancelled():
                    raise

    def _cancel_watch(self, request) -> CancelWatch:
        """The request's cancellation as Triton's Python backend reports it (``request.is_cancelled()``)."""
        return CancelWatch(getattr(request, "is_cancelled", lambda: False),
                           bool(self.profile.get("ignore_cancel", False)), active=max(1, self.active))

    def _serve_offline(self, request, arrival: float):
        request_id = request.request_id()
        error, invalid = self._admit_safely(request_id)
        parts: list[np.ndarray] = []
        sends: list[float] = []
        spans: list = []
        if error is None:
            try:
                sends, spans = self._synthesize(self._parse(request), request_id, arrival, parts.append)
            except RequestError as exc:
                error, invalid = str(exc), True
            except Exception as exc:  # noqa: BLE001
                error = f"emulator failure: {exc!r}"
            finally:
                self._release(request_id)
        self._trace(request_id, arrival, sends[-1:], spans, error)
        if error is not None:
            return pb_utils.InferenceResponse(error=_error(error, invalid))
        audio = np.concatenate(parts).reshape(1, -1)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("waveform", audio)])

    def execute(self, requests: list) -> list | None:
        arrival = time.monotonic()
        if self.decoupled:
            for request in requests:
                threading.Thread(target=self._serve_stream, args=(request, arrival), daemon=True).start()
            return None
        # Serve a dynamic batch's requests side by side, as the real BLS model does with its instances.
        responses: list = [None] * len(requests)

        def serve(i: int) -> None:
            try:
                responses[i] = self._serve_offline(requests[i], arrival)
            except Exception as exc:  # noqa: BLE001 - a missing response would hang the client
                responses[i] = pb_utils.InferenceResponse(error=_error(f"emulator failure: {exc!r}"))

        threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return responses

    def finalize(self) -> None:
        """Nothing to release: the vocoder and request threads are daemons, each trace line is written whole.

        A clean stop still takes seconds, none of them here (an empty model takes as long): the Python backend
        probes each instance's stub health with a fixed 1 s sleep before ending it, one instance after another,
        and tritonserver checks every second whether all models have unloaded."""
