"""``cvload sweep``: one server, one engine, a series of load levels; the highest level meeting every objective.

The load changes live between levels (streams carry over, the server is never restarted). The sweep drives any
``LoadDriver`` (one process, ``--processes N``, ``--ray-address``) through the run's ``Events``: each request is
tagged with its level by its send time (``events.sent``; a fleet reports sends a little late, the time decides)
and routed, when it finishes (``events.finished``), into its level's results folder,
so a level is judged when its own requests are done while the next level already sends; a request still running
``--drain`` after its level's window is recorded there as incomplete. The layout and ``sweep.json`` schema are in
docs/sweep.md. Views (the console, the dashboard) only listen (``SweepView``).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import json
import math
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cvload import __version__
from cvload.apis import run_label
from cvload.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_SLO_FAILED, UsageError
from cvload.listen.live import ContentTally
from cvload.load.driver import LoadDriver
from cvload.load.engine import Engine
from cvload.load.session import STOP_SIGNALS, Session
from cvload.measure.barge_in_summary import BargeInTally
from cvload.measure.metrics import BY_NAME, FloatColumn, end_time, stats, summarize, values
from cvload.measure.slo import parse_objective, parse_objectives, request_check
from cvload.results.folder import SWEEP_SCHEMA  # the one name readers check sweep.json against
from cvload.results.records import RequestRecord
from cvload.results.writer import ResultsWriter, default_out_dir, write_json
from cvload.settings.config import AUDIBLE_OBJECTIVES, SEARCHES, RunConfig, Warmup
from cvload.targets.base import Chunk

DEFAULT_LEVEL_S = 10.0  # a level's measurement without --duration or --requests
WARMUP_PER_STREAM = 2  # default warm-up: requests per stream (closed loop) or per req/s (open loop)
STABLE_WINDOWS = 3  # --stable compares the first-chunk p95 of this many last windows
STABLE_MAX_WINDOWS = 5  # default --stable-max, in windows
DEFAULT_PRECISION = 0.1  # bisect's resolution for rates, req/s
RELEASE_WAIT_S = 5.0  # a judged level's requests released from their transcripts: how long their records may take to come
HEADLINE_METRICS = ("first_chunk_latency_ms", "second_chunk_latency_ms", "total_latency_ms", "rtf", "stall_count",
                    "first_audible_latency_ms", "required_prebuffer_ms", "content_error_rate")
HEADLINE_STATS = ("p50", "p90", "p95", "p99", "mean", "max", "count")
CSV_COLUMNS = ("value", "kind", "phase", "slo_passed", "requests", "ok", "failed", "incomplete", "error_rate",
               "throughput_rps", "goodput_rps", "first_chunk_p50_ms", "first_chunk_p95_ms", "first_chunk_p99_ms",
               "second_chunk_p95_ms", "rtf_p50", "first_audible_p95_ms", "required_prebuffer_p99_ms",
               "content_error_p95", "concurrency_achieved", "folder")


def objectives_for(config: RunConfig) -> list[str]:
    """The objectives every level is judged on: the given ones, plus (``--capacity-by audible``) each of
    ``AUDIBLE_OBJECTIVES`` whose metric the given ones do not name."""
    given = list(config.slo)
    if config.sweep.capacity_by != "audible":
        return given
    named = {parse_objective(text).metric.rpartition(".")[0] for text in given}
    named |= {parse_objective(text).metric for text in given}
    for text in AUDIBLE_OBJECTIVES:
        path = parse_objective(text).metric
        if path not in named and path.rpartition(".")[0] not in named:
            given.append(text)
    return given


def _share(text: str | float, what: str) -> float:
    """'10%' or 0.1 -> 0.1."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a share", hint="e.g. 10% or 0.1") from None
    if not 0.0 < value <= 1.0:
        raise UsageError(f"{what} {text!r} must be above 0 and at most 100%")
    return value


def sweeping(config: RunConfig) -> bool:
    """Whether a configuration asks for a sweep (levels in its sweep settings)."""
    return config.sweep.num_tasks is not None or config.sweep.rate is not None


@dataclass(frozen=True)
class SweepPlan:
    """The levels and rules of a sweep, checked before any load is sent."""

    kind: str  # "concurrency" (closed loop) or "rate" (open loop)
    levels: list[float]
    duration_s: float | None
    requests: int | None
    warmup: Warmup | None  # None: WARMUP_PER_STREAM per stream
    search: str | None = None
    precision: float = DEFAULT_PRECISION
    keep_going: int = 0
    stop_error_rate: float = 0.5
    min_capacity: float = 1.0
    stable: float | None = None
    stable_max_s: float | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig) -> SweepPlan:
        sw = cfg.sweep
        if sw.num_tasks is not None and sw.rate is not None:
            raise UsageError("--num-tasks levels (closed loop) and --rate levels (open loop) exclude each other")
        given = sw.levels()
        if given is None:
            raise UsageError("no levels to sweep", hint="give --num-tasks LEVELS (e.g. 1,2,4,8 or 1:64) or "
                             "--rate LEVELS (e.g. 0.5:8), or num_tasks/rate in the scenario's [sweep] table")
        kind, levels = given
        if sw.search is not None and sw.search not in SEARCHES:
            raise UsageError(f"--search {sw.search!r}: use one of {', '.join(SEARCHES)}")
        if sw.keep_going < 0:
            raise UsageError(f"--keep-going must not be negative, got {sw.keep_going}")
        if sw.precision is not None and sw.precision <= 0:
            raise UsageError(f"--precision must be positive, got {sw.precision}")
        stable = _share(sw.stable, "--stable") if sw.stable is not None else None
        if stable is not None and cfg.requests is not None:
            raise UsageError("--stable measures a level in windows of --duration: leave out --requests")
        duration = cfg.duration if cfg.duration is not None or cfg.requests is not None else DEFAULT_LEVEL_S
        if duration is not None and duration <= 0:
            raise UsageError(f"--duration must be positive in a sweep, got {duration:g} s")
        stable_max = sw.stable_max
        if stable is not None and stable_max is None:
            stable_max = STABLE_MAX_WINDOWS * (duration or DEFAULT_LEVEL_S)
        return cls(kind=kind, levels=levels, duration_s=duration, requests=cfg.requests,
                   warmup=None if cfg.warmup is None else cfg.warmup_spec(), search=sw.search,
                   precision=sw.precision or DEFAULT_PRECISION, keep_going=sw.keep_going,
                   stop_error_rate=_share(sw.stop_error_rate, "--stop-error-rate"), min_capacity=sw.min_capacity,
                   stable=stable, stable_max_s=stable_max)

    def value(self, level: float) -> float | int:
        """A level as shown and written: whole streams as integers."""
        return int(level) if self.kind == "concurrency" else level

    def settings(self, drain: float | None) -> dict[str, Any]:
        warm = "2 per stream" if self.warmup is None else (
            f"{self.warmup.requests} requests" if self.warmup.requests else f"{self.warmup.seconds:g} s")
        return {"search": self.search, "precision": self.precision if self.kind == "rate" else None,
                "keep_going": self.keep_going, "stop_error_rate": self.stop_error_rate,
                "min_capacity": self.min_capacity, "warmup": warm, "duration_s": self.duration_s,
                "requests": self.requests, "stable": self.stable, "stable_max_s": self.stable_max_s,
                "drain_s": drain}


@dataclass(eq=False)
class Level:
    """One measured level: its window, its requests, its verdict."""

    value: float
    kind: str
    phase: str  # "plan" or "bisect"
    number: int  # measuring order, from 1
    folder: Path
    writer: ResultsWriter
    warmup_target: int = 0  # warm-up requests to send (0: by time or none)
    state: str = "warmup"  # warmup -> measure -> closed
    applied: float = 0.0  # when the load changed to this level (monotonic): its warm-up runs from here
    started: float | None = None  # window start (monotonic)
    ended: float | None = None
    measured_sent: int = 0
    warm_sent: int = 0
    outstanding: int = 0  # sent and not yet finished (or judged incomplete)
    records: list[RequestRecord] = field(default_factory=list)
    late: int = 0  # finished after the level was judged (already counted as incomplete)
    judged: bool = False
    discarded: bool = False  # ended by the stop rules: its folder is gone
    stable: bool | None = None  # --stable: whether the windows agreed before --stable-max
    summary: dict[str, Any] | None = None
    # --check-content: requests and audio seconds waiting for a recogniser when the window closed
    content_backlog: tuple[int, float] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a state change or the last request back

    @property
    def slo_passed(self) -> bool | None:
        return None if self.summary is None or not self.summary["slo"] else bool(self.summary["slo_passed"])

    @property
    def error_rate(self) -> float:
        return float(self.summary["error_rate"]) if self.summary else 0.0


class SweepView(Protocol):
    """What a sweep tells a view: preparing, attach (the engine runs), level_started, level_judged, detach, final."""

    def preparing(self, config: RunConfig) -> None: ...

    def attach(self, sweep: Sweep) -> None: ...

    def level_started(self, sweep: Sweep, level: Level) -> None: ...

    def level_judged(self, sweep: Sweep, level: Level) -> None: ...

    def detach(self, sweep: Sweep) -> None: ...

    def final(self, sweep: Sweep, result: dict[str, Any]) -> None: ...


class Sweep:
    """Runs a sweep: ``await Sweep(config).run(view)`` returns the exit code and leaves ``sweep.json`` behind."""

    def __init__(self, config: RunConfig) -> None:
        self.user_config = config
        if config.barge_in_baseline:
            raise UsageError("--barge-in-baseline pairs one run with a run without barge-in, not a sweep",
                             hint="each level's summary has its barge_in section (survivors' first chunk); sweep "
                                  "again without --barge-in for the baseline, or leave --barge-in-baseline out")
        self.plan = SweepPlan.from_config(config)
        self.capacity_by = config.sweep.capacity_by
        self.objectives = parse_objectives(objectives_for(config))
        self.meets = request_check(self.objectives) or (lambda r: True)  # without objectives: goodput = ok/s
        first = self.plan.levels[0]
        closed = self.plan.kind == "concurrency"
        label = "sweep-" + run_label(config.api, config.protocol, config.mode, config.name)
        self.out_dir = Path(config.out) if config.out else default_out_dir(label)
        # The engine runs the whole sweep: first level's load, no limit or warm-up of its own (levels have theirs).
        engine_config = config.merged({"out": str(self.out_dir)})
        engine_config = dataclasses.replace(engine_config, num_tasks=int(first) if closed else None,
                                            rate=None if closed else first, duration=None, requests=None,
                                            warmup=None, ramp=0.0 if config.ramp is None else config.ramp,
                                            slo=objectives_for(config))  # the levels' summaries judge these
        self.session = Session(engine_config, until_drained=True)
        self.session.events.sent.add_listener(self._on_send)
        # After the session's own listeners (the root records.jsonl keeps every request).
        self.session.events.finished.add_listener(self._on_record)
        self.levels: list[Level] = []
        self.current: Level | None = None
        self.stopped_because: str | None = None
        self.started = 0.0
        self._owner: dict[int, Level] = {}
        # Requests in flight by index, with the chunks they received so far (a level is judged before they end).
        self._running: dict[int, tuple[RequestRecord, list[Chunk]]] = {}
        self._closed: list[Level] = []  # levels whose window ended, latest last (judged or not)
        # When every finished request was sent and finished (8 bytes each): what was in flight during each level.
        self._sent, self._finished = FloatColumn(), FloatColumn()
        self._stop = asyncio.Event()
        self._engine_done = asyncio.Event()
        self._judges: list[asyncio.Task[None]] = []
        self._first_fail: int | None = None  # number of the first level failing the objectives
        self._discarded = 0  # levels started and then ended by the stop rules
        self._interrupted = False
        self.listeners: list[Callable[[str, Level], None]] = []  # ("started" | "judged", level)
        self._view: SweepView | None = None

    @property
    def engine(self) -> LoadDriver:
        assert self.session.engine is not None
        return self.session.engine

    # ---- the lifecycle -------------------------------------------------------------------------------------------
    async def run(self, view: SweepView) -> int:
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        self._view = view
        try:
            view.preparing(self.user_config)
            engine = await self.session.prepare()
            self._rewrite_config()
            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, self.interrupt)
                handled.append(sig)
            view.attach(self)
            self.started = time.monotonic()
            running = asyncio.ensure_future(self._execute())
            running.add_done_callback(lambda _: self._engine_ended())
            try:
                await self._levels()
            finally:
                if not self._interrupted:
                    engine.drain()
                await running
                self._engine_done.set()
                await asyncio.gather(*self._judges)
                view.detach(self)
            result = self.result()
            self._write(result)
            view.final(self, result)
            await self.session.linger()
            return self.exit_code(result)
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            await self.session.close()
            for level in self.levels:
                level.writer.close()

    async def _execute(self) -> None:
        await self.session.execute()

    def _engine_ended(self) -> None:
        """The engine stopped on its own (the server died) or after ``end()``: no level may wait for sends."""
        engine = self.session.engine
        if engine is not None and engine.state.aborted:
            self.stopped_because = engine.state.aborted
        self._stop.set()
        if self.current is not None:
            self.current.changed.set()

    def interrupt(self) -> None:
        """The user's stop: stop sending, cancel what is in flight after a short drain, write what was judged."""
        self._interrupted = True
        self.stopped_because = self.stopped_because or "interrupted"
        self.session.stop_asked = True
        if self.session._linger_cut is not None:  # Ctrl-C while the metrics endpoint lingers: end it now
            self.session._linger_cut.set()
        self._stop.set()
        if self.session.engine is not None:
            self.session.engine.interrupt()
        if self.current is not None:
            self.current.changed.set()

    def _rewrite_config(self) -> None:
        """config.json holds the sweep's settings as the user gave them (the engine's copy has no limits)."""
        path = self.out_dir / "config.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        given = self.session.config
        data["config"] = {**self.user_config.to_json(), "server": given.server, "metrics_url": given.metrics_url,
                          "out": str(self.out_dir)}
        write_json(path, data)

    # ---- levels --------------------------------------------------------------------------------------------------
    def _allowed(self, number: int) -> bool:
        """Whether level ``number`` may (still) be measured under the stop rules."""
        if self._stop.is_set():
            return False
        return self._first_fail is None or number - self._first_fail <= self.plan.keep_going

    async def _levels(self) -> None:
        for value in self.plan.levels:
            if not self._allowed(len(self.levels) + 1 + self._discarded):
                break
            level = await self._measure(value, "plan")
            if level is None:
                break
            # The verdicts before it decide whether this level counts (the stop rules hold exactly, however
            # quickly the window passed); meanwhile the load stays on.
            await asyncio.gather(*self._judges)
            if not self._allowed(level.number):
                self._discard(level)
                break
            self.levels.append(level)
            self._judges.append(asyncio.ensure_future(self._judge(level)))
        await asyncio.gather(*self._judges)
        self.stopped_because = self.stopped_because or "every planned level was measured"
        if self.plan.search == "bisect" and not self._stop.is_set():
            await self._bisect()

    def _bracket(self) -> tuple[float | None, float | None]:
        """The highest passing level and the lowest failing level above it (None where there is none)."""
        judged = sorted((lv for lv in self.levels if lv.judged), key=lambda lv: lv.value)
        passing = [lv.value for lv in judged if self._passes(lv)]
        low = max(passing) if passing else None
        failing = [lv.value for lv in judged if not self._passes(lv) and (low is None or lv.value > low)]
        return low, min(failing) if failing else None

    def _next_bisect(self) -> float | None:
        low, high = self._bracket()
        if low is None or high is None:
            return None
        if self.plan.kind == "concurrency":
            return float((int(low) + int(high)) // 2) if high - low > 1 else None
        if high - low <= self.plan.precision + 1e-9:
            return None
        mid = round((low + high) / 2 / self.plan.precision) * self.plan.precision
        mid = round(mid, 9)
        return mid if low < mid < high else round((low + high) / 2, 9)

    async def _bisect(self) -> None:
        if not self.objectives:
            self.stopped_because = (self.stopped_because or "") + "; bisect needs objectives (--slo)"
            return
        while not self._stop.is_set():
            value = self._next_bisect()
            if value is None:
                break
            level = await self._measure(value, "bisect", bisect=True)
            if level is None:
                break
            self.levels.append(level)
            await self._judge(level)
        low, high = self._bracket()
        if low is not None and high is not None and not self._stop.is_set():
            self.stopped_because = (f"bisect converged between {self.plan.value(low):g} and "
                                    f"{self.plan.value(high):g}")

    def _warmup_target(self, value: float) -> tuple[int, float | None]:
        """Warm-up requests to send and the longest it may take: a server too slow to finish a stream's first
        requests must not hold the sweep, so a warm-up by requests lasts at most one window."""
        warm = self.plan.warmup
        window = self.plan.duration_s or DEFAULT_LEVEL_S
        if warm is None:
            return max(1, math.ceil(WARMUP_PER_STREAM * value)), window
        if warm.requests:
            return warm.requests, window
        return 0, warm.seconds or None

    async def _measure(self, value: float, phase: str, *, bisect: bool = False) -> Level | None:
        """Move the load to ``value``, warm up, measure the window; None when the stop rules cut it short (its
        folder is removed: a level either is measured whole or not at all)."""
        number = len(self.levels) + 1 + self._discarded
        shown = self.plan.value(value)
        folder = self.out_dir / f"level-{number:03d}-{'c' if self.plan.kind == 'concurrency' else 'r'}{shown:g}"
        level = Level(value=value, kind=self.plan.kind, phase=phase, number=number, folder=folder,
                      writer=ResultsWriter(folder), applied=time.monotonic())
        warm_requests, warm_seconds = self._warmup_target(value)
        level.warmup_target = warm_requests
        if warm_requests == 0 and warm_seconds is None:
            self._open_window(level)
        self.current = level
        self.session.export_level(shown)
        engine = self.engine
        if self.plan.kind == "concurrency":
            engine.set_concurrency(int(value))
        else:
            engine.set_rate(value)
        for listener in self.listeners:
            listener("started", level)
        if self._view is not None:
            self._view.level_started(self, level)
        ok = await self._until(level, lambda: level.state != "warmup", warm_seconds, bisect)
        if ok and level.state == "warmup":  # warm-up by time (or its requests took too long)
            self._open_window(level)
        if ok:
            ok = await self._measure_window(level, bisect)
        self.current = None
        if not ok:
            self._discard(level)
            return None
        return level

    def _discard(self, level: Level) -> None:
        """A level the stop rules ended: its folder goes (its requests stay in the root records.jsonl)."""
        self._discarded += 1
        level.discarded = True
        level.writer.close()
        shutil.rmtree(level.folder, ignore_errors=True)
        for index in [i for i, lv in self._owner.items() if lv is level]:
            del self._owner[index]

    def _open_window(self, level: Level) -> None:
        level.state, level.started = "measure", time.monotonic()
        level.changed.set()

    def _close_window(self, level: Level) -> None:
        level.state, level.ended = "closed", time.monotonic()
        live = self.session.content_live()
        if live is not None:
            level.content_backlog = (int(live.get("backlog") or 0), float(live.get("backlog_audio_s") or 0.0))
        self._closed.append(level)
        level.changed.set()

    async def _until(self, level: Level, done: Callable[[], bool], timeout: float | None, bisect: bool) -> bool:
        """Wait until ``done()`` or ``timeout`` passed; False when the stop rules ended the level first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            if self._stop.is_set() or (not bisect and not self._allowed(level.number)):
                return False
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return True
            level.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(level.changed.wait(), left)
        return not self._stop.is_set()

    async def _measure_window(self, level: Level, bisect: bool) -> bool:
        plan = self.plan
        if plan.requests is not None:
            return await self._until(level, lambda: level.state == "closed", None, bisect)
        assert plan.duration_s is not None
        if plan.stable is None:
            ok = await self._until(level, lambda: False, plan.duration_s, bisect)
            self._close_window(level)
            return ok
        window = plan.duration_s
        limit = plan.stable_max_s or STABLE_MAX_WINDOWS * window
        while True:
            if not await self._until(level, lambda: False, window, bisect):
                return False
            assert level.started is not None
            elapsed = time.monotonic() - level.started
            level.stable = self._is_stable(level, window)
            if level.stable or elapsed + window > limit + 1e-6:
                self._close_window(level)
                return True

    def _is_stable(self, level: Level, window: float) -> bool:
        """First-chunk p95 of the last STABLE_WINDOWS windows within ``--stable`` of their mean."""
        assert level.started is not None
        count = int((time.monotonic() - level.started) / window + 1e-6)
        if count < STABLE_WINDOWS:
            return False
        p95s = []
        for k in range(count - STABLE_WINDOWS, count):
            lo, hi = level.started + k * window, level.started + (k + 1) * window
            inside = [r for r in level.records if not r.warmup and lo <= r.sent < hi]
            p95 = stats(values(inside, _FIRST))["p95"]
            if p95 is None:
                return False
            p95s.append(p95)
        mean, stable = sum(p95s) / len(p95s), self.plan.stable
        assert stable is not None  # only a --stable level is measured until stable
        return mean > 0 and max(abs(p - mean) for p in p95s) <= stable * mean

    # ---- requests ------------------------------------------------------------------------------------------------
    def _level_at(self, sent: float) -> Level | None:
        """The level whose load was on when a request left at ``sent``: the current one, or one whose window
        closed after it left but was not judged yet (a fleet reports each send up to a batch late)."""
        candidates = ([self.current] if self.current is not None else []) + self._closed[-2:]
        for level in candidates:
            if level.judged or level.discarded or sent < level.applied or (
                    level.ended is not None and sent >= level.ended):
                continue
            return level
        return None

    def _on_send(self, record: RequestRecord, chunks: list[Chunk]) -> None:
        """Tag a request with the level sending when it left: warm-up, measured, or between levels."""
        self._running[record.index] = (record, chunks)
        level = self._level_at(record.sent)
        if level is None:
            record.warmup = True  # between levels: never measured
            return
        record.level = self.plan.value(level.value)
        self._owner[record.index] = level
        level.outstanding += 1
        if level.started is None or record.sent < level.started:
            record.warmup = True
            level.warm_sent += 1
            if level.state == "warmup" and level.warmup_target and level.warm_sent >= level.warmup_target:
                self._open_window(level)
            return
        record.warmup = False
        level.measured_sent += 1
        if level.state == "measure" and self.plan.requests is not None and level.measured_sent >= self.plan.requests:
            self._close_window(level)

    def _on_record(self, record: RequestRecord) -> None:
        self._running.pop(record.index, None)
        self._sent.append(record.sent)
        self._finished.append(end_time(record))
        level = self._owner.pop(record.index, None)
        if level is None:
            judged = [lv for lv in self.levels if record.level is not None and lv.judged
                      and self.plan.value(lv.value) == record.level]
            if judged:  # finished after its level was judged: counted there as incomplete already
                judged[0].late += 1
            return  # sent between levels, or of a level the stop rules ended: only in the root records.jsonl
        level.records.append(record)
        level.writer.on_record(record)
        level.outstanding -= 1
        if level.outstanding == 0 or level.ended is not None:  # the judge counts them down
            level.changed.set()

    async def _judge(self, level: Level) -> None:
        """Wait for the level's own requests (bounded by --drain), then write and judge its summary. A request
        whose answer came but whose transcript (--check-content) did not is not incomplete: it goes on unchecked
        (``late``), so a recogniser starved by the load never fails a level."""
        assert level.ended is not None
        await self._wait_outstanding(level, level.ended + self.engine.drain_limit())
        if level.outstanding > 0 and self.session.content_tally is not None:
            released = self.engine.release_transcripts([i for i, lv in self._owner.items() if lv is level])
            if released != 0:  # their records come back at once (a load process's, a message later)
                left = None if released is None else level.outstanding - released
                await self._wait_outstanding(level, time.monotonic() + RELEASE_WAIT_S, until=left or 0)
        now = time.monotonic()
        for index in [i for i, lv in self._owner.items() if lv is level]:
            del self._owner[index]
            entry = self._running.get(index)
            if entry is None:
                continue
            record, chunks = entry
            copy = dataclasses.replace(record, chunk_offsets=list(record.chunk_offsets), chunk_samples=[],
                                       flags=list(record.flags))
            Engine.mark_incomplete(copy, chunks, now)
            level.records.append(copy)
            level.writer.on_record(copy)
        level.outstanding = 0
        level.summary = self._summary(level, await self._barge_in(level))
        level.writer.write_summary(level.summary)
        level.writer.close()
        level.judged = True
        self._verdict(level)
        for listener in self.listeners:
            listener("judged", level)
        if self._view is not None:
            self._view.level_judged(self, level)

    async def _wait_outstanding(self, level: Level, deadline: float, until: int = 0) -> None:
        """Until at most ``until`` of the level's requests are still out, the run ended, or ``deadline``."""
        while level.outstanding > until and not self._engine_done.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            level.changed.clear()
            waiters = [asyncio.ensure_future(level.changed.wait()), asyncio.ensure_future(self._engine_done.wait())]
            await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    def _passes(self, level: Level) -> bool:
        """Meets every objective (and stays under the error-rate limit); without objectives every level passes."""
        return level.slo_passed is not False and level.error_rate <= self.plan.stop_error_rate

    def _verdict(self, level: Level) -> None:
        shown = f"{self.plan.value(level.value):g}"
        if level.error_rate > self.plan.stop_error_rate:
            self.stopped_because = self.stopped_because or (
                f"level {shown}: error rate {level.error_rate:.0%} passed the limit "
                f"{self.plan.stop_error_rate:.0%}")
            self._stop.set()
        elif level.slo_passed is False and level.phase == "plan" and level.summary is not None:  # judged: it has one
            failed = [v["objective"] for v in level.summary["slo"] if v["verdict"] != "pass"]
            if self._first_fail is None or level.number < self._first_fail:
                self._first_fail = level.number
                self.stopped_because = f"level {shown} failed {', '.join(failed)}" + (
                    f" (then {self.plan.keep_going} more measured)" if self.plan.keep_going else "")
        if self.engine.state.aborted:
            self.stopped_because = self.engine.state.aborted
            self._stop.set()
        if self.current is not None:
            self.current.changed.set()

    async def _barge_in(self, level: Level) -> dict[str, Any]:
        """--barge-in: the level's ``barge_in`` section, from its own records (the session's builder)."""
        if self.session.config.barge_in is None:
            return {}
        tally = BargeInTally(self.session.config.barge_in)
        for record in level.records:
            tally.add(record)
        return await self.session.barge_in_section(tally, level.folder)

    def _summary(self, level: Level, barge_in: dict[str, Any] | None = None) -> dict[str, Any]:
        """The level's summary.json (the session's builder: every key a run's has), judged on its own objectives."""
        assert level.started is not None and level.ended is not None
        cfg = self.session.config
        wall = level.ended - level.started
        load = ({"kind": "closed", "num_tasks": int(level.value)} if level.kind == "concurrency" else
                {"kind": "open", "rate": level.value, "arrival": cfg.arrival, "max_inflight": cfg.max_inflight})
        extra = {"sweep_level": {"value": self.plan.value(level.value), "kind": level.kind, "phase": level.phase,
                                 "number": level.number, "window_s": wall, "started_s": level.started - self.started,
                                 "warmup_s": level.started - level.applied, "stable": level.stable},
                 **(barge_in or {})}
        interrupted = self._interrupted and not any(r for r in level.records if not r.warmup)
        requested = float(level.value) if level.kind == "concurrency" else None
        measured = summarize(level.records, wall_s=wall, concurrency=self._achieved(level, requested),
                             meets=self.meets)
        now_wall, now = time.time(), time.monotonic()
        content = None if self.session.content_tally is None else \
            ContentTally.of(level.records, backlog=level.content_backlog)  # the level's own content counters
        return self.session.build_summary(
            measured, load=load, status="interrupted" if interrupted else "completed", abort_reason=None,
            started_wall=now_wall - (now - level.started), finished_wall=now_wall - (now - level.ended),
            window=(level.started, level.ended), extra=extra, content=content)

    def _achieved(self, level: Level, requested: float | None) -> dict[str, float | None]:
        """Requests in flight during the level's window (any level's), time-weighted, and their maximum."""
        assert level.started is not None and level.ended is not None
        lo, hi = level.started, level.ended
        now = time.monotonic()
        # Not yet handed over: still in flight, or answered and in its audio checks (the engine hands a record
        # over after the worker's next request left, later still on a busy host): their own end where the record
        # has one, not now (a level of 5 once read 8.39 streams on a slow host; this is the likely cause).
        running = [r for r, _ in self._running.values()]
        starts = np.concatenate([self._sent.view(), np.asarray([r.sent for r in running], dtype=float)])
        ends = np.concatenate([self._finished.view(), np.asarray(
            [now if r.end_offset is None else end_time(r) for r in running], dtype=float)])
        a, b = np.maximum(starts, lo), np.minimum(ends, hi)
        a, b = a[b > a], b[b > a]
        area = float((b - a).sum())
        times = np.concatenate([a, b])
        steps = np.concatenate([np.ones(a.size), -np.ones(b.size)])
        order = np.lexsort((steps, times))  # by time, a finish before a start at the same instant
        peak = max(0, int(np.cumsum(steps[order]).max())) if times.size else 0
        mean = area / (hi - lo) if hi > lo else 0.0
        return {"requested": requested, "achieved_mean": mean, "achieved_max": peak, "achieved_mean_overall": mean}

    def progress(self) -> dict[str, Any]:
        """What a live view draws (cvload.tui's sweep panel): the judged levels, the level measured now, the
        first-chunk objectives as lines, the capacity once known."""
        judged = [lv for lv in self.levels if lv.judged]
        lines = [{"stat": o.metric.rsplit(".", 1)[1], "ms": o.threshold * o.factor} for o in self.objectives
                 if o.metric.startswith("metrics.first_chunk_latency_ms.")]
        finished = self.stopped_because is not None and not any(not j.done() for j in self._judges) \
            and self.current is None and self._engine_done.is_set()
        return {
            "kind": self.plan.kind,
            "plan": [self.plan.value(v) for v in self.plan.levels],
            "levels": [self._level_json(lv) for lv in judged],
            "current": None if self.current is None else self.plan.value(self.current.value),
            "objective_lines": lines,
            "capacity": self._capacity(judged) if finished else None,
            "knee": self._knee(judged) if finished else None,
            "stopped_because": self.stopped_because if finished else None,
        }

    # ---- the answer ----------------------------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        """sweep.json's content (schema cvload.sweep/1, docs/sweep.md)."""
        plan = self.plan
        judged = [lv for lv in self.levels if lv.judged]
        status = "aborted" if self.engine.state.aborted else "interrupted" if self._interrupted else "completed"
        return {
            "schema": SWEEP_SCHEMA,
            "cvload_version": __version__,
            "kind": plan.kind,
            "plan": [plan.value(v) for v in plan.levels],
            "objectives": [o.text for o in self.objectives],
            "settings": plan.settings(self.user_config.drain),
            "levels": [self._level_json(lv) for lv in judged],
            "capacity": self._capacity(judged),
            "knee": self._knee(judged),
            "stopped_because": self.stopped_because or status,
            "status": status,
        }

    def _level_json(self, level: Level) -> dict[str, Any]:
        s = level.summary or {}
        metrics = {name: {k: (s.get("metrics", {}).get(name) or {}).get(k) for k in HEADLINE_STATS}
                   for name in HEADLINE_METRICS}
        return {
            "value": self.plan.value(level.value), "kind": level.kind, "phase": level.phase,
            "folder": level.folder.name, "slo_passed": level.slo_passed, "slo": s.get("slo", []),
            "started_s": (s.get("sweep_level") or {}).get("started_s"),
            "window_s": (s.get("sweep_level") or {}).get("window_s"),
            "warmup_s": (s.get("sweep_level") or {}).get("warmup_s"),
            "stable": level.stable, "late": level.late,
            "summary": {
                "requests": s.get("requests"), "error_rate": s.get("error_rate"),
                "incomplete_min_s": s.get("incomplete_min_s"), "throughput": s.get("throughput"),
                "goodput": s.get("goodput"), "concurrency": s.get("concurrency"), "wall_s": s.get("wall_s"),
                "metrics": metrics,
                **({"barge_in": {k: s["barge_in"].get(k) for k in ("abandoned", "release_source", "release_ms",
                                                                    "server_release_source", "survivors")}} if s.get("barge_in") else {}),
            },
        }

    def _capacity(self, judged: list[Level]) -> dict[str, Any]:
        plan = self.plan
        ordered = sorted(judged, key=lambda lv: lv.value)
        shown = plan.value
        if not ordered:
            return {"kind": plan.kind, "value": None, "bracket": [None, None], "by": None}
        if not self.objectives:  # no objectives: the level of highest goodput (under the error-rate limit)
            candidates = [lv for lv in ordered if self._passes(lv)]
            if not candidates:
                return {"kind": plan.kind, "value": None, "bracket": [None, shown(ordered[0].value)], "by": "goodput"}
            best = max(candidates, key=lambda lv: (_goodput(lv), -lv.value))
            above = [lv.value for lv in ordered if lv.value > best.value]
            return {"kind": plan.kind, "value": shown(best.value),
                    "bracket": [shown(best.value), shown(min(above)) if above else None], "by": "goodput"}
        low, high = self._bracket()
        if low is None:
            return {"kind": plan.kind, "value": None, "bracket": [None, shown(ordered[0].value)],
                    "by": self.capacity_by}
        return {"kind": plan.kind, "value": shown(low),
                "bracket": [shown(low), shown(high) if high is not None else None], "by": self.capacity_by}

    def _knee(self, judged: list[Level]) -> dict[str, Any] | None:
        """The first level after which throughput stops growing with load (less than half the load's gain) or
        first-chunk p95 grows faster than the load."""
        ordered = sorted(judged, key=lambda lv: lv.value)
        for a, b in zip(ordered, ordered[1:]):
            load = b.value / a.value
            ta, tb = _throughput(a), _throughput(b)
            if ta > 0 and (tb / ta - 1) < 0.5 * (load - 1):
                return {"value": self.plan.value(a.value), "reason": f"throughput x{tb / ta:.2f} for load x{load:.2f}"}
            pa, pb = _p95(a), _p95(b)
            if pa and pb and pb / pa > load:
                return {"value": self.plan.value(a.value),
                        "reason": f"first-chunk p95 x{pb / pa:.2f} for load x{load:.2f}"}
        return None

    def exit_code(self, result: dict[str, Any]) -> int:
        if result["status"] == "aborted":
            return EXIT_RUNTIME
        if result["status"] == "interrupted" and not result["levels"]:
            return EXIT_INTERRUPTED
        capacity = result["capacity"]["value"]
        return EXIT_OK if capacity is not None and capacity >= self.plan.min_capacity else EXIT_SLO_FAILED

    def _write(self, result: dict[str, Any]) -> None:
        write_json(self.out_dir / "sweep.json", result)
        with open(self.out_dir / "sweep.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for row in result["levels"]:
                writer.writerow(csv_row(row))


_FIRST = BY_NAME["first_chunk_latency_ms"]


def _throughput(level: Level) -> float:
    return float(((level.summary or {}).get("throughput") or {}).get("requests_per_s") or 0.0)


def _goodput(level: Level) -> float:
    return float(((level.summary or {}).get("goodput") or {}).get("requests_per_s") or 0.0)


def _p95(level: Level) -> float | None:
    return ((level.summary or {}).get("metrics", {}).get("first_chunk_latency_ms") or {}).get("p95")


def csv_row(level: dict[str, Any]) -> list[Any]:
    """One row of sweep.csv from a ``levels[]`` entry of sweep.json."""
    s = level["summary"]
    req = s.get("requests") or {}
    first = s["metrics"]["first_chunk_latency_ms"]

    def cell(value: Any) -> Any:
        return "" if value is None else round(value, 6) if isinstance(value, float) else value

    def listened(name: str, stat: str) -> Any:  # a sweep.json written before these metrics lacks them
        return (s["metrics"].get(name) or {}).get(stat)

    return [cell(v) for v in (
        level["value"], level["kind"], level["phase"], level["slo_passed"], req.get("total"), req.get("ok"),
        req.get("failed"), req.get("incomplete"), s.get("error_rate"), (s.get("throughput") or {}).get(
            "requests_per_s"), (s.get("goodput") or {}).get("requests_per_s"), first.get("p50"), first.get("p95"),
        first.get("p99"), s["metrics"]["second_chunk_latency_ms"].get("p95"), s["metrics"]["rtf"].get("p50"),
        listened("first_audible_latency_ms", "p95"), listened("required_prebuffer_ms", "p99"),
        listened("content_error_rate", "p95"), (s.get("concurrency") or {}).get("achieved_mean"), level["folder"])]
