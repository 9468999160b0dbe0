"""Real speech for the emulated servers: each text spoken once, fitted to the emulated duration, cached on disk.

English goes through hibari (a 7.9 MB neural voice at 24 kHz, ~60x real time on one core), Chinese (any CJK
character) through the espeak-ng library and voices that ``espeakng-loader`` ships. The speech of a text is fitted
to the number of samples the emulator's timing gives that text (spoken faster when it would not fit, then a quiet
tail), so chunk counts, sizes and send times stay exactly what the profile says: only the content changes.

Synthesis never runs on a response's path. ``warm`` (the parent, before a server starts) synthesises what a run
will send; a server that meets a text it has not got queues it on a background thread and answers that request
with the tone voice (the trace says so), so the next request for the text speaks. The cache lives in
``CVLOAD_SPEECH_CACHE``, else ``$XDG_CACHE_HOME/cvload/speech`` (``~/.cache``): one int16 file per text, voice and
length, written atomically, shared by every process.

Self-contained (stdlib and numpy; hibari and espeakng_loader imported when first needed): it is copied beside the
Triton models and runs inside the Python-backend stub.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np

SAMPLE_RATE = 24000
ENGLISH_VOICE = "hibari-heart"
CHINESE_VOICE = "espeak-cmn"
FLOOR = 3e-4  # the level between and after words: quiet (-70 dBFS), never digital zero
_FORMAT = "2"  # bump when the fitting or the stored form changes: old files are then simply not found
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_MAX_SPEEDUP = 2.0  # hibari's fastest (its speed runs 0.5 .. 2.0)
_MIN_SPEED = 0.85  # slower than this sounds drawn out: a longer quiet tail instead
_PEAK = 0.7  # espeak-ng speaks near full scale: brought down, so the clipping check stays quiet
_MARGIN_S = 0.15  # room left after the speech when it has to be spoken faster to fit


class SpeechUnavailable(RuntimeError):
    """No engine for this text here (hibari or espeakng-loader not installed, or failing)."""


def cache_dir() -> str:
    """Where spoken texts are kept: ``CVLOAD_SPEECH_CACHE``, else ``$XDG_CACHE_HOME/cvload/speech``."""
    explicit = os.environ.get("CVLOAD_SPEECH_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cvload", "speech")


def voice_for(text: str) -> str:
    return CHINESE_VOICE if _CJK.search(text) else ENGLISH_VOICE


# Sentence ends: CJK punctuation anywhere, ASCII punctuation before a space (so "3.5" stays one number).
_SENTENCE_END = re.compile(r"(?<=[\u3002\uff01\uff1f\uff1b])|(?<=[.!?;])\s+")


def sentences(text: str) -> list[str]:
    """The sentences CosyVoice's Python runtime synthesizes one by one (never empty): the emulated runtime
    sends, and speaks, one response per sentence."""
    parts = [p.strip() for p in _SENTENCE_END.split(text)]
    return [p for p in parts if p and re.search(r"\w", p)] or [text.strip()]


# ---- engines -------------------------------------------------------------------------------------------------
class _Hibari:
    def __init__(self) -> None:
        try:
            from hibari import Hibari
        except ImportError as exc:
            raise SpeechUnavailable(f"hibari-tts is not installed in {sys.executable} ({exc}): "
                                    "install cvload[emulator]") from None
        self.tts = Hibari(threads=1)

    def __call__(self, text: str, speed: float) -> np.ndarray:
        return np.asarray(self.tts(text, speed=speed, seed=0), dtype=np.float32)


class _Espeak:
    """libespeak-ng through ctypes (espeakng-loader ships the library and its voices, no binary needed)."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self, voice: str = "cmn") -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise SpeechUnavailable(f"espeakng-loader is not installed in {sys.executable} ({exc}): "
                                    "install cvload[emulator]") from None
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.rate = lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)  # 2: synchronous
        if self.rate <= 0:
            raise SpeechUnavailable(f"espeak-ng failed to start (espeak_Initialize returned {self.rate})")
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SpeechUnavailable(f"espeak-ng has no voice {voice!r}")
        self.lib = lib
        self.parts: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # kept: the library holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count: int, _events) -> int:
        if count > 0 and wav:
            self.parts.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.float32) / 32768.0)
        return 0

    def __call__(self, text: str, speed: float) -> np.ndarray:
        self.lib.espeak_SetParameter(1, int(175 * speed), 0)  # 1: espeakRATE, words per minute (175 default)
        self.parts = []
        data = text.encode("utf-8") + b"\0"
        self.lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None)  # POS_CHARACTER, espeakCHARS_UTF8
        self.lib.espeak_Synchronize()
        pcm = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
        peak = float(np.abs(pcm).max()) if pcm.size else 0.0
        return resample(pcm * (_PEAK / peak) if peak > 0 else pcm, self.rate, SAMPLE_RATE)


def resample(audio: np.ndarray, rate: int, to: int) -> np.ndarray:
    """Linear interpolation: plenty for speech a recognizer has to follow (no dependency in the stub)."""
    if rate == to or audio.size == 0:
        return audio.astype(np.float32)
    n = max(1, round(audio.size * to / rate))
    return np.interp(np.linspace(0, audio.size - 1, n), np.arange(audio.size), audio).astype(np.float32)


_engines: dict[str, object] = {}
_engine_lock = threading.Lock()  # the engines keep state (espeak's is global): one synthesis at a time


def _engine(voice: str):
    engine = _engines.get(voice)
    if engine is None:
        engine = _engines[voice] = _Espeak() if voice == CHINESE_VOICE else _Hibari()
    return engine


def _trim(audio: np.ndarray) -> np.ndarray:
    """Without the engine's own leading and trailing silence (the emulator adds exactly what it is told)."""
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    if loud.size == 0:
        return audio
    pad = SAMPLE_RATE // 200  # keep 5 ms around the speech (a soft onset is speech already)
    return audio[max(0, loud[0] - pad): loud[-1] + pad]


def speak(text: str, samples: int) -> np.ndarray:
    """``text`` spoken in exactly ``samples`` samples at 24 kHz: the speech first (faster when it would not
    fit, a little slower when it would leave a long gap), then a quiet tail. Raises SpeechUnavailable when no
    engine for its language is installed."""
    voice = voice_for(text)
    with _engine_lock:
        engine = _engine(voice)
        speech = _trim(engine(text, 1.0))
        room = max(1, samples - int(_MARGIN_S * SAMPLE_RATE))
        speed = min(_MAX_SPEEDUP, max(_MIN_SPEED, speech.size / room * 1.03))
        if abs(speed - 1.0) > 0.02:
            speech = _trim(engine(text, speed))
    out = np.full(samples, FLOOR, dtype=np.float32)
    out[1::2] = -FLOOR
    n = min(samples, speech.size)
    out[:n] = speech[:n]
    return out


# ---- the cache -------------------------------------------------------------------------------------------------
class SpeechCache:
    """Spoken texts on disk (int16 files) and in this process's memory; misses synthesised on a background thread."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or cache_dir()
        self.memory: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()
        self.pending: set[str] = set()
        self.queue: queue.Queue[tuple[str, str, int]] = queue.Queue()
        self.worker: threading.Thread | None = None
        self.failure: str | None = None  # why the last background synthesis failed

    @staticmethod
    def key(text: str, samples: int) -> str:
        return hashlib.sha256(f"{_FORMAT}|{voice_for(text)}|{samples}|{text}".encode()).hexdigest()[:32]

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], key + ".pcm")

    def get(self, text: str, samples: int) -> np.ndarray | None:
        """The speech if this process holds it or the disk has it (a read of a few hundred kB), else None."""
        key = self.key(text, samples)
        audio = self.memory.get(key)
        if audio is not None:
            return audio
        try:
            pcm = np.fromfile(self.path(key), dtype="<i2")
        except OSError:
            return None
        if pcm.size != samples:
            return None
        audio = pcm.astype(np.float32) / 32767.0
        with self.lock:
            self.memory[key] = audio
        return audio

    def make(self, text: str, samples: int) -> np.ndarray:
        """Synthesise (on this thread), store and return the speech."""
        audio = self.get(text, samples)
        if audio is not None:
            return audio
        audio = speak(text, samples)
        key = self.key(text, samples)
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            fh.write((np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
        os.replace(tmp, path)  # atomic: a reader sees the whole file or none
        stored = np.fromfile(path, dtype="<i2").astype(np.float32) / 32767.0
        with self.lock:
            self.memory[key] = stored
        return stored

    def lookup(self, text: str, samples: int) -> np.ndarray | None:
        """The speech when it is ready; otherwise None, and it is synthesised off this thread for next time."""
        audio = self.get(text, samples)
        if audio is None:
            self.later(text, samples)
        return audio

    def later(self, text: str, samples: int) -> None:
        key = self.key(text, samples)
        with self.lock:
            if key in self.pending:
                return
            self.pending.add(key)
            if self.worker is None:
                self.worker = threading.Thread(target=self._work, name="speech-synthesis", daemon=True)
                self.worker.start()
        self.queue.put((key, text, samples))

    def _work(self) -> None:
        """Speak the queued texts in a child process at low priority (``python speech.py``): synthesis is CPU
        work (hibari's text front end holds the interpreter lock), which in the server's own process would
        delay the sends of the requests in flight."""
        while True:
            batch = [self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                lines = "".join(json.dumps([text, samples]) + "\n" for _, text, samples in batch)
                done = subprocess.run([_python(), os.path.abspath(__file__), self.directory], input=lines.encode(),
                                      capture_output=True, timeout=600)
                if done.returncode != 0:
                    raise RuntimeError(done.stderr.decode(errors="replace").strip().splitlines()[-1:] or
                                       f"exit code {done.returncode}")
            except Exception as exc:  # noqa: BLE001 - a miss stays a tone; the trace and log say why
                self.failure = f"{type(exc).__name__}: {exc}"
                print(f"cvload emulator: cannot speak {len(batch)} text(s): {self.failure}", file=sys.stderr,
                      flush=True)
            finally:
                with self.lock:
                    self.pending.difference_update(key for key, _, _ in batch)

    def idle(self, timeout: float = 60.0) -> bool:
        """Wait until the background synthesis has nothing left (tests); True when it finished."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    return True
            time.sleep(0.02)
        return False


# ---- faults on purpose -----------------------------------------------------------------------------------------
GARBLE_MODES = ("swap", "drop", "noise")


def garble(audio: np.ndarray, mode: str, rng, other: np.ndarray | None = None) -> np.ndarray:
    """``audio`` made wrong the way a busy TTS server makes it wrong, at the same length (the timing stays):
    ``swap`` carries another request's speech, ``drop`` loses words (spans of the speech replaced by quiet),
    ``noise`` buries the speech in loud noise. ``rng`` is a ``random.Random``: the same seed, the same damage."""
    out = audio.copy()
    if mode == "swap" and other is not None and other.size:
        n = min(out.size, other.size)
        out[:] = FLOOR
        out[:n] = other[:n]
        return out
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    start, end = (int(loud[0]), int(loud[-1])) if loud.size else (0, audio.size)
    if mode == "drop":
        third = (end - start) // 3
        for k in range(3):  # in each third of the speech a gap of 45-60% of it: about half the words go
            width = int(third * rng.uniform(0.45, 0.6))
            at = start + k * third + int(rng.uniform(0, max(1, third - width)))
            out[at:at + width] = FLOOR
        return out
    level = float(np.sqrt(np.mean(np.square(audio[start:end])))) if end > start else 0.1
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 2.5 * max(level, 0.02), audio.size)
    return np.clip(out + noise.astype(np.float32), -0.99, 0.99).astype(np.float32)


def _python() -> str:
    """This interpreter as a program: ``sys.executable``, or inside Triton's stub (an embedded interpreter,
    whose ``sys.executable`` may be the stub itself) the ``python3`` on PATH, which is the one it embeds."""
    exe = sys.executable or ""
    if os.path.basename(exe).startswith("python"):
        return exe
    return shutil.which("python3") or "python3"


def main(argv: list[str]) -> int:
    """``python speech.py CACHE_DIR``: speak ``[text, samples]`` JSON lines from stdin into the cache, at the
    lowest priority and one such process at a time per cache (a file lock): every instance of a server may miss
    the same new text at once, and on a small machine their syntheses would otherwise crowd its cores."""
    import fcntl

    with contextlib.suppress(OSError):
        os.nice(19)
    cache = SpeechCache(argv[0] if argv else None)
    wanted = [json.loads(line) for line in sys.stdin if line.strip()]
    os.makedirs(cache.directory, exist_ok=True)
    with open(os.path.join(cache.directory, ".speaking.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for text, samples in wanted:
            cache.make(text, int(samples))  # one another process made meanwhile is read, not made again
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
