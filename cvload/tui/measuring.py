"""The measuring process behind ``cvload tui``: one ``Session.run`` exactly as ``cvload run`` runs it (a sweep as
``cvload sweep``, a tune as ``cvload tune`` for ``cvload tune --tui``), no UI.

Measured here: a dashboard in the same interpreter shares the GIL and the garbage collector with the engine, and
its frames delayed chunk timestamps (event-loop stalls up to ~100 ms, p99 first chunk +20-40 ms at 8 streams).
So the engine runs in this child process and the dashboard only reads what it writes anyway (``records.jsonl``,
``telemetry.jsonl``, ``summary.json``) plus a few status lines a second. The lines both ways are the messages of
``cvload.tui.messages``; this process's view of the run (``DashboardLink``) only reports, as the console does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from cvload.errors import EXIT_RUNTIME, CvloadError
from cvload.load.session import Session
from cvload.load.sweep import Level, Sweep, sweeping
from cvload.settings.config import RunConfig, SweepSettings
from cvload.tui.messages import (
    Command,
    EngineStatus,
    Failed,
    Finished,
    Message,
    Prepared,
    Start,
    SweepProgress,
    TuneProgress,
    from_line,
)

if TYPE_CHECKING:
    from cvload.tune.deployments import Change
    from cvload.tune.runner import Candidate, Tuner

STATUS_EVERY_S = 0.2
STAGES_EVERY_S = 1.0
STAGES_WINDOW_S = 10.0


class Channel:
    """The dashboard's end of this process's stdout (kept apart: stray prints must not mix with messages)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def send(self, message: Message) -> None:
        self.stream.write(message.to_line())
        self.stream.flush()


def engine_status(session: Session, stages: list[dict[str, Any]] | None = None, *, final: bool = False) -> EngineStatus:
    """The engine's counters now; ``client``: the last ~2 s of loop lag while running, the whole run's at the end."""
    engine = session.engine
    assert engine is not None
    st = engine.state
    return EngineStatus(
        started=st.started, measure_start=st.measure_start, sent=st.sent, done=st.done, failed=st.failed,
        planned=st.planned, paused=st.paused, stopping=st.stopping, concurrency=st.concurrency, rate=st.rate,
        aborted=st.aborted, interrupted=st.interrupted, inflight=engine.inflight_count, stages=stages,
        warnings=list(session.telemetry.warnings) if session.telemetry is not None else [],
        client=session.loop_health.summary() if final else session.loop_health.live(),
        outages=[outage.to_json(st.started) for outage in st.outages],
        content=session.content_live(),
    )


class DashboardLink:
    """The view of the run in this process (``cvload.load.session.RunView``): tells the dashboard what happens."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._reporter: asyncio.Task[None] | None = None

    def preparing(self, config: RunConfig) -> None:
        pass

    def attach(self, session: Session) -> None:
        cfg = session.config
        self.channel.send(Prepared(out_dir=str(session.out_dir), servers=cfg.addresses(),
                                   closed_loop=cfg.closed_loop, telemetry=session.telemetry is not None))
        self._reporter = asyncio.create_task(self._report(session))

    def detach(self, session: Session) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
        if session.engine is not None:
            self.channel.send(engine_status(session, final=True))

    def final(self, session: Session, summary: dict[str, Any]) -> None:
        self.channel.send(Finished(exit_code=session.exit_code(), status=summary["status"]))

    async def _report(self, session: Session) -> None:
        last_stages = 0.0
        while True:
            stages = None
            now = time.monotonic()
            if session.telemetry is not None and now - last_stages >= STAGES_EVERY_S:
                last_stages = now
                with contextlib.suppress(Exception):  # telemetry never stops a run
                    stages = session.telemetry.stage_breakdown(STAGES_WINDOW_S)
            self.channel.send(engine_status(session, stages))
            await asyncio.sleep(STATUS_EVERY_S)


class SweepLink:
    """The view of a sweep in this process (``cvload.load.sweep.SweepView``): the engine's status as for a run (its
    session's ``DashboardLink``), plus the sweep's progress as levels start and are judged."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.run = DashboardLink(channel)

    def preparing(self, config: RunConfig) -> None:
        pass

    def attach(self, sweep: Sweep) -> None:
        self.run.attach(sweep.session)
        self.channel.send(SweepProgress(progress=sweep.progress()))

    def level_started(self, sweep: Sweep, level: Level) -> None:
        self.channel.send(SweepProgress(progress=sweep.progress()))

    def level_judged(self, sweep: Sweep, level: Level) -> None:
        self.channel.send(SweepProgress(progress=sweep.progress()))

    def detach(self, sweep: Sweep) -> None:
        self.run.detach(sweep.session)

    def final(self, sweep: Sweep, result: dict[str, Any]) -> None:
        self.channel.send(SweepProgress(progress=sweep.progress()))
        self.channel.send(Finished(exit_code=sweep.exit_code(result), status=result["status"]))


def read_commands(lines: IO[str]) -> Iterator[Command]:
    """The dashboard's commands as they come, one JSON line each (a line that is not one is passed over)."""
    for line in lines:
        try:
            command = from_line(line)
        except ValueError:
            continue
        if isinstance(command, Command):
            yield command


class Commands:
    """Reads the dashboard's commands on a thread (blocked in read, it costs the event loop nothing) and applies
    them on the loop; the end of input (the dashboard is gone) is an interrupt. In a sweep the sweep sets the
    load: only pause, resume and interrupt apply."""

    def __init__(self, loop: asyncio.AbstractEventLoop, session: Session, lines: IO[str],
                 sweep: Sweep | None = None) -> None:
        self.loop = loop
        self.session = session
        self.lines = lines
        self.sweep = sweep

    def start(self) -> None:
        threading.Thread(target=self._read, name="cvload-tui-commands", daemon=True).start()

    def _read(self) -> None:
        for command in read_commands(self.lines):
            with contextlib.suppress(RuntimeError):  # the loop closed: the run is over
                self.loop.call_soon_threadsafe(self.apply, command)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.apply, Command("interrupt"))

    def apply(self, command: Command) -> None:
        if command.name == "interrupt":
            (self.sweep or self.session).interrupt()
            return
        engine = self.session.engine
        if engine is None:
            return
        if command.name == "pause":
            engine.pause()
        elif command.name == "resume":
            engine.resume()
        elif self.sweep is not None:
            return
        elif command.name == "concurrency" and command.value is not None:
            engine.set_concurrency(int(command.value))
        elif command.name == "rate" and command.value is not None:
            engine.set_rate(float(command.value))


class CandidateSweepLink(SweepLink):
    """A tune candidate's sweep: shown as a sweep is, but its end is not the end of the dashboard's run (the tune
    says ``Finished``); while it runs, the keys that apply to a sweep reach it."""

    def __init__(self, channel: Channel, commands: TuneCommands) -> None:
        super().__init__(channel)
        self.commands = commands

    def attach(self, sweep: Sweep) -> None:
        super().attach(sweep)
        self.commands.current = (asyncio.get_running_loop(), sweep)

    def detach(self, sweep: Sweep) -> None:
        self.commands.current = None
        super().detach(sweep)

    def final(self, sweep: Sweep, result: dict[str, Any]) -> None:
        self.channel.send(SweepProgress(progress=sweep.progress()))


def tune_progress(tuner: Tuner, current: Candidate | None = None, change: Change | None = None,
                  result: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the dashboard's tune panel draws: the candidates so far as in tune.json (levels left out: the sweep
    panel shows the current one's), the candidate measured now and what its change restarted, the best so far."""
    best = tuner.best()
    return {
        "space": str(tuner.space.file), "deployment": tuner.deployment.name, "kind": tuner.kind,
        "knobs": list(tuner.space.knobs), "costs": list(tuner.space.costs), "objectives": list(tuner.base.slo),
        "method": tuner.search.method, "total": tuner.search.total(), "repeat": tuner.repeat,
        "elapsed_s": round(tuner.elapsed(), 3),
        "candidates": [{k: v for k, v in c.to_json().items() if k != "levels"} for c in tuner.candidates],
        "current": None if current is None else {
            "number": current.number, "repeat": current.repeat, "knobs": current.knobs,
            "change": None if change is None else change.describe(), "status": current.status},
        "best": None if best is None else best.number,
        "best_so_far": tuner.best_so_far,
        "repeats": list(tuner.repeats),
        "status": "running" if result is None else result["status"],
        "stopped_because": None if result is None else result.get("stopped_because"),
        "pareto": None if result is None else result.get("pareto"),
    }


class TuneLink:
    """The view of a tune in this process (``cvload.tune.runner.TuneView``): the candidates as they start and are
    judged; each candidate's sweep is seen through a ``CandidateSweepLink``."""

    def __init__(self, channel: Channel, commands: TuneCommands) -> None:
        self.channel = channel
        self.commands = commands

    def started(self, tuner: Tuner) -> None:
        self.channel.send(TuneProgress(progress=tune_progress(tuner)))

    def candidate_started(self, tuner: Tuner, candidate: Candidate, change: Change) -> None:
        self.channel.send(TuneProgress(progress=tune_progress(tuner, candidate, change)))

    def candidate_done(self, tuner: Tuner, candidate: Candidate) -> None:
        self.channel.send(TuneProgress(progress=tune_progress(tuner)))

    def sweep_view(self) -> CandidateSweepLink:
        return CandidateSweepLink(self.channel, self.commands)

    def final(self, tuner: Tuner, result: dict[str, Any]) -> None:
        self.channel.send(TuneProgress(progress=tune_progress(tuner, result=result)))


class TuneCommands:
    """The dashboard's keys in a tune: pause and resume reach the candidate's sweep while one runs; interrupt is
    Ctrl-C, as ``cvload tune`` takes it in a terminal (a sweep under way stops and keeps its judged levels, the
    tune records the candidate as interrupted and writes tune.json), sent once."""

    def __init__(self, lines: IO[str]) -> None:
        self.lines = lines
        self.current: tuple[asyncio.AbstractEventLoop, Sweep] | None = None
        self.finished = False  # the tune returned: an interrupt now would cut its last writes
        self._interrupted = False
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._read, name="cvload-tui-commands", daemon=True).start()

    def _read(self) -> None:
        for command in read_commands(self.lines):
            self.apply(command)
        self.apply(Command("interrupt"))

    def apply(self, command: Command) -> None:
        if command.name == "interrupt":
            with self._lock:
                if self._interrupted or self.finished:
                    return
                self._interrupted = True
            os.kill(os.getpid(), signal.SIGINT)
            return
        current = self.current
        if current is None or command.name not in ("pause", "resume"):
            return
        loop, sweep = current
        engine = sweep.session.engine
        if engine is not None:
            with contextlib.suppress(RuntimeError):  # the sweep's loop closed: its candidate is over
                loop.call_soon_threadsafe(engine.pause if command.name == "pause" else engine.resume)


def serve_tune(request: dict[str, Any], channel: Channel, commands_in: IO[str]) -> int:
    """Run the tune on this thread (each candidate's sweep takes the main thread's signals, as in ``cvload tune``);
    whatever fails reaches the dashboard as a ``Failed`` message."""
    from cvload.tune.setup import TuneRequest, make_tuner

    commands = TuneCommands(commands_in)
    try:
        try:
            tuner = make_tuner(TuneRequest.from_json(request))
            link = TuneLink(channel, commands)
            commands.start()
            code = tuner.run(link)
        finally:
            with commands._lock:
                commands.finished = True
        channel.send(Finished(exit_code=code, status=tuner.result()["status"]))
        return code
    except Exception as exc:  # noqa: BLE001 - a bug must reach the user as a message, not vanish with the child
        return failed(channel, exc)


async def serve(config: RunConfig, channel: Channel, commands_in: IO[str]) -> int:
    """Run the session (or the sweep); whatever fails reaches the dashboard as a ``Failed`` message, never a
    silent exit."""
    try:
        if sweeping(config):
            sweep = Sweep(config)
            Commands(asyncio.get_running_loop(), sweep.session, commands_in, sweep).start()
            return await sweep.run(SweepLink(channel))
        session = Session(config)
        Commands(asyncio.get_running_loop(), session, commands_in).start()
        return await session.run(DashboardLink(channel))
    except Exception as exc:  # noqa: BLE001 - a bug must reach the user as a message, not vanish with the child
        return failed(channel, exc)


def failed(channel: Channel, exc: Exception) -> int:
    """What failed in the measuring process, told to the dashboard (a ``CvloadError`` as its message, a bug with
    its traceback); the exit code."""
    if isinstance(exc, CvloadError):
        channel.send(Failed(message=str(exc), exit_code=exc.exit_code))
        return exc.exit_code
    channel.send(Failed(message=f"{type(exc).__name__}: {exc}", exit_code=EXIT_RUNTIME,
                        traceback=traceback.format_exc()))
    return EXIT_RUNTIME


def load_commands() -> None:
    """Commands other packages install (``cvload.commands`` entry points) register what they provide as they load,
    as in ``cvload``'s own parser: server_bootstrap's deployment for ``cvload tune --bootstrap``."""
    import argparse
    from importlib.metadata import entry_points

    sub = argparse.ArgumentParser().add_subparsers()
    for entry in entry_points(group="cvload.commands"):
        entry.load()(sub)


def main() -> int:
    channel = Channel(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)  # anything printed to stdout goes to stderr, which the dashboard shows after it closes
    first = sys.stdin.readline()
    try:
        start = from_line(first)
        if not isinstance(start, Start):
            raise ValueError(f"expected a start message, got {type(start).__name__}")
        config = RunConfig(**{**start.config, "sweep": SweepSettings(**start.config.get("sweep") or {})})
    except (ValueError, TypeError) as exc:
        channel.send(Failed(message=f"cvload tui measuring process: bad start line ({exc})", exit_code=EXIT_RUNTIME))
        return EXIT_RUNTIME
    if start.tune is not None:
        if start.tune.get("bootstrap"):
            load_commands()
        return serve_tune(start.tune, channel, sys.stdin)
    return asyncio.run(serve(config, channel, sys.stdin))


if __name__ == "__main__":
    sys.exit(main())
