"""The dashboard app: draws a source (live run, sweep or tune, or a replay) on a timer and turns keys into engine commands.

Rendering happens only on the refresh timer (``REFRESH_S``), from the aggregates of ``cvload.measure.live_window``; nothing is
drawn per request or per chunk, and a live run is measured in another process (``RunSource``), so the screen
cannot delay a timestamp.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from cvload.tui.panels import (
    ErrorsPanel,
    GpuPanel,
    LatencyPanel,
    RecentPanel,
    RtfPanel,
    SpeechPanel,
    StagesPanel,
    SweepPanel,
    ThroughputPanel,
    TunePanel,
    header_text,
)
from cvload.tui.run_source import RunSource
from cvload.tui.snapshots import write_snapshot
from cvload.tui.source import Source

REFRESH_S = 0.2  # 5 Hz: at least 4 Hz even when a loaded machine drops a tick
STAGES_WINDOW_S = 10.0

HELP = """\
[b]cvload dashboard[/b]

[b]space[/b]   pause / resume sending (in-flight requests finish)
[b]+ / -[/b]   one more / one fewer concurrent stream
        (open loop: rate x1.25 / ÷1.25)
[b]s[/b]       snapshot: results so far + SVG screenshot
        into <results>/snapshots/
[b]r[/b]       reset the live window ("now" and histograms)
[b]q[/b]       quit: stop sending, let in-flight requests
        finish, write the results folder as `cvload run`
[b]?[/b]       this help (esc closes)

[dim]now[/]  = requests finished in the last {window:g} s (since reset)
[dim]run[/]  = every measured request, as summary.json counts them
"""


def checker_state(source: Source) -> dict[str, Any] | None:
    """The content checker's sample and backlog: live from the status lines, else from summary.json."""
    live = getattr(getattr(source, "state", None), "content", None)
    return live if live else (getattr(source, "summary", None) or {}).get("content")


def client_health(source: Source) -> dict[str, Any] | None:
    """The measuring process's loop lag and CPU: live from its status lines, else from summary.json."""
    state = getattr(source, "state", None)
    live = getattr(state, "client", None)
    return live if live else (getattr(source, "summary", None) or {}).get("client")


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss", "close")]

    def __init__(self, window_s: float) -> None:
        super().__init__()
        self.window_s = window_s

    def compose(self) -> ComposeResult:
        yield Static(HELP.format(window=self.window_s), id="help")


class DashboardApp(App[int]):
    """The live dashboard; ``source`` says what to show and takes the commands."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "cvload"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "pause", "pause/resume"),
        Binding("plus,equals_sign", "load(1)", "more load", key_display="+"),
        Binding("minus,underscore", "load(-1)", "less load", key_display="-"),
        Binding("s", "snapshot", "snapshot"),
        Binding("r", "reset", "reset window"),
        Binding("q", "quit_run", "quit"),
        Binding("ctrl+c", "quit_run", "quit", show=False, priority=True),
        Binding("question_mark", "help", "help", key_display="?"),
    ]

    def __init__(self, source: Source, *, refresh_s: float = REFRESH_S, close_when_done: bool = False) -> None:
        super().__init__()
        self.source = source
        self.refresh_s = refresh_s
        self.close_when_done = close_when_done  # headless drivers (benchmark): exit when the run ends
        self.frames = 0
        self._quitting = False
        self.last_snapshot: Path | None = None
        self._sigterm = False

    def compose(self) -> ComposeResult:
        self.header = Static(id="header")
        self.latency = [LatencyPanel("First chunk", "first_chunk_latency_ms", id="first"),
                        LatencyPanel("Second chunk", "second_chunk_latency_ms", id="second")]
        self.rtf = RtfPanel("RTF", id="rtf")
        self.throughput = ThroughputPanel("Throughput", id="throughput")
        self.gpu = GpuPanel("GPU", id="gpu")
        self.stages = StagesPanel("Server stages", id="stages")
        self.errors = ErrorsPanel("Errors", id="errors")
        self.recent = RecentPanel("Recent requests", id="recent")
        # Listening (--onset, --check-content): the Speech panel shares the recent requests' row.
        self.speech = SpeechPanel("Speech", id="speech") if getattr(self.source, "listening", False) else None
        if self.speech is not None:
            self.recent.add_class("beside-speech")
        # A sweep: its panel (levels against load) takes the recent requests' place beside the level's panels.
        self.sweep = SweepPanel("Sweep", id="sweep") if getattr(self.source, "sweeping", False) else None
        # A tune: its table of candidates takes the GPU and stages' place (each candidate's sweep below it).
        self.tune = TunePanel("Tune", id="tune") if getattr(self.source, "tuning", False) else None
        yield self.header
        with Static(id="body", classes="tune" if self.tune is not None else ""):
            yield from self.latency
            yield self.rtf
            yield self.throughput
            if self.tune is not None:
                yield self.tune
            else:
                with Horizontal(id="gpu-row"):
                    yield self.gpu
                    yield self.stages
            yield self.errors
            if self.speech is not None and self.sweep is None:
                yield self.speech
            yield self.sweep or self.recent
        yield Footer()

    def on_mount(self) -> None:
        if isinstance(self.source, RunSource):
            self.source.start()
        try:  # SIGTERM quits as q does (results written); Ctrl-C arrives as a key in raw mode
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.action_quit_run)
            self._sigterm = True
        except (RuntimeError, NotImplementedError, ValueError):  # not the main thread: no handler
            self._sigterm = False
        self.draw()
        self.set_interval(self.refresh_s, self.draw)

    def on_unmount(self) -> None:
        if self._sigterm:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)

    # ---- drawing (timer only) ----------------------------------------------------------------------------
    def draw(self) -> None:
        """One frame from the source's aggregates (the widgets are kept, so a modal screen on top is fine)."""
        if not self.header.is_attached:
            return  # shutting down
        source = self.source
        source.poll()
        status = source.status()
        snap = source.live.snapshot(status.elapsed if status.phase != "replay" else None)
        self.header.update(header_text(status, source.target, source.scenario, client_health(source),
                                       checker_state(source)))
        for panel in self.latency:
            panel.show(snap)
        self.rtf.show(snap)
        self.throughput.show(snap, status.outages, getattr(source, "summary", None))
        if self.tune is not None:
            tune_elapsed = getattr(source, "tune_elapsed", None)
            self.tune.show(getattr(source, "tune", None), tune_elapsed() if tune_elapsed is not None else None)
        else:
            self.gpu.show(source.telemetry)
            self.stages.show(source.telemetry, STAGES_WINDOW_S)
        self.errors.show(snap)
        if self.speech is not None and self.sweep is None:
            self.speech.show(snap)
        if self.sweep is not None:
            self.sweep.show(getattr(source, "sweep", None))
        else:
            self.recent.show(snap)
        self.frames += 1
        if isinstance(source, RunSource) and source.done and (self._quitting or self.close_when_done
                                                              or source.error is not None):
            self.exit(0)

    # ---- keys --------------------------------------------------------------------------------------------
    def action_pause(self) -> None:
        self._say(self.source.toggle_pause())

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A sweep sets the load itself: + and - leave the footer and do nothing."""
        return not (action == "load" and getattr(self.source, "sweeping", False))

    def action_load(self, direction: int) -> None:
        self._say(self.source.change_load(direction))

    def action_reset(self) -> None:
        self.source.live.reset()
        self.draw()
        self.notify("live window reset", timeout=2)

    def action_snapshot(self) -> None:
        if self.source.out_dir is None:
            self.notify("nothing to snapshot yet (the run has not started)", severity="warning")
            return
        self.draw()
        try:
            folder = write_snapshot(self.source, self.export_screenshot())
        except OSError as exc:
            self.notify(f"snapshot failed: {exc}", severity="error")
            return
        self.last_snapshot = folder
        self.notify(f"snapshot saved: {folder}", timeout=4)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.source.live.window_s))

    def action_quit_run(self) -> None:
        """Quit gracefully: a live run stops sending, drains and writes its results; then the app exits."""
        if not isinstance(self.source, RunSource) or self.source.done:
            self.exit(0)
            return
        if not self._quitting:
            self._quitting = True
            self.source.stop()
            self.notify("stopping: waiting for in-flight requests, then writing the results folder",
                        timeout=10)

    def _say(self, message: str | None) -> None:
        if message:
            self.notify(message, timeout=2)
        elif not self.source.controllable:
            self.notify("replay: the run is over, nothing to control", severity="warning", timeout=2)
