"""``cvload sweep [SCENARIO]``: load levels one after another against one server; the capacity that meets every
objective, the knee, goodput per level (docs/sweep.md)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any

from cvload.commands.run import _duration, add_run_options, config_from_args
from cvload.settings.config import CAPACITY_BY, SEARCHES, RunConfig


def add_sweep_options(p: argparse.ArgumentParser) -> None:
    """The sweep's levels and rules; every ``cvload run`` option applies too (its --num-tasks/--rate take levels
    here). Defaults are None so a scenario's [sweep] table can supply them."""
    g = p.add_argument_group("sweep levels and rules")
    g.add_argument("--num-tasks", dest="sweep_num_tasks", default=None, metavar="LEVELS",
                   help="closed-loop levels: 1,2,4,8 | 1:64 (doubling) | 1:64:4 (a step)")
    g.add_argument("--rate", dest="sweep_rate", default=None, metavar="LEVELS",
                   help="open-loop levels in req/s: 1,2,4 | 0.5:8 (doubling) | 0.5:4:0.5 (a step)")
    g.add_argument("--search", choices=SEARCHES, default=None,
                   help="bisect: refine between the last passing and the first failing level")
    g.add_argument("--precision", type=float, default=None, metavar="R",
                   help="bisect's resolution for rates in req/s (default 0.1; concurrency goes to the integer)")
    g.add_argument("--keep-going", type=int, default=None, metavar="N",
                   help="measure N more levels after the first failing one (default 0)")
    g.add_argument("--stop-error-rate", default=None, metavar="SHARE",
                   help="stop at once when a level's error rate passes this (default 50%%)")
    g.add_argument("--min-capacity", type=float, default=None, metavar="L",
                   help="exit 3 when the capacity found is below L (default 1)")
    g.add_argument("--stable", default=None, metavar="SHARE",
                   help="measure each level in --duration windows until the first-chunk p95 of the last three "
                        "lie within SHARE (e.g. 10%%) of their mean")
    g.add_argument("--stable-max", type=_duration, default=None, metavar="T",
                   help="with --stable: the longest a level is measured (default 5 windows)")
    g.add_argument("--capacity-by", choices=CAPACITY_BY, default=None,
                   help="objectives (default): the objectives given; audible: also heard in time, without a stall "
                        "at --prebuffer, the right words and clean audio for 95%% of requests (docs/speech.md)")


SWEEP_FLAGS = {"sweep_num_tasks": "num_tasks", "sweep_rate": "rate", "search": "search", "precision": "precision",
               "keep_going": "keep_going", "stop_error_rate": "stop_error_rate", "min_capacity": "min_capacity",
               "stable": "stable", "stable_max": "stable_max", "capacity_by": "capacity_by"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", conflict_handler="resolve",
        help="measure load levels one after another: the capacity that meets every objective",
        description="Measure a series of load levels against one server (never restarted between levels) and "
                    "report the highest level meeting every objective, its bracket, the knee and goodput per "
                    "level. Every `cvload run` option applies to each level (--duration/--requests/--warmup per "
                    "level). Exit codes: 0 a capacity >= --min-capacity was found, 3 none (or below it), 2 bad "
                    "usage, 1 runtime failure, 130 interrupted before any level was measured.",
    )
    add_run_options(p)
    add_sweep_options(p)  # replaces run's --num-tasks/--rate (single values) with level lists
    p.add_argument("--json", action="store_true", help="print sweep.json instead of the table")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.set_defaults(func=sweep)


def sweep_config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults < scenario (with its [sweep] table) < flags; the run options as ``cvload run`` reads them."""
    config = config_from_args(args)
    given: dict[str, Any] = {key: getattr(args, flag) for flag, key in SWEEP_FLAGS.items()
                             if getattr(args, flag, None) is not None}
    # A level list on the command line replaces the scenario's, whichever loop that was.
    if "num_tasks" in given and "rate" not in given:
        given["rate"] = None
    elif "rate" in given and "num_tasks" not in given:
        given["num_tasks"] = None
    return dataclasses.replace(config, sweep=dataclasses.replace(config.sweep, **given))


def sweep(args: argparse.Namespace) -> int:
    from cvload.console import SweepConsoleView
    from cvload.load.sweep import Sweep

    runner = Sweep(sweep_config_from_args(args))  # levels and rules checked before anything starts
    try:
        return asyncio.run(runner.run(SweepConsoleView(json_output=args.json, quiet=args.quiet)))
    finally:
        sys.stdout.flush()
