"""HTTP streaming's event reader: what cutting and checking a megabyte-sized server-sent event costs the measuring
loop, cvload's reader against the one it replaced, same run.

Triton's ``generate_stream`` sends each audio chunk as one ``data: {json}`` event, its samples a JSON float array
(2 s of audio at 24 kHz: about a megabyte of text), arriving in reads of ``--read-kb``. Both readers get the same
reads and do what the stream reader does between two reads: stamp, cut events (``SseParser.feed``), check each
(``read_event``), keep the chunk until its request's audio check (the last ``KEPT`` chunks stay alive, so freeing
them is paid too). The reference is cvload's former reader, kept here verbatim: it joined each event's reads into
one fresh buffer and searched the whole array for a stray ``]``; the current one keeps the reads as they came
(``Parts``) and looks only at an event's head and its last two bytes. A third row times the bare floor: stamping
the reads and nothing else. Prints per-megabyte times (best and median of ``--repeat``) and the ratios.

    .venv/bin/python -m benchmarks.sse_events --repeat 20
    .venv/bin/python -m benchmarks.sse_events --read-kb 256 --events 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import orjson

from cvload.targets import triton_http
from cvload.targets.base import Chunk
from cvload.targets.sse import SseParser

SAMPLE_RATE = 24000
CHUNK_S = 2.0
KEPT = 16  # chunks alive at once (a few requests' worth, waiting for their audio checks)


# ---- the former reader, verbatim (cvload before the event was kept as its reads) ------------------------------
class FormerSseParser:
    def __init__(self) -> None:
        self._parts: list[bytes | memoryview] = []
        self._newline = False
        self._cr = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._cr:
            data, self._cr = b"\r" + data, False
        if b"\r" in data:
            if data.endswith(b"\r"):
                data, self._cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[bytes] = []
        parts, start = self._parts, 0
        if parts and data[:1] == b"\n" and parts[-1][-1:] == b"\n":
            parts[-1] = memoryview(parts[-1])[:-1]
            self._take(events)
            start = 1
        while (end := _blank_line(data, start)) >= 0:
            if end > start:
                parts.append(memoryview(data)[start:end])
                self._newline = self._newline or data.find(b"\n", start, end) >= 0
            self._take(events)
            start = end + 2
        if start < len(data):
            rest = data[start:] if start else data
            parts.append(rest)
            self._newline = self._newline or b"\n" in rest
        return events

    def _take(self, events: list[bytes]) -> None:
        parts, newline = self._parts[:], self._newline
        self._parts.clear()
        self._newline = False
        if not parts:
            return
        first = parts[0]
        if not newline and len(first) > 5 and first[:5] == b"data:":
            parts[0] = memoryview(first)[6 if first[5] == 0x20 else 5:]
            events.append(b"".join(parts))
            return
        raise AssertionError("the benchmark's events are one data line each")


def _blank_line(buffer: bytes, start: int) -> int:
    find = buffer.find
    size = len(buffer)
    while True:
        pos = find(b"\n", start)
        if pos < 0 or pos + 1 >= size:
            return -1
        if buffer[pos + 1] == 0x0A:
            return pos
        start = pos + 1


_ARRAY_KEY = b'"waveform":['


def former_read_event(payload: bytes) -> triton_http.JsonAudio:
    key = payload.find(_ARRAY_KEY, 0, 4096)
    close = len(payload) - 2
    if key >= 0 and payload.endswith(b"]}"):
        first = key + len(_ARRAY_KEY)
        if payload.find(b"]", first, close) < 0:
            rest = orjson.loads(payload[:first] + b"]}")
            if isinstance(rest, dict) and "error" not in rest:
                return triton_http.JsonAudio(payload, first, close)
    raise AssertionError("the benchmark's events have the usual layout")


# ---- the workload ----------------------------------------------------------------------------------------------
def event_stream(events: int) -> tuple[bytes, int]:
    """``events`` generate_stream events of CHUNK_S of speech-like audio each, and the size of one."""
    t = np.arange(int(CHUNK_S * SAMPLE_RATE)) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
    body = orjson.dumps({"id": "cvload-bench-0", "model_name": "cosyvoice2", "model_version": "1",
                         "waveform": [float(x) for x in audio]})
    event = b"data: " + body + b"\n\n"
    return event * events, len(event)


def reads_of(stream: bytes, read_bytes: int) -> list[bytes]:
    return [stream[i:i + read_bytes] for i in range(0, len(stream), read_bytes)]


Reader = Callable[[Sequence[bytes]], int]


def current(reads: Sequence[bytes]) -> int:
    parser, kept, clock, count = SseParser(), deque(maxlen=KEPT), time.monotonic, 0
    for data in reads:
        t = clock()
        for payload in parser.feed(data):
            kept.append(Chunk(t, triton_http.read_event(payload)))
            count += 1
    return count


def former(reads: Sequence[bytes]) -> int:
    parser, kept, clock, count = FormerSseParser(), deque(maxlen=KEPT), time.monotonic, 0
    for data in reads:
        t = clock()
        for payload in parser.feed(data):
            kept.append(Chunk(t, former_read_event(payload)))
            count += 1
    return count


def stamps_only(reads: Sequence[bytes]) -> int:
    clock, stamps = time.monotonic, []
    for _ in reads:
        stamps.append(clock())
    return len(stamps)


def time_reader(reader: Reader, reads: Sequence[bytes], repeat: int) -> list[float]:
    reader(reads)  # warm-up: first touch of memory, imports
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        reader(reads)
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=32, help="events per pass (default 32)")
    parser.add_argument("--read-kb", type=int, default=64, help="bytes per read, KiB (default 64)")
    parser.add_argument("--repeat", type=int, default=20, help="timed passes per reader (default 20)")
    args = parser.parse_args(argv)

    stream, event_bytes = event_stream(args.events)
    reads = reads_of(stream, args.read_kb * 1024)
    assert current(reads) == former(reads) == args.events
    # Both readers find the same samples.
    now = SseParser().feed(stream[:event_bytes])[0]
    np.testing.assert_array_equal(triton_http.read_event(now).decode(),
                                  former_read_event(FormerSseParser().feed(stream[:event_bytes])[0]).decode())

    mb = len(stream) / 1e6
    rows = {name: time_reader(reader, reads, args.repeat)
            for name, reader in (("former (join)", former), ("current (parts)", current), ("stamps only", stamps_only))}
    print(f"{args.events} events of {event_bytes / 1e6:.2f} MB ({CHUNK_S:g} s of audio as JSON) in reads of "
          f"{args.read_kb} KiB, {args.repeat} passes; ms of the measuring loop per MB of events:")
    best = {name: min(times) / mb * 1e3 for name, times in rows.items()}
    median = {name: statistics.median(times) / mb * 1e3 for name, times in rows.items()}
    for name in rows:
        print(f"  {name:<16} best {best[name]:8.4f}   median {median[name]:8.4f}")
    ratio_best = best["current (parts)"] / best["former (join)"]
    ratio_median = median["current (parts)"] / median["former (join)"]
    print(f"current / former: {ratio_best:.3f} (best), {ratio_median:.3f} (median)")
    return 0 if ratio_median < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
