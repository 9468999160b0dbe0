"""What the dashboard and its measuring process (``cvload.tui.measuring``) say to each other: one JSON object a
line, each a small dataclass here, so both sides agree on every field by construction.

Dashboard -> measuring process (its stdin): ``Start`` first, then ``Command`` lines; the end of its input means
the dashboard is gone, and the run is interrupted (its results are still written). Measuring process ->
dashboard (its stdout): ``Prepared`` (results folder, target), ``EngineStatus`` a few times a second (and, in a
sweep, ``SweepProgress`` as levels start and are judged; in a tune, ``TuneProgress`` as candidates start and are
judged, and a ``Prepared`` per candidate's sweep), then ``Finished`` (exit code) or ``Failed`` (a message
for the user and its exit code).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar


@dataclass
class Message:
    """A line of the protocol: ``to_line`` here, ``from_line`` (module level) there."""

    kind: ClassVar[str]

    def to_line(self) -> str:
        return json.dumps({"type": self.kind, **asdict(self)}, default=str) + "\n"


@dataclass
class Start(Message):
    kind: ClassVar[str] = "start"
    config: dict[str, Any]  # RunConfig.to_json()
    tune: dict[str, Any] | None = None  # cvload tune --tui: the tune's arguments (cvload.tune.setup.TuneRequest)


@dataclass
class Command(Message):
    """A key of the dashboard: pause, resume, interrupt (q), concurrency (closed loop), rate (open loop)."""

    kind: ClassVar[str] = "command"
    name: str
    value: float | None = None

    NAMES: ClassVar[tuple[str, ...]] = ("pause", "resume", "interrupt", "concurrency", "rate")


@dataclass
class Prepared(Message):
    kind: ClassVar[str] = "prepared"
    out_dir: str
    servers: list[str]
    closed_loop: bool
    telemetry: bool  # telemetry.jsonl is being written


@dataclass
class EngineStatus(Message):
    """The engine's counters at one moment (``cvload.load.engine.EngineState`` plus requests in flight)."""

    kind: ClassVar[str] = "status"
    started: float = 0.0  # monotonic, the clock of the records
    measure_start: float | None = None  # end of warmup
    sent: int = 0
    done: int = 0
    failed: int = 0
    planned: int | None = None
    paused: bool = False
    stopping: bool = False
    concurrency: int = 0
    rate: float | None = None
    aborted: str | None = None
    interrupted: bool = False
    inflight: int = 0
    stages: list[dict[str, Any]] | None = None  # the server's stage breakdown, when refreshed (once a second)
    warnings: list[str] = field(default_factory=list)  # telemetry warnings
    client: dict[str, Any] | None = None  # the measuring process's own loop lag and CPU (cvload.measure.loop_health)
    outages: list[dict[str, Any]] = field(default_factory=list)  # --on-server-loss continue: start_s, end_s
    content: dict[str, Any] | None = None  # --check-content: the checker's counts and backlog (cvload.listen.live)

    @property
    def measure_from(self) -> float:
        """The start of measurement as the engine counts it (the run's start while warmup lasts)."""
        return self.measure_start if self.measure_start is not None else self.started


@dataclass
class SweepProgress(Message):
    """A sweep's levels so far (``cvload.load.sweep.Sweep.progress``): judged levels as in sweep.json, the level
    measured now, the first-chunk objectives, and the capacity once the sweep is over."""

    kind: ClassVar[str] = "sweep"
    progress: dict[str, Any]


@dataclass
class TuneProgress(Message):
    """A tune's candidates so far (``cvload.tui.measuring.tune_progress``): each candidate's knobs, capacity,
    bracket, cost and status as in tune.json, the one measured now and the best so far."""

    kind: ClassVar[str] = "tune"
    progress: dict[str, Any]


@dataclass
class Finished(Message):
    kind: ClassVar[str] = "finished"
    exit_code: int
    status: str  # completed | interrupted | aborted


@dataclass
class Failed(Message):
    kind: ClassVar[str] = "failed"
    message: str
    exit_code: int
    traceback: str | None = None  # a bug's traceback, shown after the dashboard closes


KINDS: dict[str, type[Message]] = {cls.kind: cls for cls in (Start, Command, Prepared, EngineStatus, SweepProgress,
                                                              TuneProgress, Finished, Failed)}


def from_line(line: str) -> Message:
    """One line back into its message; ValueError when it is not one (a stray print, a cut line)."""
    data = json.loads(line)
    if not isinstance(data, dict) or data.get("type") not in KINDS:
        raise ValueError(f"not a cvload dashboard message: {line[:80]!r}")
    cls = KINDS[data.pop("type")]
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise ValueError(f"malformed {cls.kind} message: {exc}") from None
