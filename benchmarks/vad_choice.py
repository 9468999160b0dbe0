"""Which voice-activity detector finds where speech starts: webrtcvad, Silero, Silero plus cvload's energy edge.

Six English sentences spoken by hibari (a neural TTS at 24 kHz) are put behind 0, 0.1, 0.3 and 0.7 s of digital
silence, clean and with white noise at -60 and -45 dBFS (72 cases). The truth is the first sample above 2% of the
clean sentence's peak, plus the silence put before it. Each detector's onset error (ms, + is late) and CPU per
case are printed; cvload uses the one with the smallest p95 error (docs/speech.md). webrtcvad is measured where
installed (``pip install webrtcvad-wheels``; cvload does not depend on it).

    .venv/bin/python -m benchmarks.vad_choice
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable

import numpy as np

from cvload.listen.vad import VAD_RATE, _to_vad_rate, first_speech_window, speech_start

RATE = 24000
TEXTS = ("The quick brown fox jumps over the lazy dog.", "In 1998 the company sold 42 thousand units across Europe.",
         "Please call Stella and ask her to bring these things.", "Several of the reporters asked about the new schedule.",
         "How much wood would a woodchuck chuck?", "Fish swim in the cold northern sea.")
PADS_S = (0.0, 0.1, 0.3, 0.7)
NOISE_DBFS = (None, -60.0, -45.0)


def webrtc_onset(audio: np.ndarray, rate: int, run: int = 3) -> float | None:
    import webrtcvad

    vad = webrtcvad.Vad(3)
    pcm = (np.clip(_to_vad_rate(audio, rate), -1, 1) * 32767).astype("<i2")
    frame, count = VAD_RATE // 100, 0
    for i in range(0, len(pcm) - frame + 1, frame):
        if vad.is_speech(pcm[i:i + frame].tobytes(), VAD_RATE):
            count += 1
            if count == run:
                return (i - (run - 1) * frame) / VAD_RATE
        else:
            count = 0
    return None


def silero_window(audio: np.ndarray, rate: int) -> float | None:
    window = first_speech_window(_to_vad_rate(audio, rate))
    return None if window is None else window / VAD_RATE


def silero_edge(audio: np.ndarray, rate: int) -> float | None:
    return speech_start(audio, rate)


def main() -> None:
    import hibari

    voice = hibari.Hibari()
    rng = np.random.default_rng(0)
    cases = []
    for text in TEXTS:
        clean = np.asarray(voice(text), np.float32)
        onset = np.nonzero(np.abs(clean) > 0.02 * np.abs(clean).max())[0][0] / RATE
        for pad in PADS_S:
            for noise in NOISE_DBFS:
                audio = np.concatenate([np.zeros(int(pad * RATE), np.float32), clean])
                if noise is not None:
                    audio = audio + (10 ** (noise / 20) * rng.standard_normal(len(audio))).astype(np.float32)
                cases.append((audio, pad + onset))
    detectors: dict[str, Callable[[np.ndarray, int], float | None]] = {}
    if importlib.util.find_spec("webrtcvad") is not None:
        detectors["webrtcvad (mode 3, 3 x 10 ms)"] = webrtc_onset
    detectors["silero (32 ms windows)"] = silero_window
    detectors["silero + energy edge (cvload)"] = silero_edge
    silero_edge(cases[0][0], RATE)  # load the model before timing
    print(f"{len(cases)} cases: {len(TEXTS)} sentences x leading silence {PADS_S} s x noise {NOISE_DBFS} dBFS")
    noises = "  ".join(f"{'clean' if n is None else f'{n:g} dB':>8}" for n in NOISE_DBFS)
    print(f"{'detector':34} {'median ms':>10} {'p95 |err|':>10} {'max |err|':>10} {'missed':>7} {'CPU/case':>9}   "
          f"median by noise: {noises}")
    for name, detect in detectors.items():
        errors, cpu = [], 0.0
        for audio, truth in cases:
            started = time.process_time()
            found = detect(audio, RATE)
            cpu += time.process_time() - started
            errors.append(np.nan if found is None else (found - truth) * 1000)
        err = np.array(errors)
        print(f"{name:34} {np.nanmedian(err):10.1f} {np.nanpercentile(np.abs(err), 95):10.1f} "
              f"{np.nanmax(np.abs(err)):10.1f} {int(np.isnan(err).sum()):7d} {cpu / len(cases) * 1000:7.2f}ms   "
              + " " * 17 + "  ".join(f"{np.nanmedian(err[k::len(NOISE_DBFS)]):8.1f}" for k in range(len(NOISE_DBFS))))


if __name__ == "__main__":
    main()
