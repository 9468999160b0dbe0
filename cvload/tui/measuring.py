"""The measuring process behind ``cvload tui``: one ``Session.run`` exactly as ``cvload run`` runs it, no UI.

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
import sys
import threading
import time
import traceback
from typing import IO, Any

from cvload.config import RunConfig, SweepSettings
from cvload.errors import EXIT_RUNTIME, CvloadError
from cvload.session import Session
from cvload.sweep import Sweep, sweeping
from cvload.tui.messages import (
    Command,
    EngineStatus,
    Failed,
    Finished,
    Message,
    Prepared,
    Start,
    SweepProgress,
    from_line,
)

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
        content=session.content.summary() if session.content is not None else None,
    )


class DashboardLink:
    """The view of the run in this process (``cvload.session.RunView``): tells the dashboard what happens."""

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


class SweepLink(DashboardLink):
    """The view of a sweep in this process (``cvload.sweep.SweepView``): the engine's status as for a run, plus
    the sweep's progress as levels start and are judged."""

    def attach(self, sweep: Sweep) -> None:  # type: ignore[override]
        super().attach(sweep.session)
        self.channel.send(SweepProgress(progress=sweep.progress()))

    def level_started(self, sweep: Sweep, level: Any) -> None:
        self.channel.send(SweepProgress(progress=sweep.progress()))

    def level_judged(self, sweep: Sweep, level: Any) -> None:
        self.channel.send(SweepProgress(progress=sweep.progress()))

    def detach(self, sweep: Sweep) -> None:  # type: ignore[override]
        super().detach(sweep.session)

    def final(self, sweep: Sweep, result: dict[str, Any]) -> None:  # type: ignore[override]
        self.channel.send(SweepProgress(progress=sweep.progress()))
        self.channel.send(Finished(exit_code=sweep.exit_code(result), status=result["status"]))


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
        for line in self.lines:
            try:
                command = from_line(line)
            except ValueError:
                continue
            if isinstance(command, Command):
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
    except CvloadError as exc:
        channel.send(Failed(message=str(exc), exit_code=exc.exit_code))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - a bug must reach the user as a message, not vanish with the child
        channel.send(Failed(message=f"{type(exc).__name__}: {exc}", exit_code=EXIT_RUNTIME,
                            traceback=traceback.format_exc()))
        return EXIT_RUNTIME


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
    return asyncio.run(serve(config, channel, sys.stdin))


if __name__ == "__main__":
    sys.exit(main())
