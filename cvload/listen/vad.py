"""Where speech starts inside a response: Silero VAD (its ONNX model, run in onnxruntime) plus an energy edge.

Chosen by measurement (benchmarks/vad_choice.py, docs/speech.md): on neural-TTS sentences behind 0-0.7 s of
leading silence, clean or with noise at -60/-45 dBFS, webrtcvad is close on clean audio but calls faint noise
(-45 dBFS) speech and puts the onset up to a second early (p95 error 1 s), while Silero finds the first speech
window every time (p95 83 ms);
Silero decides in 32 ms windows, so the onset is then moved back to where the signal's energy rises (5 ms frames),
which brings the median error to 3 ms and the p95 to 54 ms. Silero's model ships in the ``silero-vad`` wheel, whose Python
code needs torch: cvload reads only the model file from it (installed without its dependencies, see the Makefile)
and runs it in onnxruntime, one thread.

This is heavy work for a measuring process (~1 ms of CPU per 32 ms window): it runs in the audio helper processes
(cvload.measure.audio_checks) during a run and in ``cvload check`` after one, never between two reads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvload.errors import UsageError

VAD_RATE = 16000
WINDOW = 512  # Silero's window at 16 kHz (32 ms), with 64 samples of context before it
CONTEXT = 64
THRESHOLD = 0.5  # Silero's own default speech probability
MAX_SCAN_S = 5.0  # no speech in the first 5 s: the onset is not found (a tone profile, a silent response)
_FRAME_S = 0.005
_BACK_S = 0.3  # how far before the first speech window the energy edge may lie

_session: Any = None


def model_path() -> Path:
    """The Silero model in the installed ``silero-vad`` package (found without importing it: that needs torch)."""
    spec = importlib.util.find_spec("silero_vad")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "data" / "silero_vad.onnx"
        if path.is_file():
            return path
    raise UsageError("speech onset needs the Silero VAD model, and the silero-vad package is not installed",
                     hint="pip install --no-deps silero-vad (only its model file is used; `make install` does this)")


def _vad() -> Any:
    global _session
    if _session is None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        _session = onnxruntime.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])
    return _session


def _to_vad_rate(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate == VAD_RATE:
        return np.asarray(audio, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(audio, dtype=np.float32), sample_rate, VAD_RATE).astype(np.float32)


def first_speech_window(audio16: np.ndarray) -> int | None:
    """Sample (at 16 kHz) where Silero's first speech window starts, or None."""
    session = _vad()
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(CONTEXT, np.float32)
    rate = np.array(VAD_RATE, np.int64)
    for start in range(0, len(audio16) - WINDOW + 1, WINDOW):
        x = np.concatenate([context, audio16[start:start + WINDOW]])[None]
        probability, state = session.run(None, {"input": x, "state": state, "sr": rate})
        context = x[0, -CONTEXT:]
        if probability[0, 0] > THRESHOLD:
            return start
    return None


def energy_edge(audio: np.ndarray, sample_rate: int, window_s: float) -> float:
    """The start of the rise in energy that leads into the speech window at ``window_s``: walking back from the
    window's loudest frames while 5 ms frames stay above max(4x the noise floor, 5% of the loudest frame)."""
    frame = max(1, int(_FRAME_S * sample_rate))
    low = max(0, int((window_s - _BACK_S) * sample_rate))
    high = min(len(audio), int((window_s + WINDOW / VAD_RATE) * sample_rate) + frame)
    segment = np.asarray(audio[low:high], dtype=np.float64)
    count = len(segment) // frame
    if count == 0:
        return window_s
    rms = np.sqrt((segment[: count * frame].reshape(count, frame) ** 2).mean(axis=1) + 1e-20)
    threshold = max(4 * max(float(np.percentile(rms, 10)), 1e-5), 0.05 * float(rms.max()))
    k = count - 1
    while k >= 0 and rms[k] < threshold:
        k -= 1
    if k < 0:
        return window_s
    while k > 0:  # back while loud, stepping over a dip of one or two frames (a stop consonant's closure)
        if rms[k - 1] >= threshold:
            k -= 1
        elif k >= 2 and rms[k - 2] >= threshold:
            k -= 2
        elif k >= 3 and rms[k - 3] >= threshold:
            k -= 3
        else:
            break
    return (low + k * frame) / sample_rate


def speech_start(chunks: Sequence[np.ndarray] | np.ndarray, sample_rate: int) -> float | None:
    """Seconds from the audio's first sample to where speech starts; None when the first ``MAX_SCAN_S`` hold none."""
    if isinstance(chunks, np.ndarray):
        audio = chunks[: int(MAX_SCAN_S * sample_rate)]
    else:
        head, held = [], 0
        limit = int(MAX_SCAN_S * sample_rate)
        for chunk in chunks:
            head.append(chunk[: limit - held])
            held += len(head[-1])
            if held >= limit:
                break
        audio = np.concatenate(head) if head else np.zeros(0, np.float32)
    if audio.size == 0:
        return None
    audio = np.nan_to_num(np.asarray(audio, dtype=np.float32))
    window = first_speech_window(_to_vad_rate(audio, sample_rate))
    if window is None:
        return None
    return energy_edge(audio, sample_rate, window / VAD_RATE)
