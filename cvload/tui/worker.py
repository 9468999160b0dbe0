"""The measuring process behind ``cvload tui``: one ``Session`` run exactly as ``cvload run`` runs it, no UI.

Measured here: a dashboard in the same interpreter shares the GIL and the garbage collector with the engine, and
its frames delayed chunk timestamps (event-loop stalls up to ~100 ms, p99 first chunk +20-40 ms at 8 streams).
So the engine runs in this child process and the dashboard only reads what it writes anyway (``records.jsonl``,
``telemetry.jsonl``, ``summary.json``) plus a few status lines a second.

Protocol, JSON lines. stdin (dashboard -> here): first ``{"config": RunConfig.to_json()}``, then commands
``{"cmd": "pause" | "resume" | "interrupt" | "concurrency" | "rate", "value": ...}``; end of input means the
dashboard is gone and the run is interrupted (results still written). stdout (here -> dashboard): ``prepared``
(results folder, target), ``status`` (engine counters, every ``STATUS_EVERY_S``), then ``finished`` (exit code)
or ``error`` (a message for the user and its exit code).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from cvload.config import RunConfig
from cvload.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, CvloadError

STATUS_EVERY_S = 0.2
STAGES_EVERY_S = 1.0
STAGES_WINDOW_S = 10.0


_channel = sys.stdout  # replaced in main(): stray prints must not mix with the protocol


def emit(message: dict[str, Any]) -> None:
    _channel.write(json.dumps(message, default=str) + "\n")
    _channel.flush()


def _status(engine: Any, telemetry: Any, stages: list[dict[str, Any]] | None,
            client: dict[str, Any] | None = None) -> dict[str, Any]:
    st = engine.state
    out: dict[str, Any] = {
        "type": "status", "started": st.started, "sent": st.sent, "done": st.done, "failed": st.failed,
        "planned": st.planned, "paused": st.paused, "stopping": st.stopping, "concurrency": st.concurrency,
        "rate": st.rate, "aborted": st.aborted, "interrupted": st.interrupted, "inflight": engine.inflight.count,
    }
    if stages is not None:
        out["stages"] = stages
    if telemetry is not None:
        out["warnings"] = list(telemetry.warnings)
    if client is not None:
        out["client"] = client  # this process's loop lag and CPU (cvload.loop_health), for the header
    return out


class _Commands:
    """Reads commands on a thread (blocked in read, it costs the event loop nothing) and hands them over."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.engine: Any = None
        self.quit = False

    def start(self) -> None:
        threading.Thread(target=self._read, name="cvload-tui-commands", daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            try:
                cmd = json.loads(line)
            except ValueError:
                continue
            with contextlib.suppress(RuntimeError):  # the loop closed: the run is over
                self.loop.call_soon_threadsafe(self.apply, cmd)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.apply, {"cmd": "interrupt"})

    def apply(self, cmd: dict[str, Any]) -> None:
        name = cmd.get("cmd")
        if name == "interrupt":
            self.quit = True
        engine = self.engine
        if engine is None:
            return
        if name == "interrupt":
            if not engine.state.stopping:
                engine.interrupt()
        elif name == "pause":
            engine.pause()
        elif name == "resume":
            engine.resume()
        elif name == "concurrency":
            engine.set_concurrency(int(cmd["value"]))
        elif name == "rate":
            engine.set_rate(float(cmd["value"]))


async def serve(config: RunConfig) -> int:
    from cvload.session import Session

    loop = asyncio.get_running_loop()
    commands = _Commands(loop)
    commands.start()
    session = Session(config)
    try:
        try:
            engine = await session.prepare()
        except CvloadError as exc:
            emit({"type": "error", "message": str(exc), "exit_code": exc.exit_code})
            return exc.exit_code
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, commands.apply, {"cmd": "interrupt"})
        cfg = session.config
        emit({"type": "prepared", "out_dir": str(session.out_dir), "servers": cfg.addresses(),
              "closed_loop": cfg.closed_loop, "telemetry": session.telemetry is not None})
        commands.engine = engine
        if commands.quit:
            engine.interrupt()
        reporter = asyncio.create_task(_report(engine, session))
        try:
            await session.execute()
        finally:
            reporter.cancel()
            emit(_status(engine, session.telemetry, None, session.loop_health.summary()))
            summary = await session.finish()
        code = EXIT_INTERRUPTED if engine.state.interrupted and not engine.records else session.exit_code()
        emit({"type": "finished", "exit_code": code, "status": summary["status"]})
        return code
    except Exception as exc:  # noqa: BLE001 - a bug must reach the user as a message, not vanish with the child
        emit({"type": "error", "message": f"{type(exc).__name__}: {exc}", "exit_code": EXIT_RUNTIME,
              "traceback": traceback.format_exc()})
        return EXIT_RUNTIME
    finally:
        await session.close()


async def _report(engine: Any, session: Any) -> None:
    last_stages = 0.0
    while True:
        stages = None
        now = time.monotonic()
        if session.telemetry is not None and now - last_stages >= STAGES_EVERY_S:
            last_stages = now
            with contextlib.suppress(Exception):  # telemetry never stops a run
                stages = session.telemetry.stage_breakdown(STAGES_WINDOW_S)
        emit(_status(engine, session.telemetry, stages, session.loop_health.live()))
        await asyncio.sleep(STATUS_EVERY_S)


def main() -> int:
    global _channel
    _channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # anything printed to stdout goes to stderr, which the dashboard shows after it closes
    first = sys.stdin.readline()
    try:
        config = RunConfig(**json.loads(first)["config"])
    except (ValueError, KeyError, TypeError) as exc:
        emit({"type": "error", "message": f"cvload tui worker: bad start line ({exc})", "exit_code": EXIT_RUNTIME})
        return EXIT_RUNTIME
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
