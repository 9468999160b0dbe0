"""One run's load in several processes on one host (``--processes N|auto``), each with its own event loop and
its own gRPC channels or HTTP sessions.

One Python process saturates its core at a few hundred streams, and from then on its own scheduling delay is
added to every latency it stamps. So the load is split over N *load processes* (``python -m cvload.load.process_fleet``,
started fresh, never forked from a process with a running loop or open channels), each running a normal
``Engine`` on its share, and the process that runs the session (the *coordinator*) only merges:

- closed loop: worker ``i`` of the whole run lives in process ``i % N`` and starts at ``ramp * i / workers``, as
  it would in one process; open loop: process ``p`` sends an independent arrival stream of ``rate / N`` (Poisson
  streams add up to a Poisson stream of the whole rate; constant arrivals are phase-shifted to interleave); each
  process's schedule counts from the fleet's common start plus its phase, not from the moment it woke;
- request ``i`` of the whole run is request ``i // N`` of process ``i % N`` and uses the same input item and the
  same server as request ``i`` of a one-process run (items and servers are handed to each process in the order
  its requests reach them), so the merged ``records.jsonl`` has the indexes and workers of one run (request ids
  stay those the server saw: each process's own run id, then its own request number);
- records come back in batches over the process's stdout and are fired on the coordinator's ``Events`` (the
  results writer, the console, the dashboard's feed, a sweep's levels) exactly as an in-process engine fires
  them; all processes of a host share ``time.monotonic``, so their stamps are comparable and percentiles are
  computed from all records together;
- where someone listens to ``events.sent`` (a sweep), each process also reports every request as it leaves;
  the coordinator fires it, and the tags its listeners set (``level``, ``warmup``) carry over to the finished
  record;
- commands (pause, resume, concurrency, rate, drain, stop) go to every process; a process that dies is
  reported, the run stops (as for a dead server: exit code 1) and every record it had sent back is kept.

``ProcessFleet`` is a ``LoadDriver`` (cvload.load.driver), so ``Session``, ``Sweep`` and their views run it as they
run an ``Engine``. ``FleetMember`` is the coordinator's view of one load process, for any transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import IO, Any, Protocol, TypedDict, TypeVar

from cvload.apis import api_spec
from cvload.errors import EXIT_RUNTIME, CvloadError, UsageError
from cvload.load.driver import EngineState, Events, RunResult, drain_limit
from cvload.load.engine import DEFAULT_RAMP_S, Engine
from cvload.load.gc_pause import QuietCollections
from cvload.measure.loop_health import LoopHealth, merge_client
from cvload.measure.metrics import end_time, wall_time
from cvload.results.records import RequestRecord
from cvload.settings.config import RunConfig

STREAMS_PER_PROCESS = 64  # closed loop: one process keeps its loop lag well under a millisecond at this many
RATE_PER_PROCESS = 40.0  # open loop: requests/s a process takes (~64 one-to-two-second streams in flight)
SPK_CACHE_WEIGHT = 0.5  # no prompt in the request: half of the API's extra bytes weight (ApiSpec.bytes_weight)
READY_TIMEOUT_S = 120.0  # a load process imports numpy/grpc and opens its connections (slow on a busy host)
GO_AFTER_S = 0.05  # the common start lies a little ahead, so every process sees it coming
BATCH_S = 0.05  # a load process sends its records back at most this often
STATUS_EVERY_S = 0.2
_FRAME = struct.Struct("!I")


# ---- splitting one run over processes -----------------------------------------------------------------------
def bytes_weight(config: RunConfig) -> float:
    """How many gRPC streaming requests' worth of bytes one of this run's requests moves (the API's
    ``bytes_weight``: HTTP streaming's JSON audio and prompts count 4)."""
    weight = api_spec(config.api).bytes_weight.get(f"{config.protocol_used}/{config.mode}", 1.0)
    return 1.0 + (weight - 1.0) * SPK_CACHE_WEIGHT if config.spk_cache else weight


def auto_processes(config: RunConfig, cpus: int | None = None) -> int:
    """``--processes auto``: enough processes for the load (streams or requests/s, weighted by the bytes each
    request moves), at most one per CPU but one (dashboard, telemetry)."""
    cpus = cpus or os.cpu_count() or 1
    weight = bytes_weight(config)
    if config.closed_loop:
        want = math.ceil(config.concurrency * weight / STREAMS_PER_PROCESS)
    else:
        want = math.ceil((config.rate or 0.0) * weight / RATE_PER_PROCESS)
    return max(1, min(max(1, cpus - 1), want))


def resolve_processes(config: RunConfig, cpus: int | None = None) -> int:
    """How many load processes this run gets: the asked number, never more than it has streams, requests or
    in-flight slots to share (each process needs at least one)."""
    n = auto_processes(config, cpus) if config.processes == "auto" else int(config.processes)
    caps = [config.concurrency if config.closed_loop else config.max_inflight]
    if config.requests is not None:
        caps.append(config.requests)
    return max(1, min(n, *caps))


def share(total: int, p: int, n: int) -> int:
    """How many of ``0..total-1`` fall to process ``p`` of ``n`` when ``i`` goes to ``i % n``."""
    return (total - p + n - 1) // n if total > p else 0


T = TypeVar("T")


def strided(values: Sequence[T], p: int, n: int) -> list[T]:
    """The values process ``p`` of ``n`` meets in order when its ``j``-th use is ``values[(j*n + p) % len]``
    (one full period: an engine taking ``list[j % len(list)]`` then picks what one process would have)."""
    size = len(values)
    return [values[(j * n + p) % size] for j in range(size // math.gcd(size, n))]


@dataclass
class Part:
    """Process ``index`` of ``count``: its settings and how long after the common start it begins."""

    index: int
    count: int
    config: dict[str, Any]
    delay_s: float = 0.0
    until_drained: bool = False  # send until the coordinator's drain (a sweep), not one pass over the inputs
    report_sends: bool = False  # report every request as it leaves (someone listens to ``events.sent``)


def split(config: RunConfig, count: int, items: int, *, until_drained: bool = False) -> list[Part]:
    """Each process's settings: its workers or arrival rate, requests, warmup, servers, seed and start delay."""
    warmup = config.warmup_spec()
    total_requests = config.requests if config.requests is not None else (
        None if config.duration is not None or until_drained else items)
    if config.closed_loop:
        n = config.concurrency
        ramp = config.ramp if config.ramp is not None else (DEFAULT_RAMP_S if n > 1 else 0.0)
    parts = []
    for p in range(count):
        child: dict[str, Any] = {
            "processes": 1, "emulator": False, "pipeline": False, "out": None, "slo": [], "save_audio": False,
            "metrics_url": "none", "gpu_source": "none", "server": strided(config.server, p, count),
        }
        if config.closed_loop:
            mine = share(n, p, count)
            delay = ramp * p / n
            child["num_tasks"] = mine
            # worker j here is worker j*count + p of the run: it starts at ramp * (j*count + p) / n
            child["ramp"] = ramp * count * mine / n
        else:
            assert config.rate is not None
            child["rate"] = config.rate / count
            child["max_inflight"] = max(1, share(config.max_inflight, p, count))
            child["seed"] = config.seed + 7919 * p  # independent arrival streams
            delay = p / config.rate if config.arrival == "constant" else 0.0
        if config.check_content is not None:  # each process checks its own requests: its share of the checker
            child["check_workers"] = max(1, share(config.check_workers, p, count))
            budget = _budget(config)
            if budget is not None:
                child["check_content"] = f"{budget / count:.6g}s/s"
        if total_requests is not None:
            child["requests"] = share(total_requests, p, count)
        if config.duration is not None:
            child["duration"] = max(0.001, config.duration - delay)
        if warmup.requests:
            child["warmup"] = share(warmup.requests, p, count) or None
        elif warmup.seconds:
            child["warmup"] = f"{max(0.001, warmup.seconds - delay):.6f}s"
        fields = config.to_json()
        fields.update(child)
        parts.append(Part(p, count, fields, delay, until_drained=until_drained))
    return parts


def _budget(config: RunConfig) -> float | None:
    from cvload.listen.live import Sampling

    return Sampling.parse(config.check_content).budget_s_per_s


# ---- the load process ------------------------------------------------------------------------------------------
class _Outbox:
    """This process's stdout to the coordinator: pickled batches written by a thread (never on the loop)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._send, name="cvload-outbox", daemon=True)
        self.thread.start()

    def put(self, kind: str, payload: Any) -> None:
        self.queue.put((kind, payload))

    def _send(self) -> None:
        get, stream = self.queue.get, self.stream
        while (first := get()) is not None:
            time.sleep(BATCH_S)
            batch, end = [first], False
            while True:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    end = True
                    break
                batch.append(item)
            data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                stream.write(_FRAME.pack(len(data)) + data)
                stream.flush()
            except OSError:  # the coordinator is gone; the run ends on its closed stdin
                return
            if end:
                return

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10.0)


class Status(TypedDict):
    """What a load process reports every ``STATUS_EVERY_S`` (its engine's state and its loop's health)."""

    sent: int
    done: int
    failed: int
    inflight: int
    concurrency: int
    rate: float | None
    measure_start: float | None
    last_send: float | None
    aborted: str | None
    interrupted: bool
    stopping: bool
    client: dict[str, Any]  # cvload.measure.loop_health: live, or its summary in the final status
    content: dict[str, Any] | None  # --check-content: its checker's live word (cvload.listen.live); None without


class FinalStatus(Status):
    """The last status, with the concurrency the process achieved (``RunResult.concurrency``)."""

    achieved: dict[str, float | None]


class Failure(TypedDict):
    """Why a load process could not run (a CvloadError's message, hint and exit code)."""

    message: str
    hint: str | None
    exit_code: int


def _status(engine: Engine, health: LoopHealth, *, final: bool = False) -> Status:
    st = engine.state
    return {"sent": st.sent, "done": st.done, "failed": st.failed, "inflight": engine.inflight_count,
            "concurrency": st.concurrency, "rate": st.rate, "measure_start": st.measure_start,
            "last_send": st.last_send, "aborted": st.aborted, "interrupted": st.interrupted,
            "stopping": st.stopping, "client": health.summary() if final else health.live(),
            "content": engine.content_summary()}


def _apply(engine: Engine, command: dict[str, Any]) -> None:
    name, value = command.get("cmd"), command.get("value")
    if name == "pause":
        engine.pause()
    elif name == "resume":
        engine.resume()
    elif name == "stop":
        engine.stop()
    elif name == "drain":
        engine.drain()
    elif name == "interrupt":
        engine.interrupt()
    elif name == "concurrency" and value is not None:
        engine.set_concurrency(int(value))
    elif name == "rate" and value is not None:
        engine.set_rate(float(value))
    elif name == "release" and value is not None:
        engine.release_transcripts(set(value))


async def _serve_part(part: Part, outbox: _Outbox, lines: IO[str]) -> None:
    from cvload.settings.inputs import load_items
    from cvload.targets import make_target

    cfg = RunConfig(**part.config).validate()
    items = strided(load_items(cfg.inputs, spk_cache=cfg.spk_cache), part.index, part.count)
    targets = [make_target(cfg.protocol_used, cfg.mode, a, cfg.model, timeout=cfg.request_timeout, config=cfg)
               for a in cfg.addresses()]
    loop = asyncio.get_running_loop()
    content = None
    try:
        await asyncio.gather(*(t.open() for t in targets))
        engine = Engine(cfg, targets, items, until_drained=part.until_drained)
        if cfg.check_content is not None:  # this process's own recognisers (helpers): its records carry the words
            from cvload.listen.live import ContentChecker

            content = engine.content = ContentChecker.for_run(cfg, part.count)
            await content.start()
        engine.events.finished.add_listener(lambda r: outbox.put("record", r))
        if part.report_sends:  # a copy as it leaves (the outbox pickles it later, when the original has chunks)
            engine.events.sent.add_listener(lambda r, _: outbox.put("sent", replace(
                r, chunk_offsets=[], chunk_samples=[], flags=[])))
        go: asyncio.Future[float] = loop.create_future()

        def on_command(command: dict[str, Any]) -> None:
            if command.get("cmd") == "go":
                if not go.done():
                    go.set_result(float(command["t0"]))
            elif command.get("cmd") == "interrupt" and not go.done():
                go.set_result(time.monotonic())  # nothing sent yet: the run starts and stops at once
                engine.interrupt()
            else:
                _apply(engine, command)

        def read_commands() -> None:
            for line in lines:
                with contextlib.suppress(ValueError):
                    command = json.loads(line)
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(on_command, command)
            with contextlib.suppress(RuntimeError):  # the coordinator is gone: stop and say what we have
                loop.call_soon_threadsafe(on_command, {"cmd": "interrupt"})

        threading.Thread(target=read_commands, name="cvload-commands", daemon=True).start()
        quiet = QuietCollections()  # before "ready": its one collection must not delay this share's start
        quiet.start()
        outbox.put("ready", {"pid": os.getpid()})
        t0 = await go
        await asyncio.sleep(max(0.0, t0 + part.delay_s - time.monotonic()))
        health = LoopHealth()

        async def report() -> None:
            while True:
                await asyncio.sleep(STATUS_EVERY_S)
                outbox.put("status", _status(engine, health))

        health.start()
        reporter = asyncio.create_task(report())
        try:
            result = await engine.run(start_at=t0 + part.delay_s)
        finally:
            reporter.cancel()
            health.stop()
            quiet.stop()
        final: FinalStatus = {**_status(engine, health, final=True), "achieved": result.concurrency}
        outbox.put("final", final)
    finally:
        if content is not None:
            content.close()
        for target in targets:
            with contextlib.suppress(Exception):
                await target.close()


def main() -> int:
    """A load process: a start line (its ``Part``) on stdin, then commands; batches of messages on stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not break the frames
    outbox = _Outbox(out)
    code = 0
    try:
        part = Part(**json.loads(sys.stdin.readline()))
        asyncio.run(_serve_part(part, outbox, sys.stdin))
    except CvloadError as exc:
        failure = Failure(message=exc.message, hint=exc.hint, exit_code=exc.exit_code)
        outbox.put("failed", failure)
        code = exc.exit_code
    except Exception as exc:  # noqa: BLE001 - reaches the user through the coordinator
        outbox.put("failed", Failure(message=f"{type(exc).__name__}: {exc}", hint=None, exit_code=EXIT_RUNTIME))
        code = EXIT_RUNTIME
    outbox.close()
    return code


# ---- the coordinator's side ------------------------------------------------------------------------------------
def read_frames(stream: IO[bytes]) -> Iterator[bytes]:
    """The pickled batches a load process writes (a cut frame ends them: the process died while writing)."""
    while True:
        head = stream.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return
        size = _FRAME.unpack(head)[0]
        data = stream.read(size)
        if len(data) < size:
            return
        yield data


class LocalProcess:
    """A load process on this host: ``python -m cvload.load.process_fleet`` with pipes (the transport of a fleet)."""

    where = ""

    def __init__(self, start: dict[str, Any]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "cvload.load.process_fleet"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)  # the terminal's Ctrl-C is the coordinator's to relay
        self.pid = self.proc.pid
        self.write(start)

    def write(self, message: dict[str, Any]) -> None:
        if self.proc.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()

    def pump(self, on_frame: Callable[[bytes], None], on_stderr: Callable[[str], None]) -> int:
        """Hand every frame and stderr line over until the process ends; its exit code."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        errors = self.proc.stderr

        def read_stderr() -> None:
            for line in errors:
                on_stderr(line.decode(errors="replace").rstrip("\n"))

        thread = threading.Thread(target=read_stderr, name="cvload-fleet-stderr", daemon=True)
        thread.start()
        for frame in read_frames(self.proc.stdout):
            on_frame(frame)
        code = self.proc.wait()
        thread.join(timeout=2.0)
        return code

    def running(self) -> bool:
        return self.proc.poll() is None

    def end(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the process to end by itself, then end it."""
        from cvload import subprocesses

        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        if self.proc.poll() is None:
            subprocesses.end(self.proc, grace=1.0, sigterm="leader")
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


class ProcessLink(Protocol):
    """How the coordinator reaches one load process: a ``LocalProcess``, or a ``RayProcess`` (cvload.load.ray_fleet)."""

    pid: int
    where: str  # where it runs, for messages: "" (this host) or " on IP"

    def write(self, message: dict[str, Any]) -> None:
        """Send a command line (never raises: a lost process shows in ``pump``)."""

    def pump(self, on_frame: Callable[[bytes], None], on_stderr: Callable[[str], None]) -> int:
        """Hand every frame and stderr line over until the process ends; its exit code."""
        ...

    def running(self) -> bool: ...

    def end(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the process to end by itself, then end it."""


@dataclass
class FleetMember:
    """One load process as the coordinator sees it: its part of the run, its transport (a ``LocalProcess``, or a
    load process behind a Ray actor in cvload.load.ray_fleet) and what it reported."""

    part: Part
    transport: ProcessLink
    status: Status | None = None  # the latest status (None: none came yet)
    final: FinalStatus | None = None
    failed: Failure | None = None
    ready: bool = False
    exited: int | None = None
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    records: int = 0

    @property
    def label(self) -> str:
        return f"load process {self.part.index} (pid {self.transport.pid}{self.transport.where})"

    @property
    def finished(self) -> bool:
        return self.final is not None or self.exited is not None


class FleetHealth(LoopHealth):
    """The session's ``client`` section for a fleet: every load process's loop lag and CPU, plus the
    coordinator's own CPU (its loop lag stamps nothing, so it is listed but never warned about)."""

    def __init__(self, fleet: ProcessFleet) -> None:
        super().__init__()
        self.fleet = fleet

    def _sections(self, *, final: bool) -> list[tuple[str, dict[str, Any] | None]]:
        out = []
        for child in self.fleet.children:
            section = child.final["client"] if final and child.final is not None else None
            live = child.status["client"] if child.status is not None else None
            out.append((f"load process {child.part.index}", section or live))
        return out

    def summary(self) -> dict[str, Any]:
        out = merge_client(self._sections(final=True), coordinator=super().summary())
        placement = self.fleet.placement()
        if placement:
            out["placement"] = placement
        return out

    def live(self) -> dict[str, Any]:
        return merge_client(self._sections(final=False), coordinator=super().live())


class ProcessFleet:
    """N load processes as one ``LoadDriver`` (see the module's docstring); ``--save-audio`` is refused with
    several processes, so ``events.audio`` never fires."""

    def __init__(self, config: RunConfig, count: int, items: int, events: Events | None = None, *,
                 until_drained: bool = False) -> None:
        self.config = config
        self.count = count
        self.parts = split(config, count, items, until_drained=until_drained)
        self.events = events if events is not None else Events()
        self.state = EngineState(planned=config.requests)
        self._last_end: float | None = None
        self._sent: dict[int, RequestRecord] = {}  # reported sends by run index, until they finish
        self.children: list[FleetMember] = []
        self.health = FleetHealth(self)
        self.deaths: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    # ---- starting --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every load process and wait until all have opened their connections (or one failed)."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        for part in self.parts:
            part.report_sends = bool(self.events.sent)
            child = FleetMember(part, self.spawn(part))
            self.children.append(child)
            threading.Thread(target=self._pump, args=(child,), name="cvload-fleet-reader", daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while not all(c.ready for c in self.children):
                for child in self.children:
                    if child.failed is not None:
                        raise _failure(child)
                    if child.exited is not None and not child.ready:
                        raise CvloadError(f"{child.label} ended with exit code {child.exited} before it was ready"
                                          + _tail(child))
                if time.monotonic() > deadline:
                    raise CvloadError(f"the load processes were not ready within {READY_TIMEOUT_S:g} s",
                                      hint="the host may be overloaded: use fewer --processes")
                await self._wait_change(1.0)
        except BaseException:
            self.close_processes()
            raise

    @property
    def inflight_count(self) -> int:
        return sum(c.status["inflight"] for c in self.children if c.status is not None and not c.finished)

    def content_summary(self) -> dict[str, Any] | None:
        """--check-content: every load process's checker (its latest status) as one."""
        from cvload.listen.live import Sampling, merge_live

        merged = merge_live([content for c in self.children if c.status is not None
                             and (content := c.status["content"]) is not None])
        if merged is not None:  # the run's sample, not one process's share of a budget
            merged["sampling"] = Sampling.parse(self.config.check_content).describe()
        return merged

    def drain_limit(self) -> float:
        return drain_limit(self.config)

    def release_transcripts(self, indices: Collection[int]) -> None:
        """Each load process releases its own (the run's request j*N + p is process p's request j)."""
        n = self.count
        mine: list[list[int]] = [[] for _ in range(n)]
        for index in indices:
            mine[index % n].append(index // n)
        for child in self.children:
            if mine[child.part.index]:
                self._write(child, {"cmd": "release", "value": mine[child.part.index]})

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close_processes)

    async def _wait_change(self, timeout: float) -> None:
        assert self._changed is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()

    def spawn(self, part: Part) -> ProcessLink:
        """Start one load process; its transport (``LocalProcess`` here, a Ray actor's in cvload.load.ray_fleet)."""
        return LocalProcess(asdict(part))

    def placement(self) -> list[dict[str, Any]]:
        """Where each load process runs, when that is not simply this host."""
        return []

    def translate(self, child: FleetMember, batch: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """A batch on this process's clock (all processes of a host share one: nothing to do)."""
        return batch

    def go(self, child: FleetMember, t0: float) -> dict[str, Any]:
        """The start message: the common start ``t0`` on this process's clock."""
        return {"cmd": "go", "t0": t0}

    def _write(self, child: FleetMember, message: dict[str, Any]) -> None:
        if not child.finished:
            child.transport.write(message)

    def _broadcast(self, message: dict[str, Any], values: list[Any] | None = None) -> None:
        for i, child in enumerate(self.children):
            self._write(child, message if values is None else {**message, "value": values[i]})

    # ---- reading the processes (reader threads hand everything to the loop) ---------------------------------
    def _pump(self, child: FleetMember) -> None:
        loop = self._loop
        assert loop is not None

        def on_frame(frame: bytes) -> None:
            batch = self.translate(child, pickle.loads(frame))
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_batch, child, batch)

        def on_stderr(text: str) -> None:
            child.stderr.append(text)
            print(f"[load process {child.part.index}] {text}", file=sys.stderr, flush=True)

        try:
            code = child.transport.pump(on_frame, on_stderr)
        except Exception as exc:  # noqa: BLE001 - a lost transport is a dead process, reported as such
            on_stderr(f"{type(exc).__name__}: {exc}")
            code = -1
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_exit, child, code)

    def _on_batch(self, child: FleetMember, batch: list[tuple[str, Any]]) -> None:
        for kind, payload in batch:
            if kind == "record":
                self._add(child, payload)
            elif kind == "sent":
                self._add_sent(child, payload)
            elif kind == "status":
                child.status = payload
            elif kind == "final":
                child.status = child.final = payload
            elif kind == "ready":
                child.ready = True
            elif kind == "failed":
                child.failed = payload
        self._update_state()

    def _as_run(self, child: FleetMember, record: RequestRecord) -> RequestRecord:
        """Process p's request j is the run's request j*N + p (its worker likewise); one clock, one start. The
        request id stays the one the server saw (each process has its own run id prefix)."""
        n, p = self.count, child.part.index
        record.index = record.index * n + p
        if record.worker >= 0:
            record.worker = record.worker * n + p
        record.run_start = self.state.started
        return record

    def _add_sent(self, child: FleetMember, record: RequestRecord) -> None:
        record = self._as_run(child, record)
        self._sent[record.index] = record
        self.events.sent.fire(record, [])

    def _add(self, child: FleetMember, record: RequestRecord) -> None:
        record = self._as_run(child, record)
        sent = self._sent.pop(record.index, None)
        if sent is not None:  # what the sent listeners decided about it
            record.level, record.warmup = sent.level, sent.warmup
        child.records += 1
        end = end_time(record)
        self._last_end = end if self._last_end is None else max(self._last_end, end)
        self.events.finished.fire(record)

    def _on_exit(self, child: FleetMember, code: int) -> None:
        child.exited = code
        if child.final is None and child.ready:
            why = f"failed: {child.failed['message']}" if child.failed else f"died (exit code {code})"
            death = (f"{child.label} {why}; its {child.records} finished request(s) are kept"
                     + ("" if child.failed else _tail(child)))
            self.deaths.append(death)
            if not self.state.aborted:
                self.state.aborted = death
            self.stop()
        self._update_state()

    def _update_state(self) -> None:
        st, statuses = self.state, [c.status for c in self.children if c.status is not None]
        if statuses:
            st.sent = sum(s["sent"] for s in statuses)
            st.done = sum(s["done"] for s in statuses)
            st.failed = sum(s["failed"] for s in statuses)
            st.concurrency = sum(s["concurrency"] for s in statuses)
            rates = [s["rate"] for s in statuses if s["rate"] is not None]
            st.rate = sum(rates) if rates else None
            sends = [s["last_send"] for s in statuses if s["last_send"] is not None]
            st.last_send = max(sends) if sends else None
            marks = [s["measure_start"] for s in statuses if s["measure_start"] is not None]
            first_mark = marks and st.measure_start is None
            st.measure_start = min(marks) if marks else None
            if first_mark:
                self.events.measure_start.fire()
            st.interrupted = st.interrupted or any(s["interrupted"] for s in statuses)
            aborted = next((s["aborted"] for s in statuses if s["aborted"]), None)
            if aborted and not st.aborted:
                st.aborted = aborted
                self.stop()  # the server died for one process: it died for all
        if self._changed is not None:
            self._changed.set()

    # ---- commands (the engine's) -----------------------------------------------------------------------------
    def pause(self) -> None:
        self.state.paused = True
        self._broadcast({"cmd": "pause"})

    def resume(self) -> None:
        self.state.paused = False
        self._broadcast({"cmd": "resume"})

    def stop(self) -> None:
        self.state.stopping = True
        self._broadcast({"cmd": "stop"})

    def interrupt(self) -> None:
        self.state.interrupted = True
        self.state.stopping = True
        self._broadcast({"cmd": "interrupt"})

    def abort(self, reason: str) -> None:
        if self.state.aborted is None:
            self.state.aborted = reason
        self.stop()

    def drain(self) -> None:
        """Every process ends its run as its limit would (requests in flight are waited for)."""
        self._broadcast({"cmd": "drain"})

    def set_concurrency(self, n: int) -> None:
        """Closed loop: the run's workers, split as at the start (at least one per process)."""
        n = max(self.count, int(n))
        self.state.concurrency = n
        self._broadcast({"cmd": "concurrency"}, [share(n, p, self.count) for p in range(self.count)])

    def set_rate(self, rate: float) -> None:
        rate = max(0.01, float(rate))
        self.state.rate = rate
        self._broadcast({"cmd": "rate"}, [rate / self.count] * self.count)

    # ---- the run ---------------------------------------------------------------------------------------------
    async def run(self) -> RunResult:
        t0 = time.monotonic() + GO_AFTER_S
        self.state.started = t0
        self.state.concurrency = self.config.concurrency if self.config.closed_loop else 0
        self.state.rate = self.config.rate
        if self.state.interrupted:
            self._broadcast({"cmd": "interrupt"})
        else:
            for child in self.children:
                self._write(child, self.go(child, t0))
        try:
            while not all(c.finished for c in self.children):
                await self._wait_change(1.0)
        finally:
            self.close_processes()
        requested = float(self.state.concurrency) if self.config.closed_loop else None
        return RunResult(self.state, self.wall_s(), self._concurrency(requested))

    def _concurrency(self, requested: float | None) -> dict[str, float | None]:
        """Each process's time-weighted in-flight count, summed (their windows share one clock and one ramp)."""
        parts = [c.final["achieved"] for c in self.children if c.final is not None]
        total = {key: sum(p.get(key) or 0.0 for p in parts) for key in ("achieved_mean", "achieved_max",
                                                                         "achieved_mean_overall")}
        return {"requested": requested, **total}

    def wall_s(self) -> float:
        start = self.state.measure_start if self.state.measure_start is not None else self.state.started
        return wall_time(start=start, end=time.monotonic() if self._last_end is None else self._last_end)

    def close_processes(self, grace: float = 10.0) -> None:
        """Every load process is told to stop and ends within ``grace`` (then it is killed)."""
        for child in self.children:
            if child.transport.running() and child.final is None:
                self._write(child, {"cmd": "interrupt"})
        deadline = time.monotonic() + grace
        for child in self.children:
            child.transport.end(max(0.1, deadline - time.monotonic()))


def _tail(child: FleetMember) -> str:
    lines = [line for line in child.stderr if line.strip()][-5:]
    return (": " + " | ".join(lines)) if lines else ""


def _failure(child: FleetMember) -> CvloadError:
    failed = child.failed
    if failed is None:
        return CvloadError(f"{child.label}: failed")
    cls = UsageError if failed["exit_code"] == UsageError.exit_code else CvloadError
    return cls(f"{child.label}: {failed['message']}", hint=failed["hint"])


if __name__ == "__main__":
    sys.exit(main())
