"""Prompt resampling: python-soxr (what cvload uses) against the hand-written polyphase filter it replaced.

A 3 s 44.1 kHz stereo prompt (speech-band tones plus an out-of-band one) is mixed down to mono and resampled to
16 kHz by both, as ``cvload.settings.inputs.read_prompt`` does; both are timed in the same run (best and median of
``--repeat`` calls after one warm-up call) and checked for the same result: the in-band tones kept, the
out-of-band tone removed. Prints the times and their ratio; exit status 1 when soxr is slower than the reference.

    .venv/bin/python -m benchmarks.resample --repeat 50
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from cvload.settings.inputs import PROMPT_RATE, resample

RATE_IN = 44100
SECONDS = 3.0
IN_BAND_HZ = (220.0, 1000.0, 3500.0)
OUT_OF_BAND_HZ = 12000.0  # above 16 kHz's Nyquist (8 kHz): decimated naively it would fold onto ALIAS_HZ
ALIAS_HZ = PROMPT_RATE - OUT_OF_BAND_HZ


def reference_resample(x: np.ndarray, rate_in: int, rate_out: int, *, half_width: int = 10) -> np.ndarray:
    """cvload's former resampler, kept here verbatim as the baseline: polyphase windowed-sinc (Kaiser window,
    low-pass at 94% of the lower Nyquist frequency), output length ``len(x) * rate_out // rate_in``."""
    x = np.asarray(x, dtype=np.float64)
    if rate_in == rate_out:
        return x.astype(np.float32)
    g = math.gcd(int(rate_in), int(rate_out))
    up, down = rate_out // g, rate_in // g
    wide = max(up, down)
    length = 2 * half_width * wide + 1
    center = length // 2
    cutoff = 0.94 / wide  # of the upsampled rate's Nyquist
    n = np.arange(length) - center
    h = up * cutoff * np.sinc(cutoff * n) * np.kaiser(length, 8.6)
    taps = -(-length // up)
    poly = np.zeros(taps * up)
    poly[:length] = h
    poly = poly.reshape(taps, up).T  # poly[phase, j] = h[phase + j * up]
    n_out = len(x) * up // down
    xp = np.concatenate([np.zeros(taps), x, np.zeros(taps)])
    out = np.empty(n_out)
    block = 1 << 15
    j = np.arange(taps)
    for start in range(0, n_out, block):
        m = np.arange(start, min(n_out, start + block))
        pos = m * down + center
        k0 = pos // up
        idx = k0[:, None] - j[None, :] + taps
        np.clip(idx, 0, len(xp) - 1, out=idx)
        out[m] = np.einsum("ij,ij->i", poly[pos % up], xp[idx])
    return out.astype(np.float32)


def stereo_prompt() -> np.ndarray:
    """Frames x 2 channels, float32, as soundfile reads a stereo file."""
    t = np.arange(int(SECONDS * RATE_IN)) / RATE_IN
    left = sum(0.2 * np.sin(2 * np.pi * f * t) for f in IN_BAND_HZ) + 0.1 * np.sin(2 * np.pi * OUT_OF_BAND_HZ * t)
    right = 0.5 * left
    return np.stack([left, right], axis=1).astype(np.float32)


def to_prompt(stereo: np.ndarray, fn: Callable[[np.ndarray, int, int], np.ndarray]) -> np.ndarray:
    return fn(stereo.mean(axis=1, dtype=np.float32), RATE_IN, PROMPT_RATE)


def time_it(stereo: np.ndarray, fn: Callable[[np.ndarray, int, int], np.ndarray], repeat: int) -> list[float]:
    to_prompt(stereo, fn)  # warm-up: imports, caches, first-touch of memory
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        to_prompt(stereo, fn)
        times.append(time.perf_counter() - started)
    return times


def tone_amplitude(y: np.ndarray, freq: float) -> float:
    """Amplitude of ``freq`` in ``y`` (edges trimmed), by projection on sine and cosine."""
    core = y[800:-800].astype(np.float64)
    t = (np.arange(len(core)) + 800) / PROMPT_RATE
    s, c = np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)
    return float(2 * math.hypot(core @ s, core @ c) / len(core))


def check(y: np.ndarray) -> dict[str, float]:
    """Mono mix amplitude per tone: 0.15 in band (mean of 0.2 and 0.1), 0 where the aliased tone would land."""
    found = {f"{f:g} Hz": tone_amplitude(y, f) for f in IN_BAND_HZ}
    found[f"alias {ALIAS_HZ:g} Hz"] = tone_amplitude(y, ALIAS_HZ)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per resampler (default 30)")
    args = parser.parse_args(argv)
    stereo = stereo_prompt()
    results = {}
    for name, fn in (("soxr", resample), ("reference", reference_resample)):
        times = time_it(stereo, fn, args.repeat)
        results[name] = (min(times), statistics.median(times))
        y = to_prompt(stereo, fn)
        amplitudes = ", ".join(f"{k} {v:.4f}" for k, v in check(y).items())
        print(f"{name:>9}: best {min(times) * 1e3:7.2f} ms  median {statistics.median(times) * 1e3:7.2f} ms  "
              f"{len(y)} samples  amplitudes: {amplitudes}")
    best = results["reference"][0] / results["soxr"][0]
    median = results["reference"][1] / results["soxr"][1]
    print(f"3 s 44.1 kHz stereo -> 16 kHz mono, {args.repeat} calls each: soxr is {best:.1f}x faster (best), "
          f"{median:.1f}x (median) than the reference")
    return 0 if median >= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
