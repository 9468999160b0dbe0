"""What a barge-in run measured (``--barge-in``): the summary's ``barge_in`` section and ``barge_in.jsonl``.

Per abandoned request: when it was abandoned, how long until the server stopped (its *release*) and the audio made
after the abandon. The release comes from the server where it says (the emulated servers' own trace, or a real
Triton server's request trace with ``--triton-trace``: cvload/telemetry/server_release.py; both on this host's monotonic
clock), else from the client: abandon until the call was closed (the last byte received), which only bounds what
the server did. Triton's token2wav statistics give the audio made that nobody received over the whole run. And what abandoning cost everyone
else: the first chunk of the requests that were not abandoned, against the same load without barge-in
(``--barge-in-baseline``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvload.measure.metrics import BY_NAME, STAT_KEYS, FloatColumn, counted, stats
from cvload.results.records import ERR_BARGED_IN, ERR_CANCELLED, RequestRecord
from cvload.telemetry.server_release import wait_for_releases, wasted

FILE = "barge_in.jsonl"  # one line per abandoned request, in the results folder
FIRST = BY_NAME["first_chunk_latency_ms"]
SERVER_COVERAGE = 0.95  # release_ms is the server's when its trace has at least this share of abandoned requests
# Objectives may name these (cvload/measure/slo.py): ``barge_in.release_ms.p95<100ms``.
OBJECTIVE_METRICS: dict[str, str] = {
    **{f"barge_in.{name}.{s}": "ms" for name in ("release_ms", "client_release_ms", "server_release_ms",
                                                 "survivors.first_chunk_latency_ms") for s in STAT_KEYS
       if s != "count"},
    "barge_in.survivors.first_chunk_p95_vs_baseline": "plain",
    "barge_in.server_audio_after_abandon_s": "s",
    "barge_in.server_token2wav.audio_unreceived_s": "s",
}


@dataclass
class Abandoned:
    """One abandoned request, as the client saw it (monotonic times of this host)."""

    request_id: str
    sent: float
    abandon: float  # monotonic time of the abandon signal
    first_ms: float | None
    closed: float  # when its call was closed (the last byte it received)
    audio_after_s: float  # audio received after the abandon signal

    def row(self, trace: dict[str, Any] | None) -> dict[str, Any]:
        row: dict[str, Any] = {"request_id": self.request_id, "abandon_ms": round((self.abandon - self.sent) * 1e3, 3),
                               "first_chunk_ms": self.first_ms,
                               "client_release_ms": round((self.closed - self.abandon) * 1e3, 3),
                               "audio_after_abandon_s": round(self.audio_after_s, 6)}
        if trace is not None:
            stopped = trace["arrival"] + trace["stopped"]
            row["server_release_ms"] = round(max(0.0, stopped - self.abandon) * 1e3, 3)
            row["server_audio_after_abandon_s"] = trace.get("after_cancel_s")
            row["server_noticed_ms"] = None if trace.get("cancelled") is None else \
                round((trace["arrival"] + trace["cancelled"] - self.abandon) * 1e3, 3)
        return row


@dataclass
class BargeInTally:
    """Folds a run's records (a listener of the engine) into what the ``barge_in`` section needs."""

    policy: str
    abandoned: list[Abandoned] = field(default_factory=list)
    survivors_first: FloatColumn = field(default_factory=FloatColumn)
    chunks: int = 0  # every chunk any request received, warmup included: the server made each one
    position_s: list[list[float]] = field(default_factory=list)  # per chunk position: [seconds, count]

    def add(self, r: RequestRecord) -> None:
        self.chunks += len(r.chunk_samples)
        for n, samples in enumerate(r.chunk_samples if r.sample_rate else []):
            if n == len(self.position_s):
                self.position_s.append([0.0, 0.0])
            self.position_s[n][0] += samples / r.sample_rate
            self.position_s[n][1] += 1
        if r.warmup or r.error_kind == ERR_CANCELLED:
            return
        if r.error_kind == ERR_BARGED_IN and r.abandon_offset is not None:
            after = sum(n for t, n in zip(r.chunk_offsets, r.chunk_samples) if t > r.abandon_offset)
            self.abandoned.append(Abandoned(r.request_id, r.sent, r.sent + r.abandon_offset, FIRST.of(r),
                                            r.sent + (r.end_offset or r.abandon_offset),
                                            after / r.sample_rate if r.sample_rate else 0.0))
            return
        value = counted(r, FIRST)
        if value is not None:
            self.survivors_first.append(value)

    def chunk_s(self, n: int) -> float:
        """Mean seconds of the run's received chunks at position ``n`` (from 0); the last position's past it."""
        if not self.position_s:
            return 0.0
        total, count = self.position_s[min(n, len(self.position_s) - 1)]
        return total / count if count else 0.0

    def later_chunk_s(self) -> float:
        """Mean seconds of a received chunk after a request's first: what an abandoned request no longer gets."""
        later = self.position_s[1:] or self.position_s
        count = sum(c for _, c in later)
        return sum(t for t, _ in later) / count if count else 0.0

    def summary(self, out_dir: Path | None, trace_path: Path | None = None, *, wait_s: float = 0.0,
                baseline: dict[str, Any] | None = None, baseline_dir: str | None = None,
                triton_trace: Path | None = None, token2wav_calls: int | None = None) -> dict[str, Any]:
        """The ``barge_in`` section; writes ``barge_in.jsonl`` into ``out_dir``. ``trace_path``: the emulated
        server's trace, waited for up to ``wait_s`` until every abandoned request is in it (a server that ignores
        cancellation writes its line when it finally stops); ``triton_trace``: Triton's request trace instead
        (cvload/telemetry/server_release.py), waited for alike. ``token2wav_calls``: the server's token2wav calls during the
        run (its statistics). ``baseline``: the summary of the same load without barge-in."""
        traces = match_traces(self.abandoned, trace_path, wait_s) if trace_path is not None else {}
        rows = [a.row(traces.get(i)) for i, a in enumerate(self.abandoned)]
        source = "emulator_trace"
        if triton_trace is not None:
            source = "triton_trace"
            found = wait_for_releases([(a.request_id, a.abandon) for a in self.abandoned], triton_trace,
                                      self.chunk_s, wait_s)
            for i, extra in found.items():
                rows[i].update(extra)
        if out_dir is not None:
            with open(Path(out_dir) / FILE, "w") as fh:
                fh.writelines(json.dumps(row) + "\n" for row in rows)
        client = [row["client_release_ms"] for row in rows]
        server = [row["server_release_ms"] for row in rows if "server_release_ms" in row]
        # Triton's trace loses the odd request tree (1 in 300-500 here): the server's view when it covers most
        from_server = bool(rows) and len(server) >= SERVER_COVERAGE * len(rows)
        out: dict[str, Any] = {
            "policy": self.policy,
            "abandoned": len(rows),
            "release_source": "server" if from_server else "client",
            "release_ms": stats(server if from_server else client),
            "client_release_ms": stats(client),
            "audio_received_after_abandon_s": round(sum(row["audio_after_abandon_s"] for row in rows), 6),
            "survivors": {"first_chunk_latency_ms": stats(self.survivors_first.view())},
        }
        if server:
            out["server_release_ms"] = stats(server)
            out["server_audio_after_abandon_s"] = round(sum(row["server_audio_after_abandon_s"] or 0.0
                                                            for row in rows if "server_release_ms" in row), 6)
            out["server_traced"] = len(server)
            out["server_release_source"] = source
            late = [row.get("server_token2wav_after_abandon") for row in rows if "server_release_ms" in row]
            if any(n is not None for n in late):
                out["server_token2wav_after_abandon"] = sum(n or 0 for n in late)
        if token2wav_calls is not None:
            out["server_token2wav"] = wasted(token2wav_calls, self.chunks, self.later_chunk_s())
        if baseline is not None:
            base = (baseline.get("metrics") or {}).get(FIRST.name) or {}
            out["baseline"] = {"first_chunk_latency_ms": base, "results": baseline_dir}
            mine = out["survivors"]["first_chunk_latency_ms"].get("p95")
            if mine is not None and base.get("p95"):
                out["survivors"]["first_chunk_p95_vs_baseline"] = mine / base["p95"]
        return out


def match_traces(abandoned: list[Abandoned], path: Path, wait_s: float) -> dict[int, dict[str, Any]]:
    """Each abandoned request's line of the server trace (by request id, else the line whose arrival is nearest
    after its send: the OpenAI-style and runtime servers name requests themselves)."""
    deadline = time.monotonic() + wait_s
    while True:
        lines = _read(path)
        found = _match(abandoned, lines)
        if len(found) == len(abandoned) or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return [t for t in out if "stopped" in t and "arrival" in t]


def _match(abandoned: list[Abandoned], lines: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """By request id where the server kept the client's; else the line sent after the request whose notice of a
    cancellation is nearest its abandon (then, for a request that ended before the server noticed, the nearest
    arrival after its send)."""
    by_id = {t.get("id"): t for t in lines}
    found = {i: by_id[a.request_id] for i, a in enumerate(abandoned) if a.request_id in by_id}
    ids = {a.request_id for a in abandoned}
    free = [k for k, t in enumerate(lines) if t.get("id") not in ids]
    taken: set[int] = set()
    for noticed in (True, False):
        for i in sorted(set(range(len(abandoned))) - set(found), key=lambda i: abandoned[i].abandon):
            a = abandoned[i]

            def distance(k: int, a: Abandoned = a, noticed: bool = noticed) -> float:
                t = lines[k]
                if t["arrival"] < a.sent - 0.002 or t["arrival"] - a.sent > 0.5:
                    return math.inf
                if noticed:
                    return abs(t["arrival"] + t["cancelled"] - a.abandon)
                return t["arrival"] - a.sent

            pool = [k for k in free if k not in taken and (lines[k].get("cancelled") is not None) == noticed]
            best = min(pool, key=distance, default=None)
            if best is not None and distance(best) < math.inf:
                taken.add(best)
                found[i] = lines[best]
    return found


def line(summary: dict[str, Any]) -> str | None:
    """One line for the console and the dashboard: abandoned, release p50/p95 and its source, survivors."""
    section = summary.get("barge_in")
    if not section:
        return None
    release = section.get("release_ms") or {}
    text = f"barge-in {section['policy']}: {section['abandoned']} abandoned"
    if release.get("p95") is not None:
        source = section["release_source"]
        if source == "server":
            source = section.get("server_release_source", source).replace("_", " ")
        text += f", release p50 {release['p50']:.0f} ms p95 {release['p95']:.0f} ms ({source})"
    if section.get("server_audio_after_abandon_s"):
        text += f", {section['server_audio_after_abandon_s']:.1f} s of audio made after abandon"
    unreceived = section.get("server_token2wav") or {}
    if unreceived.get("token2wav_unreceived"):
        text += (f", {unreceived['token2wav_unreceived']} token2wav calls ({unreceived['audio_unreceived_s']:.1f} s) "
                 "nobody received")
    ratio = (section.get("survivors") or {}).get("first_chunk_p95_vs_baseline")
    if ratio is not None:
        text += f", survivors' first chunk p95 x{ratio:.2f} vs baseline"
    return text
