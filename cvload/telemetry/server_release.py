"""What a real Triton server did after a barge-in: from its request trace (per request) and its token2wav statistics
(the whole run).

Triton's trace (``--trace-config triton,file=F``, level ``TIMESTAMPS``) stamps each request's ``REQUEST_END`` and
each model execution's ``COMPUTE_START``/``COMPUTE_END`` on the server's steady clock, which on Linux is
``CLOCK_MONOTONIC``: ``time.monotonic()`` of this host when cvload runs beside the server. A BLS front model's
child requests (``tensorrt_llm``, ``token2wav``) are traced under it (``parent_id``) when the front passes its
trace on (``pb_utils.InferenceRequest(..., trace=request.trace())``). An abandoned request's *release* is the
latest end in its tree; its ``token2wav`` calls still running or started after the abandon made audio nobody heard.

Without the trace, the statistics say it for the whole run: ``token2wav`` calls during the run minus the chunks
the clients received are calls whose audio nobody received (one call makes one chunk in the CosyVoice2 front).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvload.telemetry.triton_stats import normalize_stats

TOKEN2WAV = "token2wav"  # the CosyVoice2 repository's vocoder model: one call per streamed chunk
# Tracing on for a run: every request (rate 1), its times, a file per finished request tree (``FILE.<n>``), so
# a trace can be read during and right after the run (frequency 0 writes only when the server stops).
TRACE_ON: dict[str, list[str]] = {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"], "trace_count": ["-1"],
                                  "log_frequency": ["1"]}
TRACE_KEYS = tuple(TRACE_ON)
QUIET_S = 1.0  # no new token2wav call for this long: the server is done with the run's requests
TRACE_GRACE_S = 3.0  # once it is, how long a trace may still take to reach its file


@dataclass
class Traced:
    """One traced request: its model, the client's request id, its parent's trace id, and its timestamps (s)."""

    id: int
    model: str = ""
    request_id: str = ""
    parent: int | None = None
    times: dict[str, list[float]] = field(default_factory=dict)

    def last(self, name: str) -> float | None:
        values = self.times.get(name)
        return max(values) if values else None

    def first(self, name: str) -> float | None:
        values = self.times.get(name)
        return min(values) if values else None

    @property
    def end(self) -> float | None:
        """When the server was done with it: its last REQUEST_END or COMPUTE_END."""
        ends = [t for t in (self.last("REQUEST_END"), self.last("COMPUTE_END")) if t is not None]
        return max(ends) if ends else None


def trace_files(path: Path) -> list[Path]:
    """The trace file and the ones Triton writes beside it with a log frequency (``FILE.0``, ``FILE.1``...)."""
    return sorted(p for p in [path, *path.parent.glob(path.name + ".*")] if p.is_file())


def parse_trace(text: str) -> list[dict[str, Any]]:
    """A trace file's objects; Triton writes a JSON array, left without its ``]`` until the file is closed."""
    decoder, i = json.JSONDecoder(), 0
    out: list[dict[str, Any]] = []
    while True:
        while i < len(text) and text[i] in "[], \n\r\t":
            i += 1
        if i >= len(text):
            return out
        try:
            obj, i = decoder.raw_decode(text, i)
        except ValueError:  # a file being written
            return out
        if isinstance(obj, dict):
            out.append(obj)


class TraceReader:
    """Every traced request of the files at ``path``, by trace id (a trace's lines are spread over its file); read
    again, only files new or changed since are parsed (a long run leaves a file per request)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[Path, tuple[int, int]] = {}
        self.found: dict[int, Traced] = {}

    def read(self) -> dict[int, Traced]:
        for file in trace_files(self.path):
            try:
                stat = file.stat()
                if self.seen.get(file) == (stat.st_mtime_ns, stat.st_size):
                    continue
                objects = parse_trace(file.read_text(errors="replace"))
            except OSError:
                continue
            self.seen[file] = (stat.st_mtime_ns, stat.st_size)
            for obj in objects:
                self._add(obj)
        return self.found

    def _add(self, obj: dict[str, Any]) -> None:
        if not isinstance(obj.get("id"), int):
            return
        t = self.found.setdefault(obj["id"], Traced(obj["id"]))
        if "model_name" in obj:
            t.model, t.request_id = str(obj["model_name"]), str(obj.get("request_id", ""))
            t.parent = obj.get("parent_id") if isinstance(obj.get("parent_id"), int) else None
        for stamp in obj.get("timestamps") or []:
            times = t.times.setdefault(str(stamp.get("name")), [])
            value = float(stamp.get("ns", 0)) / 1e9
            if value not in times:  # a file read again as it grew
                times.append(value)


def read_trace(path: Path) -> dict[int, Traced]:
    """Every traced request of the files at ``path``, by trace id."""
    return TraceReader(path).read()


def _tree(top: Traced, children: dict[int, list[Traced]]) -> list[Traced]:
    out, todo = [], [top]
    while todo:
        t = todo.pop()
        out.append(t)
        todo.extend(children.get(t.id, []))
    return out


def releases(abandoned: Sequence[tuple[str, float]], traced: dict[int, Traced],
             chunk_s: Callable[[int], float]) -> dict[int, dict[str, Any]]:
    """Per abandoned request (its id and monotonic abandon time, by index): ``server_release_ms`` (abandon until
    the latest end in its trace tree), ``server_token2wav_after_abandon`` (its token2wav calls that ended after
    the abandon: running then, or started later) and ``server_audio_after_abandon_s``, their audio estimated as
    the run's mean received chunk at the same position (``chunk_s(n)``: the n-th chunk of a request, from 0).
    A request whose front is not in the trace (yet) is left out."""
    tops: dict[str, Traced] = {}
    children: dict[int, list[Traced]] = {}
    for t in traced.values():
        if t.parent is not None:
            children.setdefault(t.parent, []).append(t)
        elif t.request_id and t.last("REQUEST_END") is not None:
            tops[t.request_id] = t
    out: dict[int, dict[str, Any]] = {}
    for i, (request_id, abandon) in enumerate(abandoned):
        top = tops.get(request_id)
        if top is None:
            continue
        tree = _tree(top, children)
        ends = [e for e in (t.end for t in tree) if e is not None]
        calls = sorted((t for t in tree if t.model == TOKEN2WAV and t.first("COMPUTE_START") is not None),
                       key=lambda t: t.first("COMPUTE_START") or 0.0)
        late = [n for n, t in enumerate(calls) if (t.end or 0.0) > abandon]
        out[i] = {"server_release_ms": round(max(0.0, max(ends) - abandon) * 1e3, 3),
                  "server_token2wav_after_abandon": len(late) if calls else None,
                  "server_audio_after_abandon_s": round(sum(chunk_s(n) for n in late), 6) if calls else None}
    return out


def wait_for_releases(abandoned: Sequence[tuple[str, float]], path: Path, chunk_s: Callable[[int], float],
                      wait_s: float) -> dict[int, dict[str, Any]]:
    """``releases`` once every abandoned request's trace was written (a front that ignores cancellation finishes,
    and its trace is written, only at the end of the request), or after ``wait_s``."""
    deadline, reader = time.monotonic() + wait_s, TraceReader(path)
    while True:
        found = releases(abandoned, reader.read(), chunk_s)
        if len(found) == len(abandoned) or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def token2wav_calls(statistics: dict[str, Any] | None) -> int | None:
    """Successful token2wav requests so far (Triton's statistics JSON, ``GET /v2/models/stats`` shape, read by
    the statistics reader of cvload.telemetry.triton_stats); None where the server has no such model or the
    JSON is not Triton's."""
    try:
        models = normalize_stats(statistics)
    except ValueError:
        return None
    return next((int(c["success"][0]) for (name, _), c in models.items() if name == TOKEN2WAV), None)


@dataclass
class Settling:
    """Successive token2wav counts of a server finishing its work (a front that ignores cancellation goes on
    after the cancel): the last count, when it last changed, and whether none was new for ``QUIET_S``."""

    last: int
    changed: float = field(default_factory=time.monotonic)

    def see(self, count: int | None) -> None:
        """A new reading; None (the statistics did not answer) changes nothing."""
        if count is not None and count != self.last:
            self.last, self.changed = count, time.monotonic()

    def settled(self, deadline: float) -> bool:
        """No new call for ``QUIET_S``, or ``deadline`` (monotonic) passed: stop watching."""
        now = time.monotonic()
        return now - self.changed >= QUIET_S or now >= deadline


def wasted(calls: int, chunks_received: int, chunk_s: float) -> dict[str, Any]:
    """The run's token2wav calls beyond the chunks clients received: audio made that nobody received."""
    excess = max(0, calls - chunks_received)
    return {"token2wav_calls": calls, "chunks_received": chunks_received, "token2wav_unreceived": excess,
            "audio_unreceived_s": round(excess * chunk_s, 6)}
