"""Audio sanity per request, accumulated chunk by chunk: a fast server producing broken audio must not pass.

The checks catch failures users report on real deployments: a stalled server returning 0.04 s of audio for a
sentence, silence, NaN/Inf from a broken vocoder, and clipping.

They run after a request's final response (``check_request``), never between two reads: float32 chunks cost
~25 us per second of audio and are checked in place. Chunks still in wire form (``Chunk.decoded`` false: HTTP
streaming's JSON float arrays) cost ~2-5 ms per second of audio to parse: a thread beside the event loop
would hold the interpreter lock for most of that and, at 64 streams, use a whole core of the measuring process.
So they go, as the raw bytes they arrived in, to a small pool of helper processes, which parse them and return
the sample counts and flags (and the samples themselves only with ``--save-audio``). Wire forms that cannot
travel (``portable`` false) are parsed on one helper thread, in short slices.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import math
import os
import pickle
import queue
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cvload.results.records import FLAG_CLIPPING, FLAG_NONFINITE, FLAG_SILENT, FLAG_TOO_SHORT

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9\u00c0-\u024f']+")

SILENCE_RMS = 1e-4  # -80 dBFS over the whole request
CLIP_LEVEL = 0.999
CLIP_SHARE = 0.001  # more than 0.1% of samples at full scale
TOO_SHORT_FACTOR = 0.3  # audio under 30% of what the text needs at a brisk speaking rate


def expected_speech_s(text: str) -> float:
    """Seconds a brisk speaker needs for ``text``: ~4.5 CJK characters or ~2.7 words per second."""
    cjk = len(_CJK.findall(text))
    words = len(_WORD.findall(_CJK.sub(" ", text)))
    return cjk * 0.22 + words * 0.37


class AudioCheck:
    """Running sums over a request's chunks; ``flags()`` at the end."""

    __slots__ = ("samples", "sum_sq", "nonfinite", "clipped")

    def __init__(self) -> None:
        self.samples = 0
        self.sum_sq = 0.0
        self.nonfinite = 0
        self.clipped = 0

    def add(self, audio: npt.NDArray[np.floating[Any]]) -> None:
        if audio.size == 0:
            return
        # Common case in three passes without temporaries (float32 chunks are checked on the event loop): a
        # finite sum of squares means every sample is finite, and only a peak at full scale needs a count.
        sum_sq = float(np.dot(audio, audio))
        if math.isfinite(sum_sq):
            self.samples += int(audio.size)
            self.sum_sq += sum_sq
            if max(float(audio.max()), -float(audio.min())) >= CLIP_LEVEL:
                self.clipped += int(np.count_nonzero(np.abs(audio) >= CLIP_LEVEL))
            return
        finite = np.isfinite(audio)
        if not finite.all():
            self.nonfinite += int(audio.size - finite.sum())
            audio = audio[finite]
        self.samples += int(finite.size)
        self.sum_sq += float(np.dot(audio, audio))
        self.clipped += int(np.count_nonzero(np.abs(audio) >= CLIP_LEVEL))

    def flags(self, text: str, sample_rate: int) -> list[str]:
        out = []
        if self.nonfinite:
            out.append(FLAG_NONFINITE)
        if self.samples == 0 or (self.sum_sq / self.samples) ** 0.5 < SILENCE_RMS:
            out.append(FLAG_SILENT)
        if self.samples and self.clipped / self.samples > CLIP_SHARE:
            out.append(FLAG_CLIPPING)
        if self.samples / sample_rate < TOO_SHORT_FACTOR * expected_speech_s(text):
            out.append(FLAG_TOO_SHORT)
        return out


# While a helper thread parses, the event loop waits at most this long for the interpreter lock (Python's
# default, 5 ms, would show up in every chunk timestamp taken meanwhile).
SWITCH_INTERVAL_S = 0.0005
DECODER_PROCESSES = 2  # at 64 HTTP streams one process parses ~1 core's worth of JSON on a fast host
_executor: ThreadPoolExecutor | None = None


@dataclass
class RequestAudio:
    """What the checks made of one request's chunks."""

    samples: list[int] = field(default_factory=list)  # per chunk
    flags: list[str] = field(default_factory=list)
    audio: list[npt.NDArray[np.floating[Any]]] = field(default_factory=list)  # the chunks' samples, only when asked to keep them
    speech_start_s: float | None = None  # where speech starts (cvload.listen.vad), only when asked to look (--onset)


def _check(chunks: Sequence[Any], text: str, sample_rate: int, keep_audio: bool, onset: bool = False) -> RequestAudio:
    check, out = AudioCheck(), RequestAudio()
    arrays = []
    for chunk in chunks:
        audio = chunk.audio
        out.samples.append(int(audio.size))
        check.add(audio)
        arrays.append(audio)
    if keep_audio:
        out.audio = arrays
    out.flags = check.flags(text, sample_rate)
    if onset:
        out.speech_start_s = _onset(arrays, sample_rate)
    return out


def _onset(arrays: Sequence[npt.NDArray[np.floating[Any]]], sample_rate: int) -> float | None:
    """Where speech starts (run in a decoder process: a voice-activity detector is too heavy for the event loop)."""
    from cvload.listen.vad import speech_start

    return speech_start(arrays, sample_rate)


def _head(arrays: Sequence[npt.NDArray[np.floating[Any]]], sample_rate: int) -> list[npt.NDArray[np.floating[Any]]]:
    """The first ``cvload.listen.vad.MAX_SCAN_S`` of the audio, as views: all the onset search may read."""
    from cvload.listen.vad import MAX_SCAN_S

    limit, held, out = int(MAX_SCAN_S * sample_rate), 0, []
    for audio in arrays:
        if held >= limit:
            break
        out.append(audio[: limit - held])
        held += len(out[-1])
    return out


def _portable(chunk: Any) -> bool:
    return bool(chunk.decoded or getattr(chunk.lazy, "portable", False))


class DecoderUnavailable(Exception):
    """The helper processes cannot be started or died: the helper thread parses instead."""


class Decoders:
    """A few helper processes that run ``_check`` on pickled chunks, each fed by a thread of this process.

    Not ``concurrent.futures.ProcessPoolExecutor``: its start methods import the program's main module again
    in every helper (a script without a ``__main__`` guard would run twice), and fork is unsafe beside gRPC's
    threads. A helper is ``python -c`` importing this module only; it exits when its pipe closes.
    """

    def __init__(self, count: int, *, idle: bool = False) -> None:
        """``idle``: the helpers run under Linux's SCHED_IDLE (only on CPU time nothing else wants), for work that
        may fall behind (the recognisers of cvload.listen.live) rather than take a core from the measurement."""
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.broken: str | None = None
        self.pids: list[int] = []
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        self._processes = []
        for n in range(count):
            process = subprocess.Popen(
                [sys.executable, "-c", f"from cvload.measure.audio_checks import _serve; _serve(idle={idle})"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=False)
            self._processes.append(process)
            self.pids.append(process.pid)
            threading.Thread(target=self._feed, args=(process,), name=f"cvload-decoder-{n}", daemon=True).start()

    def submit(self, loop: asyncio.AbstractEventLoop, *args: Any) -> asyncio.Future[Any]:
        if self.broken is not None:
            raise DecoderUnavailable(self.broken)
        future = loop.create_future()
        self._jobs.put((loop, future, args))
        return future

    def _feed(self, process: subprocess.Popen[bytes]) -> None:
        stdin, stdout = process.stdin, process.stdout
        assert stdin is not None and stdout is not None
        for pipe in (stdin, stdout):  # a megabyte per write instead of 64 KiB: fewer wake-ups on both sides
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, 1 << 20)
        while (job := self._jobs.get()) is not None:
            loop, future, args = job
            try:
                _write_frame(stdin.fileno(), args)
                ok, value = _read_frame(stdout)
            except Exception as exc:  # noqa: BLE001 - a dead helper fails its job; the others fall back
                self.broken = f"audio decoder process {process.pid} failed: {exc!r}"
                _answer(loop, future, False, DecoderUnavailable(self.broken))
                return
            _answer(loop, future, ok, value)

    def close(self) -> None:
        for _ in self._processes:
            self._jobs.put(None)
        for process in self._processes:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=2.0)


# A frame: its pickle's length and its out-of-band buffers' count, their lengths, the pickle, the buffers
# (protocol 5: a megabyte payload is written from where it lies instead of being copied into the pickle).
_LENGTH = struct.Struct("<Q")
_IOV_MAX = 512  # buffers per writev (Linux allows 1024)
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), named in the fcntl module only from Python 3.10 on some builds


def _write_frame(fd: int, value: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    header = b"".join(_LENGTH.pack(n) for n in (len(data), len(views), *(v.nbytes for v in views)))
    # One writev for many buffers: HTTP streaming's JSON audio travels as the pieces of the reads it came in.
    pending = [view for view in (memoryview(header), memoryview(data), *views) if view.nbytes]
    while pending:
        written = os.writev(fd, pending[:_IOV_MAX])
        while written and pending:
            if written >= pending[0].nbytes:
                written -= pending.pop(0).nbytes
            else:
                pending[0], written = pending[0][written:], 0


def _read_exactly(stream: Any, size: int) -> bytearray:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = stream.readinto(view[got:])
        if not n:
            raise EOFError("the other side of the decoder pipe closed it")
        got += n
    return buffer


def _read_frame(stream: Any) -> Any:
    size, count = _LENGTH.unpack(_read_exactly(stream, 8)), _LENGTH.unpack(_read_exactly(stream, 8))
    lengths = [_LENGTH.unpack(_read_exactly(stream, 8))[0] for _ in range(count[0])]
    data = _read_exactly(stream, size[0])
    return pickle.loads(data, buffers=[_read_exactly(stream, n) for n in lengths])


def _answer(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Hand a job's outcome to its loop. A loop closed meanwhile (its run ended with the job in flight) waits for
    nothing: the outcome is dropped, and this helper's thread lives on to serve the next loop's jobs (it used to
    die on the closed loop's RuntimeError, and once every thread had, every later job waited forever)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_resolve, future, ok, value)


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _serve(idle: bool = False) -> None:
    """A decoder process: read a pickled (function, *args) from stdin, write the pickled outcome to stdout."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.fileno()
    with contextlib.suppress(OSError):
        os.nice(10)  # background work: where CPUs are short, the measuring process and a local server go first
    if idle and hasattr(os, "sched_setscheduler"):
        with contextlib.suppress(OSError):  # only the CPU time no other process wants
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while True:
        try:
            function, *args = _read_frame(stdin)
        except EOFError:
            return
        try:
            outcome: tuple[bool, Any] = (True, function(*args))
        except Exception as exc:  # noqa: BLE001 - a TargetError (malformed audio) goes back to its request
            outcome = (False, exc)
        _write_frame(stdout, outcome)


_decoders: Decoders | None = None
_decoders_failed: str | None = None


def _warm(modules: Sequence[str]) -> None:
    """Imports the wire forms' modules (run in a decoder process: unpickling them needs them)."""
    import importlib

    for name in modules:
        importlib.import_module(name)


async def start_decoders(modules: Sequence[str] = ()) -> None:
    """Start the helper processes now (about a second on a busy host) and import ``modules`` there (the
    wire forms' own modules): before a run, so the first requests' checks do not wait for them."""
    global _decoders, _decoders_failed
    if _decoders_failed is not None:
        return
    try:
        if _decoders is None:
            _decoders = Decoders(DECODER_PROCESSES)
            atexit.register(_decoders.close)
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(_decoders.submit(loop, _warm, list(modules)) for _ in range(DECODER_PROCESSES)))
    except (OSError, DecoderUnavailable) as exc:  # no processes here (sandbox, limits): the helper thread parses
        _decoders_failed = str(exc)


async def check_request(chunks: Sequence[Any], text: str, sample_rate: int, keep_audio: bool,
                        onset: bool = False) -> RequestAudio:
    """Sample counts, audio flags (and the audio with ``keep_audio``, where speech starts with ``onset``) of a
    finished request's chunks (``cvload.targets.base.Chunk``): in place when they are float32 already (the onset
    search then goes to a decoder process with the head of the audio), else in a decoder process (or, for wire
    forms that cannot travel or where no process could start, on the helper thread)."""
    global _decoders_failed
    loop = asyncio.get_running_loop()
    if all(chunk.decoded for chunk in chunks):
        checked = _check(chunks, text, sample_rate, keep_audio)
        if onset and chunks:
            head = _head([chunk.audio for chunk in chunks], sample_rate)
            checked.speech_start_s = await _elsewhere(loop, _onset, head, sample_rate)
        return checked
    if _decoders_failed is None and all(_portable(chunk) for chunk in chunks):
        if _decoders is None:
            await start_decoders()
        if _decoders is not None and _decoders_failed is None:
            try:
                remote: RequestAudio = await _decoders.submit(loop, _check, list(chunks), text, sample_rate,
                                                              keep_audio, onset)
                return remote
            except DecoderUnavailable as exc:
                _decoders_failed = str(exc)
    return await loop.run_in_executor(_helper_thread(), _check, chunks, text, sample_rate, keep_audio, onset)


def _helper_thread() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvload-audio")
    return _executor


async def _elsewhere(loop: asyncio.AbstractEventLoop, function: Any, *args: Any) -> Any:
    """``function(*args)`` in a decoder process (the helper thread where none could start)."""
    global _decoders_failed
    if _decoders_failed is None:
        if _decoders is None:
            await start_decoders()
        if _decoders is not None and _decoders_failed is None:
            try:
                return await _decoders.submit(loop, function, *args)
            except DecoderUnavailable as exc:
                _decoders_failed = str(exc)
    return await loop.run_in_executor(_helper_thread(), function, *args)
