"""What a load driver is: the one face that ``Session`` and ``Sweep`` drive, whatever sends the requests.

Three drivers implement ``LoadDriver``: the in-process ``Engine`` (cvload.load.engine), the ``ProcessFleet`` of load
processes on this host (cvload.load.process_fleet) and the ``RayFleet`` on a Ray cluster's nodes (cvload.load.ray_fleet). A
driver is built with the run's ``Events`` (made by whoever runs it, before the driver starts, so a listener may
shape what the driver does: a fleet forwards its processes' sends only when someone listens to ``sent``), then
``start()`` (connections, processes), ``run()`` until its limit, ``drain()`` or ``stop()``, then ``close()``.
Its commands (pause, resume, concurrency, rate) apply live. A fleet fires the events of every load process on
the coordinator's ``Events``, so a listener never knows which driver it listens to. The models are locust's
``Environment.events`` and k6's executor interface.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, Protocol

import numpy as np
import numpy.typing as npt

from cvload.measure.loop_health import LoopHealth
from cvload.results.records import RequestRecord
from cvload.settings.config import RunConfig
from cvload.targets.base import Chunk

P = ParamSpec("P")  # what an event carries: its listeners' parameters


class EventHook(Generic[P]):
    """Listeners of one event, called in the order they were added (``fire`` never catches their errors)."""

    __slots__ = ("listeners",)

    def __init__(self) -> None:
        self.listeners: list[Callable[P, object]] = []

    def add_listener(self, listener: Callable[P, object], *, first: bool = False) -> Callable[P, object]:
        """``first``: before those already listening (a listener whose work the others read)."""
        if first:
            self.listeners.insert(0, listener)
        else:
            self.listeners.append(listener)
        return listener

    def remove_listener(self, listener: Callable[P, object]) -> None:
        self.listeners.remove(listener)

    def __bool__(self) -> bool:
        return bool(self.listeners)

    def fire(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for listener in self.listeners:
            listener(*args, **kwargs)


@dataclass
class Events:
    """Everything a run tells its listeners; every driver fires these and nothing else.

    - ``sent(record, chunks)``: a request left. A listener may set the record's ``level`` and ``warmup`` (a sweep
      does): they carry over to its finished record. ``chunks`` fills as the answer arrives (a live list; for a
      request in another process an empty one: its chunks stay there until it finishes).
    - ``finished(record)``: a request's final record (results writer, summary tally, sweep levels, live views).
    - ``audio(record, chunks)``: with ``--save-audio``, a finished request's audio (written, never kept).
    - ``measure_start()``: warm-up ended (telemetry starts its measured window).
    """

    # A listener's return value is ignored (``Tally.add`` returns the row it folded in).
    sent: EventHook[[RequestRecord, list[Chunk]]] = field(default_factory=EventHook)
    finished: EventHook[[RequestRecord]] = field(default_factory=EventHook)
    audio: EventHook[[RequestRecord, list[npt.NDArray[np.floating[Any]]]]] = field(default_factory=EventHook)
    measure_start: EventHook[[]] = field(default_factory=EventHook)


@dataclass
class Outage:
    """A time a server could not be reached (``--on-server-loss continue``): monotonic start and end."""

    server: str
    start: float
    end: float | None = None  # None: still down
    probes: int = 0  # reconnect attempts that failed
    last_error: str = ""

    def to_json(self, origin: float) -> dict[str, object]:
        """Seconds from ``origin`` (the run's start, as the records' ``run_start``)."""
        return {"server": self.server, "start_s": round(self.start - origin, 3),
                "end_s": None if self.end is None else round(self.end - origin, 3), "probes": self.probes}


@dataclass
class EngineState:
    """What views show live; updated by the driver, read by anyone."""

    started: float = 0.0
    planned: int | None = None
    sent: int = 0
    done: int = 0
    failed: int = 0
    paused: bool = False
    stopping: bool = False
    concurrency: int = 0  # closed loop: workers asked for now
    rate: float | None = None  # open loop: requests per second now
    measure_start: float | None = None  # end of warmup
    last_send: float | None = None
    aborted: str | None = None  # why the run was cut short by a failure (server died)
    interrupted: bool = False  # stopped by the user
    outages: list[Outage] = field(default_factory=list)  # --on-server-loss continue: the server was lost


@dataclass
class RunResult:
    state: EngineState
    wall_s: float
    concurrency: dict[str, float | None]


def drain_limit(config: RunConfig) -> float:
    """How long requests still in flight when a window ends are waited for: ``--drain``, else (a little more
    than) ``--request-timeout``, so that each request's own timeout decides."""
    return config.drain if config.drain is not None else config.request_timeout + 1.0


class LoadDriver(Protocol):
    """Sends a run's load and says what happened through ``events`` and ``state``.

    ``until_drained`` (given when the driver is built): send until ``drain()``, not one pass over the inputs (a
    sweep's levels end when the sweep says so).
    """

    events: Events
    state: EngineState

    @property
    def health(self) -> LoopHealth | None:
        """A fleet's loop health over its load processes; None: the session measures this process's loop."""
        ...

    async def start(self) -> None:
        """Everything before the first request that can fail: processes started, connections ready."""

    async def run(self) -> RunResult:
        """Send until the run's limit, ``drain()`` or ``stop()``; every record is in when it returns."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def set_concurrency(self, n: int) -> None:
        """Closed loop: workers now (added at once, retired after their current request)."""

    def set_rate(self, rate: float) -> None:
        """Open loop: requests per second from now."""

    def drain(self) -> None:
        """End the run as its limit would: nothing more is sent; requests in flight are waited for (``--drain``,
        ``--request-timeout``), then recorded incomplete."""

    def stop(self) -> None:
        """Stop sending; requests in flight get a short drain, then they are cancelled."""

    def interrupt(self) -> None:
        """The user's stop: ``stop()``, and the run's status is interrupted."""

    def abort(self, reason: str) -> None:
        """Stop because the run cannot go on (its records cannot be written): status aborted."""

    def drain_limit(self) -> float:
        """How long requests in flight when a window ends are waited for."""
        ...

    @property
    def inflight_count(self) -> int:
        """Requests in flight now."""
        ...

    def content_summary(self) -> dict[str, Any] | None:
        """--check-content: the live word of the content checker(s) (cvload.listen.live); None without checks."""
        ...

    def release_transcripts(self, indices: Collection[int]) -> int | None:
        """--check-content: stop waiting for these requests' transcripts (a sweep judging their level): their
        records go on now, unchecked (``late``). How many were waiting; None when only the load processes know."""
        ...

    async def close(self) -> None:
        """Release what ``start()`` took (load processes end here); safe to call twice."""
