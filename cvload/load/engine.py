"""The load engine shared by ``run``, ``tui`` and sweeps: schedules requests, times chunks, emits records.

Data flows one way: items -> schedule (closed or open loop) -> target -> ``RequestRecord`` -> the run's
``Events`` (results writer, summary tally, sweep levels, live views). The engine is one ``LoadDriver``
(cvload.load.driver): views only listen and send commands (pause, concurrency, rate, stop); it imports no view.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cvload.load import barge_in
from cvload.load.driver import EngineState, Events, Outage, RunResult, drain_limit
from cvload.measure.audio_checks import check_request, start_decoders
from cvload.measure.loop_health import LoopHealth
from cvload.measure.metrics import end_time, wall_time
from cvload.results.records import (
    ERR_BARGED_IN,
    ERR_CANCELLED,
    ERR_CONNECTION,
    ERR_INCOMPLETE,
    ERR_PROTOCOL,
    ERR_TIMEOUT,
    PROXY_BODY_LIMIT,
    RequestRecord,
)
from cvload.settings.config import RunConfig
from cvload.settings.inputs import Item, padded_length
from cvload.targets.base import Chunk, SynthesisRequest, Target, TargetError

if TYPE_CHECKING:
    from cvload.listen.live import ContentChecker

DEFAULT_RAMP_S = 1.0  # about one streamed sentence: spreads closed-loop workers so they do not move in lock-step
DRAIN_TIMEOUT_S = 5.0  # default: on the user's stop, how long in-flight requests may finish before they are cancelled
# --on-server-loss continue: a lost server is probed (its target reopened) after 0.1 s, then at doubling gaps up
# to 2 s; nothing else is sent to it meanwhile, so an outage costs the server one probe at a time, not a storm.
PROBE_FIRST_S = 0.1
PROBE_MAX_S = 2.0
CONTENT_WAIT_S = 300.0  # after the window, how long the transcripts still due may take (a full backlog, one core)
PROBE_WAIT_S = 5.0  # a closed-loop worker waits at most this long for a probe's verdict (a probe may hang 4 s)


class InflightTracker:
    """Time-weighted count of requests in flight: the concurrency a run really achieved."""

    def __init__(self) -> None:
        self.count = 0
        self.max = 0
        self._last = time.monotonic()
        self._area = 0.0
        self._window_area = 0.0
        self._window_start: float | None = None
        self._window_end: float | None = None
        self._start = self._last
        self._max_overall = 0

    def _advance(self, now: float) -> None:
        dt = now - self._last
        self._area += self.count * dt
        if self._window_start is not None and self._window_end is None:
            self._window_area += self.count * (now - max(self._last, self._window_start))
        self._last = now

    def start(self) -> None:
        """The run begins: the overall mean counts from here, not from when the engine was built."""
        self._start = self._last = time.monotonic()

    def change(self, delta: int) -> None:
        self._advance(time.monotonic())
        self.count += delta
        self._max_overall = max(self._max_overall, self.count)
        if self._window_start is not None and self._window_end is None:
            self.max = max(self.max, self.count)

    def open_window(self) -> None:
        """Steady state begins (all workers started): achieved concurrency is measured from here."""
        now = time.monotonic()
        self._advance(now)
        self._window_start = now
        self.max = max(self.max, self.count)

    def close_window(self) -> None:
        """Load stops being fully applied (the last request was sent)."""
        if self._window_start is not None and self._window_end is None:
            self._advance(time.monotonic())
            self._window_end = self._last

    def summary(self, requested: float | None) -> dict[str, float | None]:
        self._advance(time.monotonic())
        start = self._window_start if self._window_start is not None else self._start
        end = self._window_end if self._window_end is not None else self._last
        span = end - start
        mean = self._window_area / span if self._window_start is not None and span > 0 else None
        overall = self._area / (self._last - self._start) if self._last > self._start else 0.0
        # A run over before its ramp ended (fewer requests than workers) never reached steady state: whole run.
        return {"requested": requested, "achieved_mean": mean if mean is not None else overall,
                "achieved_max": self.max if self._window_start is not None else self._max_overall,
                "achieved_mean_overall": overall}


class Reconnect:
    """Probes a lost server by reopening its target, with capped exponential backoff, until it answers.

    ``attempted`` is set after each failed probe (a fresh event replaces it), and for good once it is back:
    closed-loop workers wait on it instead of sending into an outage.
    """

    def __init__(self, target: Target, outage: Outage, back: Callable[[Reconnect], None]) -> None:
        self.target = target
        self.outage = outage
        self.attempted = asyncio.Event()
        self._back = back
        self.task = asyncio.create_task(self._probe())

    async def _probe(self) -> None:
        delay = PROBE_FIRST_S
        while True:
            try:
                await self.target.open()  # a failed open closes the connection: the next probe dials afresh
            except Exception as exc:  # noqa: BLE001 - any failure to open means: still down
                self.outage.probes += 1
                self.outage.last_error = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                attempted, self.attempted = self.attempted, asyncio.Event()
                attempted.set()
                await asyncio.sleep(delay)
                delay = min(PROBE_MAX_S, 2 * delay)
            else:
                self.outage.end = time.monotonic()
                self._back(self)
                self.attempted.set()
                return


class Engine:
    """Drives one run in this process (a ``LoadDriver``). ``await engine.run()`` returns when the stop condition is
    met or ``stop()`` was called.

    When the run's window ends (``--duration`` passed, ``--requests`` sent, or ``drain()``), every request in
    flight belongs to it and is waited for, up to its ``--request-timeout`` bounded by ``--drain``; one still
    running then is recorded as ``incomplete``. ``drain_timeout``: on the user's stop (``stop()``), the seconds
    in-flight requests get to finish before they are cancelled and left out.

    A sweep (cvload.load.sweep) drives one engine through its levels: it changes the load live (``set_concurrency``,
    ``set_rate``), tags each request as it leaves (``events.sent``) and ends the run itself (``until_drained``,
    ``drain``).
    """

    health: LoopHealth | None = None  # the session measures this process's own loop

    def __init__(self, config: RunConfig, targets: Sequence[Target], items: Sequence[Item], *,
                 events: Events | None = None, until_drained: bool = False,
                 drain_timeout: float = DRAIN_TIMEOUT_S) -> None:
        if not targets:
            raise ValueError("at least one target")
        if not items:
            raise ValueError("at least one input item")
        self.config = config
        self.drain_timeout = drain_timeout
        self.targets = list(targets)
        self.items = list(items)
        # Every record goes to the events' listeners (the results folder, the summary's Tally, live views) and
        # none is kept here, so memory stays flat over hours of load.
        self.events = events if events is not None else Events()
        self.state = EngineState(planned=config.requests)
        self._last_end: float | None = None  # the latest finish among the records (``end_time``)
        self.inflight = InflightTracker()
        self.run_id = uuid.uuid4().hex[:8]
        self._rng = random.Random(config.seed)
        self._next_index = 0
        self._resume = asyncio.Event()
        self._resume.set()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._finishing: set[asyncio.Task[None]] = set()  # finished requests whose audio is being checked
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._retire: set[int] = set()
        self._deadline: float | None = None
        self._warmup = config.warmup_spec()
        self._connection_failures = 0  # connection failures in a row (no success between)
        self._resets_in_row = 0  # those of them that ended after the server or a proxy answered (TargetError.reset)
        self._reset_requests: set[int] = set()  # indexes of finished requests whose failure was such a reset
        self._last_connection_error: str | None = None
        self._slots: asyncio.Semaphore | None = None
        self._rate_changed = asyncio.Event()
        self._window_opener = -1
        self._sending_over = asyncio.Event()  # the run's limit was reached: nothing more is sent
        self._cut_incomplete = False  # in-flight requests are being cut after the drain: record them incomplete
        self._until_drained = until_drained  # without --requests/--duration: send until ``drain()`` (a sweep)
        self._started_decoders = False
        self._down: dict[str, Reconnect] = {}  # address -> its probe, while that server is lost
        # --check-content (cvload.listen.live.ContentChecker, set by the session): requests being transcribed, whose
        # records go to the listeners when their transcript is back (waited for after the window, like checks).
        self.content: ContentChecker | None = None
        self._held: set[asyncio.Future[None]] = set()
        self.barge_in = barge_in.check(config.barge_in, mode=config.mode, seed=config.seed)  # --barge-in

    def content_summary(self) -> dict[str, Any] | None:
        """--check-content: the checker's live word (sample, backlog, counts, speed); None without it."""
        return self.content.summary() if self.content is not None else None

    def release_transcripts(self, indices: Collection[int]) -> int:
        return self.content.release_requests(indices) if self.content is not None else 0

    # ---- commands (from views or signal handlers) -----------------------------------------------------------
    def pause(self) -> None:
        self.state.paused = True
        self._resume.clear()

    def resume(self) -> None:
        self.state.paused = False
        self._resume.set()

    def stop(self) -> None:
        """Stop sending; in-flight requests get ``drain_timeout`` to finish."""
        self.state.stopping = True
        self._stop.set()
        self._resume.set()

    def abort(self, reason: str) -> None:
        """Stop because the run cannot go on (its records cannot be written): status aborted, exit 1."""
        if self.state.aborted is None:
            self.state.aborted = reason
        self.stop()

    def interrupt(self) -> None:
        self.state.interrupted = True
        self.stop()

    def drain(self) -> None:
        """End the run as its limit would: stop sending; in-flight requests are waited for (bounded by --drain)."""
        self._deadline = time.monotonic()
        self._sending_over.set()
        self._rate_changed.set()  # wakes the open loop's wait for its next arrival
        self._resume.set()

    def set_concurrency(self, n: int) -> None:
        """Closed loop: add workers now, or retire the newest ones after their current request."""
        n = max(1, int(n))
        self.state.concurrency = n
        if self.config.closed_loop and self.state.started and not self._stop.is_set():
            self._sync_workers(ramp=0.0)

    def set_rate(self, rate: float) -> None:
        self.state.rate = max(0.01, float(rate))
        self._rate_changed.set()

    @property
    def inflight_count(self) -> int:
        return self.inflight.count

    # ---- the run ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """The processes that parse wire-form audio start before the clock does (the targets are open)."""
        if self._started_decoders:
            return
        self._started_decoders = True
        lazy_modules = sorted({m for target in self.targets for m in target.lazy_audio_modules})
        if lazy_modules:
            await start_decoders(lazy_modules)

    async def close(self) -> None:
        """Nothing of its own to release: the targets belong to whoever opened them."""

    async def run(self, start_at: float | None = None) -> RunResult:
        """Send the load and drain it. ``start_at``: the (past) monotonic instant the run and its open-loop
        schedule start from instead of now: a fleet's load process gives the fleet's common start plus its phase,
        so its arrivals interleave with the other processes' as planned however late it woke."""
        cfg = self.config
        await self.start()
        self.state.started = time.monotonic() if start_at is None else min(start_at, time.monotonic())
        self.inflight.start()
        if cfg.duration is not None:
            self._deadline = self.state.started + cfg.duration
        if self._warmup.requests == 0 and self._warmup.seconds == 0:
            self._mark_measure_start(self.state.started)
        try:
            if cfg.closed_loop:
                self.state.concurrency = cfg.concurrency
                await self._closed_loop()
            else:
                self.state.rate = cfg.rate
                await self._open_loop()
        finally:
            self.inflight.close_window()
            await self._drain()
            for probe in self._down.values():
                probe.task.cancel()
        lost = [o for o in self.state.outages if o.end is None]
        if lost and not self.state.aborted and not self.state.interrupted:
            self.state.aborted = f"server {lost[0].server} unreachable since {lost[0].start - self.state.started:.1f} " \
                                 f"s: it did not come back before the run ended ({lost[0].last_error})"
        if self._connection_failures and not self.state.aborted and not self.state.interrupted:
            # The run ended on requests that could not reach the server: it died, even if too few failed to stop us.
            self.state.aborted = self._connection_lost(f"the last {self._connection_failures} request(s)")
        requested = float(self.state.concurrency) if cfg.closed_loop else None
        return RunResult(self.state, self.wall_s(), self.inflight.summary(requested))

    def wall_s(self) -> float:
        """The run's wall time so far (``cvload.measure.metrics.wall_time`` from this engine's start of measurement)."""
        start = self.state.measure_start if self.state.measure_start is not None else self.state.started
        return wall_time(start=start, end=time.monotonic() if self._last_end is None else self._last_end)

    def _should_send(self) -> bool:
        if self._stop.is_set():
            return False
        if self.config.requests is not None and self._next_index >= self.config.requests:
            return False
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return False
        return self._until_drained or not (self.config.requests is None and self._deadline is None
                                        and self._next_index >= len(self.items))

    def _take_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        if self.config.requests is not None and self._next_index >= self.config.requests:
            self._sending_over.set()
        return index

    async def _wait_stop(self, timeout: float, also: asyncio.Event | None = None) -> bool:
        """Sleep up to ``timeout`` (or until ``also`` is set); True if stop was asked meanwhile."""
        if timeout <= 0:
            return self._stop.is_set()
        waiters = [asyncio.ensure_future(e.wait()) for e in (self._stop, also) if e is not None]
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        return self._stop.is_set()

    async def _closed_loop(self) -> None:
        n = self.state.concurrency
        ramp = self.config.ramp if self.config.ramp is not None else (DEFAULT_RAMP_S if n > 1 else 0.0)
        self._sync_workers(ramp=ramp)
        self._window_opener = max(self._workers)  # the last worker to start opens the steady window
        stopped = asyncio.ensure_future(self._stop.wait())
        over = asyncio.ensure_future(self._sending_over.wait())
        try:
            # Until every worker is done, the user stops, or the window ends: then _drain bounds the wait.
            while self._workers and not self._stop.is_set() and not self._sending_over.is_set():
                left = None if self._deadline is None else self._deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                await asyncio.wait([*self._workers.values(), stopped, over], timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
                self._workers = {k: t for k, t in self._workers.items() if not t.done()}
        finally:
            stopped.cancel()
            over.cancel()

    def _sync_workers(self, *, ramp: float) -> None:
        want = self.state.concurrency
        # A retired worker that already ended may still be listed until the loop prunes it: not active.
        active = sorted(k for k, t in self._workers.items() if k not in self._retire and not t.done())
        for k in active[want:]:
            self._retire.add(k)
        next_id = max(self._workers, default=-1) + 1
        missing = want - min(len(active), want)
        for j in range(missing):
            delay = ramp * j / max(1, missing)
            worker_id = next_id + j
            self._workers[worker_id] = asyncio.create_task(self._worker(worker_id, delay))

    async def _worker(self, worker_id: int, delay: float) -> None:
        if await self._wait_stop(delay):
            return
        if worker_id == self._window_opener and self._should_send():
            self.inflight.open_window()
        while worker_id not in self._retire:
            if not self._resume.is_set():
                await self._resume.wait()
            if not self._should_send():
                break
            probe = self._lost(self._next_index)
            if probe is not None:  # wait for the probe's verdict instead of sending into the outage
                if await self._wait_stop(PROBE_WAIT_S, also=probe.attempted) or not self._should_send():
                    break
                probe = self._lost(self._next_index)
                if probe is not None:
                    self._fail_fast(self._take_index(), worker_id, None, probe)
                    continue
            await self._one(self._take_index(), worker_id, None)
        self._retire.discard(worker_id)
        if not self._should_send() and self.state.last_send is not None:
            self.inflight.close_window()

    async def _open_loop(self) -> None:
        self._slots = asyncio.Semaphore(self.config.max_inflight)
        self.inflight.open_window()
        next_at = self.state.started
        while self._should_send():
            rate = self.state.rate or 1.0
            gap = self._rng.expovariate(rate) if self.config.arrival == "poisson" else 1.0 / rate
            next_at += gap
            self._rate_changed.clear()
            if await self._wait_stop(next_at - time.monotonic(), also=self._rate_changed):
                break
            if self._rate_changed.is_set():  # a new rate applies now, not after the old gap
                next_at = time.monotonic()
                continue
            if not self._resume.is_set():
                await self._resume.wait()
                next_at = time.monotonic()  # a pause is not a backlog: do not burst afterwards
            if not self._should_send():
                break
            intended = next_at
            probe = self._lost(self._next_index)
            if probe is not None:  # the schedule goes on: this arrival fails at once, nothing is sent
                self._fail_fast(self._take_index(), -1, intended, probe)
                continue
            # At max_inflight the wait shows up in the corrected latencies; a stop meanwhile sends nothing more.
            if not await self._acquire_slot():
                break
            task = asyncio.create_task(self._one(self._take_index(), -1, intended))
            self._tasks.add(task)
            task.add_done_callback(self._open_done)
        self.inflight.close_window()

    async def _acquire_slot(self) -> bool:
        assert self._slots is not None
        acquire = asyncio.ensure_future(self._slots.acquire())
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([acquire, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not acquire.done():
            acquire.cancel()
            return False
        if not self._should_send():
            self._slots.release()
            return False
        return True

    def _open_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        assert self._slots is not None
        self._slots.release()

    def drain_limit(self) -> float:
        return drain_limit(self.config)

    async def _drain(self) -> None:
        """Wait for the requests in flight, then for the checks of those that finished: every record is in
        before ``run()`` returns."""
        pending = {t for t in self._tasks if not t.done()} | {t for t in self._workers.values() if not t.done()}
        if pending:
            await self._wait_in_flight(pending)
        if self._finishing:  # finished requests still being checked
            _, still = await asyncio.wait(list(self._finishing), timeout=self.drain_timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still)
        if self._held:  # transcripts still due: the backlog is bounded (cvload.listen.live.BACKLOG_S)
            limit = self.drain_timeout if self._stop.is_set() else max(self.drain_limit(), CONTENT_WAIT_S)
            _, still = await asyncio.wait(list(self._held), timeout=limit)
            if still and self.content is not None:  # their records go on unchecked ("late")
                self.content.release(still)

    async def _wait_in_flight(self, pending: set[asyncio.Task[None]]) -> None:
        """After the window, up to ``drain_limit`` (then they are incomplete); after the user's stop (or during
        this wait), up to ``drain_timeout`` (then they are cancelled)."""
        user_stop = self._stop.is_set()
        deadline = time.monotonic() + (self.drain_timeout if user_stop else self.drain_limit())
        stopped = None if user_stop else asyncio.ensure_future(self._stop.wait())
        try:
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.wait(pending | ({stopped} if stopped else set()), timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
                pending = {t for t in pending if not t.done()}
                if stopped is not None and stopped.done():  # the user stopped while we waited: cut short
                    stopped, user_stop = None, True
                    deadline = min(deadline, time.monotonic() + self.drain_timeout)
        finally:
            if stopped is not None:
                stopped.cancel()
        if pending:
            self._cut_incomplete = not user_stop
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=self.drain_timeout)

    @staticmethod
    def mark_incomplete(record: RequestRecord, chunks: list[Chunk], now: float) -> RequestRecord:
        """``record`` as an incomplete request at ``now``: failed, its latency at least the time waited."""
        record.end_offset = now - record.sent
        record.error_kind = ERR_INCOMPLETE
        record.error = f"still running {record.end_offset:.1f} s after it was sent, when the wait after " \
                       "the window ended (--drain, --request-timeout)"
        record.chunk_samples[:] = [chunk.samples for chunk in chunks]
        return record

    # ---- one request --------------------------------------------------------------------------------------
    def _request(self, index: int) -> tuple[SynthesisRequest, Item]:
        item = self.items[index % len(self.items)]
        cfg = self.config
        wav = None if cfg.spk_cache else item.prompt_wav
        pad = None
        if wav is not None and cfg.pad_prompt:
            pad = padded_length(len(wav), cfg.mode, prompt_text=item.prompt_text, target_text=item.target_text)
        request = SynthesisRequest(
            request_id=f"{self.run_id}-{index}",
            target_text=item.target_text,
            reference_text=None if cfg.spk_cache else item.prompt_text,
            reference_wav=wav,
            pad_to_samples=pad,
            item_id=item.item_id,
        )
        return request, item

    def _mark_measure_start(self, t: float) -> None:
        self.state.measure_start = t
        self.events.measure_start.fire()

    def _is_warmup(self, index: int, now: float) -> bool:
        if self._warmup.requests and index < self._warmup.requests:
            return True
        return bool(self._warmup.seconds and now < self.state.started + self._warmup.seconds)

    async def _one(self, index: int, worker: int, intended: float | None) -> None:
        request, item = self._request(index)
        target = self.targets[index % len(self.targets)]
        plan = self.barge_in.plan(index) if self.barge_in is not None else None
        if plan is not None:  # a call of its own: cancelling it must cancel nothing else
            request = barge_in.own_call(request)
        with contextlib.suppress(Exception):  # else synthesize builds it and the failure is this request's
            request = target.prepare(request)  # the body (a megabyte with a JSON prompt) is built before the clock
        chunks: list[Chunk] = []
        record = RequestRecord(index=index, request_id=request.request_id, item_id=item.item_id, worker=worker,
                               server=target.address, text=item.target_text, sent=0.0, intended=intended,
                               run_start=self.state.started, language=item.language)
        offsets = record.chunk_offsets
        sent: float  # the send time: stamped below, then again by consume() where the request goes out

        async def consume() -> None:
            nonlocal sent
            # The send time, stamped where the request goes out (wait_for runs this in a task of its own before
            # Python 3.12: a stamp taken before it would count a turn of the event loop); then nothing but the
            # chunks' stamps: samples are counted and checked after the final response.
            stream = target.synthesize(request)
            sent = record.sent = time.monotonic()
            if plan is not None:
                stream = barge_in.watch(stream, plan, record)
            async for chunk in stream:
                offsets.append(chunk.t - sent)
                chunks.append(chunk)

        self.inflight.change(+1)
        self.state.sent += 1
        sent = time.monotonic()
        record.sent = sent
        self.state.last_send = sent
        record.warmup = self._is_warmup(index, sent)
        self.events.sent.fire(record, chunks)
        if not record.warmup and self.state.measure_start is None:
            self._mark_measure_start(sent)
        try:
            await asyncio.wait_for(consume(), self.config.request_timeout)
            record.end_offset = time.monotonic() - sent
            if record.abandon_offset is not None:
                record.error_kind = ERR_BARGED_IN
        except TargetError as exc:
            record.end_offset = time.monotonic() - sent
            record.error_kind, record.error = exc.kind, exc.message
            if exc.reset:
                self._reset_requests.add(index)
        except asyncio.TimeoutError:
            record.end_offset = time.monotonic() - sent
            record.error_kind = ERR_TIMEOUT
            record.error = f"no final response within --request-timeout {self.config.request_timeout:g} s"
        except asyncio.CancelledError:
            if self._cut_incomplete:
                self.mark_incomplete(record, chunks, time.monotonic())
            else:
                record.end_offset = time.monotonic() - sent
                record.error_kind, record.error = ERR_CANCELLED, "cancelled when the run stopped"
            self.inflight.change(-1)
            self._finish(record, chunks, [])
            raise
        except Exception as exc:  # noqa: BLE001 - a target bug must cost one request, not the run
            record.end_offset = time.monotonic() - sent
            record.error_kind, record.error = ERR_PROTOCOL, f"{type(exc).__name__}: {exc}"
        self.inflight.change(-1)
        # Audio checks and the record hand-off run in a task of their own, after this worker's next request went
        # out: a closed-loop worker sends again as soon as its answer is complete, as a bare client does (with a
        # dynamic-batching server, a few milliseconds of think time per request decide which batch a request joins).
        task = asyncio.create_task(self._complete(record, chunks, item.target_text))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        # Responses that arrived together are stamped before any of their requests' follow-up work: without this
        # turn of the loop (Python 3.12 runs consume() in this task), the last of a batch of 16 offline
        # responses was stamped after 15 audio checks, records and next requests (~9 ms).
        await asyncio.sleep(0)
        if len(self._finishing) > max(64, 4 * (self.state.concurrency or 1)):  # checks fall behind: wait for them
            await asyncio.wait(list(self._finishing), return_when=asyncio.FIRST_COMPLETED)

    async def _complete(self, record: RequestRecord, chunks: list[Chunk], text: str) -> None:
        """Count and check the finished request's audio, then hand its record to the listeners (with
        --check-content, a sampled request's record goes on once its transcript is back: ``_held``)."""
        audio: list[npt.NDArray[np.floating[Any]]] = []
        cfg = self.config
        record.prebuffer_s = cfg.prebuffer
        content = self.content
        rate = self._sample_rate(chunks)
        # warm-up (and a sweep's requests between levels) are not measurements: never worth a transcript
        listen = content is not None and record.error_kind is None and not record.warmup and chunks and \
            content.wants(record, sum(chunk.samples for chunk in chunks) / rate)
        if record.error_kind is None:
            try:
                await asyncio.sleep(0)  # after the worker's next request (it resumes first) went out
                checked = await check_request(chunks, text, rate, cfg.save_audio or bool(listen), onset=cfg.onset)
            except TargetError as exc:  # a chunk that only proved malformed when its samples were read
                record.error_kind, record.error = exc.kind, exc.message
                listen = False
            except asyncio.CancelledError:
                self._finish(record, chunks, [])
                raise
            else:
                record.chunk_samples.extend(checked.samples)
                record.flags, audio = checked.flags, checked.audio
                record.speech_start_s = checked.speech_start_s
        if listen and content is not None and audio:
            record.sample_rate = rate
            heard = content.submit(asyncio.get_running_loop(), record, audio)
            self._held.add(heard)
            kept = audio if cfg.save_audio else []
            def transcribed(_: object) -> None:  # the record waited for its transcript; now it finishes
                self._held.discard(heard)
                self._finish(record, chunks, kept)

            heard.add_done_callback(transcribed)
            return
        self._finish(record, chunks, audio if cfg.save_audio else [])

    @staticmethod
    def _sample_rate(chunks: list[Chunk]) -> int:
        return chunks[-1].sample_rate if chunks else RequestRecord.sample_rate

    def _finish(self, record: RequestRecord, chunks: list[Chunk], chunks_audio: list[npt.NDArray[np.floating[Any]]]) -> None:
        if len(record.chunk_samples) != len(chunks):  # a failed request: count its samples without decoding
            record.chunk_samples[:] = [chunk.samples for chunk in chunks]
        record.sample_rate = self._sample_rate(chunks)
        end = end_time(record)
        self._last_end = end if self._last_end is None else max(self._last_end, end)
        self.state.done += 1
        if not record.ok and not record.barged_in:
            self.state.failed += 1
        if chunks_audio:
            self.events.audio.fire(record, chunks_audio)
        self._watch_connection(record)
        self.events.finished.fire(record)

    def _watch_connection(self, record: RequestRecord) -> None:
        """A dead server fails every request at once: stop after a run of connection failures and no success
        (``--on-server-loss abort``), or ride out the outage (``continue``)."""
        reset = record.index in self._reset_requests
        self._reset_requests.discard(record.index)
        if self.config.on_server_loss == "continue":
            if record.error_kind == ERR_CONNECTION:
                self._server_lost(record)
            return
        if record.error_kind == ERR_CONNECTION:
            self._connection_failures += 1
            self._resets_in_row += reset
            self._last_connection_error = record.error
            limit = max(5, 2 * (self.state.concurrency or 1))
            if self._connection_failures >= limit and not self._stop.is_set():
                self.state.aborted = self._connection_lost(f"{self._connection_failures} requests in a row")
                self.stop()
        elif record.error_kind is None:
            self._connection_failures = self._resets_in_row = 0

    def _connection_lost(self, which: str) -> str:
        """Why the run stopped on a row of connection failures (``which``: those requests): the server could not
        be reached, or, where every one of them had been answered before its stream or connection ended, the
        server or a proxy in front of it reset them (a proxy's limits, the server's own)."""
        last, resets = self._last_connection_error or "", self._resets_in_row
        if resets < self._connection_failures:
            how = f", {self._connection_failures - resets} to connect, {resets} reset after an answer" if resets \
                else " to connect"
            return f"server unreachable: {which} failed{how} (last: {last})"
        hint = "" if PROXY_BODY_LIMIT in last else \
            "; the server's log says why, or a proxy's limits on a stream (body size, duration, idle time)"
        return f"every stream was reset by the server or a proxy between cvload and it: {which} failed after " \
               f"they were answered (last: {last}){hint}"

    # ---- --on-server-loss continue --------------------------------------------------------------------------
    def _lost(self, index: int) -> Reconnect | None:
        """The probe of the server request ``index`` goes to, while that server is lost."""
        return self._down.get(self.targets[index % len(self.targets)].address) if self._down else None

    def _server_lost(self, record: RequestRecord) -> None:
        if record.server in self._down or self._stop.is_set():
            return
        last = next((o for o in reversed(self.state.outages) if o.server == record.server), None)
        if last is not None and last.end is not None and record.sent <= last.end:
            return  # sent before the server came back: a late failure of the outage that ended
        target = next(t for t in self.targets if t.address == record.server)
        outage = Outage(record.server, start=record.sent + (record.end_offset or 0.0), last_error=record.error or "")
        self.state.outages.append(outage)
        self._down[record.server] = Reconnect(target, outage, self._server_back)

    def _server_back(self, probe: Reconnect) -> None:
        self._down.pop(probe.outage.server, None)

    def _fail_fast(self, index: int, worker: int, intended: float | None, probe: Reconnect) -> None:
        """A request due while its server is lost: recorded at once as a ``connection`` failure, never sent."""
        request, item = self._request(index)
        now = time.monotonic()
        outage = probe.outage
        record = RequestRecord(index=index, request_id=request.request_id, item_id=item.item_id, worker=worker,
                               server=outage.server, text=item.target_text, sent=now, intended=intended,
                               run_start=self.state.started, end_offset=0.0, error_kind=ERR_CONNECTION,
                               error=f"not sent: {outage.server} lost {now - outage.start:.1f} s ago, reconnecting "
                                     f"(last error: {outage.last_error})")
        self.state.sent += 1
        self.state.last_send = now
        record.warmup = self._is_warmup(index, now)
        if not record.warmup and self.state.measure_start is None:
            self._mark_measure_start(now)
        # In flight for zero seconds: neither the in-flight count nor achieved concurrency moves.
        self.events.sent.fire(record, [])
        self._finish(record, [], [])
