"""``cvload tui [SCENARIO]``: the live dashboard over the same run as ``cvload run`` (same options, results
folder, objectives and exit codes); ``--replay DIR`` reopens a finished run. Without a terminal it runs headless.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from types import SimpleNamespace
from typing import Any

from cvload.commands.run import _duration, add_run_options, run_headless
from cvload.commands.sweep import add_sweep_options, sweep_config_from_args
from cvload.errors import UsageError
from cvload.settings.config import RunConfig, SweepSettings

UNTIL_QUIT_S = 3600.0  # a dashboard without --requests/--duration runs until q, bounded to an hour
STOP_WAIT_S = 60.0  # after q: drain (5 s) plus stopping an embedded server with stuck requests (15 s), with margin


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tui", conflict_handler="resolve", help="run a load test with a live latency dashboard (or --replay a results folder)",
        description="Run a load test with a live dashboard: first/second chunk latency, RTF, throughput, GPU, "
                    "errors and recent requests. Keys: space pause/resume, +/- concurrency (or rate), s snapshot, "
                    "r reset the live window, q quit (writes the results folder), ? help. Takes the options of "
                    "`cvload run` and exits with its codes: 0 all objectives met, 3 an objective failed, 2 bad "
                    "usage or configuration, 1 runtime failure. Without --requests or --duration it runs until q (at "
                    "most an hour). Without a terminal it runs headless, exactly as `cvload run`. With several levels "
                    "(--num-tasks 1,2,4 or 1:16, --rate 0.5:8) and the options of `cvload sweep` it runs a sweep: a "
                    "sweep panel fills in level by level beside the current level's panels.",
    )
    add_run_options(p)
    add_sweep_options(p)  # --num-tasks/--rate take one value (a run) or levels (a sweep)
    p.add_argument("--replay", default=None, metavar="RESULTS_DIR",
                   help="open a finished results folder (from `run` or `tui`) in the dashboard instead of running")
    p.add_argument("--window", type=_duration, default=None, metavar="T",
                   help="the live window ('now' percentiles) in seconds (default 10s)")
    p.set_defaults(func=tui)


def _is_terminal() -> bool:
    return sys.stdout.isatty() and sys.stdin.isatty()


def tui_config(args: argparse.Namespace) -> RunConfig:
    """A run, or a sweep when the levels are several (or a scenario's [sweep] table gives levels)."""
    from cvload.load.sweep import SweepPlan, sweeping

    config = sweep_config_from_args(args)
    if config.barge_in_baseline:
        raise UsageError("--barge-in-baseline pairs two headless runs: use cvload run",
                         hint="the dashboard shows the barge-in run itself; leave --barge-in-baseline out")
    if not sweeping(config):
        return config
    sw = config.sweep
    given = sw.levels()
    assert given is not None  # sweeping(): one of num_tasks and rate is set
    levels = given[1]
    if len(levels) == 1 and sw.search is None and sw.stable is None:  # one level: a run, as it always was
        one = {"num_tasks": int(levels[0]), "rate": None} if sw.num_tasks is not None else \
            {"num_tasks": None, "rate": levels[0]}
        return dataclasses.replace(config, **one, sweep=SweepSettings()).validate()
    SweepPlan.from_config(config)  # bad levels or rules: exit 2 before anything starts
    return config


def tui(args: argparse.Namespace) -> int:
    from cvload.console import ConsoleView, SweepConsoleView
    from cvload.load.sweep import Sweep, sweeping

    if args.replay:
        return replay(args.replay)
    config = tui_config(args)
    if not _is_terminal():
        print("cvload tui: not a terminal (stdout or stdin is redirected): running headless, as `cvload "
              f"{'sweep' if sweeping(config) else 'run'}`", file=sys.stderr, flush=True)
        if sweeping(config):
            try:
                return asyncio.run(Sweep(config).run(SweepConsoleView()))
            finally:
                sys.stdout.flush()
        return run_headless(config, ConsoleView())
    from cvload.tui.run_source import RunSource

    if config.requests is None and config.duration is None and not sweeping(config):
        config = config.merged({"duration": UNTIL_QUIT_S})  # watch until q instead of one pass over the inputs
    source = RunSource(config, window_s=args.window, yield_cpu=True)
    code = show(source)
    if source.summary is not None:
        ConsoleView().final(SimpleNamespace(out_dir=source.out_dir), source.summary)
    if source.sweep_result is not None:
        SweepConsoleView().final(SimpleNamespace(out_dir=source.out_dir), source.sweep_result)
    return code


def show(source: Any) -> int:
    """The dashboard over a live source (a run, sweep or tune in its measuring process) until it closes; then the
    run ends as `run` ends it, what the measuring process said goes to stderr, and its exit code comes back."""
    from cvload.tui.app import DashboardApp

    try:
        DashboardApp(source).run()
    finally:
        source.stop()  # the app is gone (q, or it failed): the run still ends as `run` ends it
        try:
            finished = source.wait(timeout=STOP_WAIT_S)
        except KeyboardInterrupt:
            finished = False
        if not finished:  # a stuck server or a second Ctrl-C: end the measuring process, never orphan it
            source.terminate()
            source.wait(timeout=STOP_WAIT_S)
    for line in source.stderr:  # what the measuring process said while the dashboard owned the terminal
        print(line, file=sys.stderr)
    if source.error_detail:
        print(source.error_detail, file=sys.stderr)
    code: int = source.exit_code()  # re-raises what failed in the run (a CvloadError becomes its message)
    return code


def replay(folder: str) -> int:
    from cvload.console import summary_table
    from cvload.tui.replay import ReplaySource

    source = ReplaySource(folder)
    if not _is_terminal():
        print("cvload tui: not a terminal: printing the replayed run's summary instead", file=sys.stderr)
        if source.summary is not None:
            from rich.console import Console

            Console().print(summary_table(source.summary))
        return 0
    from cvload.tui.app import DashboardApp

    DashboardApp(source).run()
    return 0
