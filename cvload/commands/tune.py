"""``cvload tune SPACE.toml [--emulator | --bootstrap CONFIG]``: which configuration of a deployment holds the most
streams within the objectives (docs/tune.md)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cvload.commands.run import _duration
from cvload.commands.tui import show
from cvload.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from cvload.tune.runner import Tuner
    from cvload.tune.setup import TuneRequest


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune", help="search a deployment's knobs for the configuration holding the most streams",
        description="For each candidate configuration of a search space: reconfigure the deployment (a model "
                    "reload where Triton allows, a relaunch otherwise), measure its capacity with the sweep's "
                    "bisect, and keep the best. Exit codes: 0 a best configuration was found, 3 no candidate met "
                    "the objectives (the closest is named), 2 bad usage, 1 runtime failure, 130 interrupted "
                    "before any candidate was measured.")
    p.add_argument("space", type=Path, help="search space TOML: a scenario plus a [tune] table (docs/tune.md)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--emulator", action="store_true",
                       help="tune the embedded pipeline emulator (the default)")
    where.add_argument("--bootstrap", metavar="CONFIG", default=None,
                       help="tune the deployment of a `cvload bootstrap` config")
    p.add_argument("--slo", action="append", default=None, metavar="OBJECTIVE",
                   help="objective (repeatable); replaces the space file's slo")
    p.add_argument("--budget", type=_duration, default=None, metavar="T",
                   help="stop starting candidates after this long (e.g. 2h, 15m); default the space's budget")
    p.add_argument("--resume", action="store_true", help="go on with the tune in --out, skipping measured candidates")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="re-measure the best candidate N times at the end (default the space's repeat, 1)")
    p.add_argument("--duration", type=_duration, default=None, metavar="T", help="each level's window")
    p.add_argument("--seed", type=int, default=None, help="the search's seed (default the space's)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default results/<time>-tune-<space>)")
    p.add_argument("--plan", action="store_true",
                   help="print each candidate's plan (what would be rebuilt, relaunched or reloaded); measure nothing")
    p.add_argument("--json", action="store_true", help="print tune.json instead of the table")
    p.add_argument("--quiet", action="store_true", help="no per-level progress")
    p.add_argument("--tui", action="store_true",
                   help="show the search live in the dashboard: the candidate measured now, its sweep's levels, "
                        "the table so far (q stops the tune as Ctrl-C does; without a terminal: the table)")
    p.set_defaults(func=tune)


def tune(args: argparse.Namespace) -> int:
    from cvload.tune.console import TuneConsole
    from cvload.tune.setup import TuneRequest, make_tuner

    request = TuneRequest(space=str(args.space), bootstrap=args.bootstrap, slo=args.slo, budget=args.budget,
                          resume=args.resume, repeat=args.repeat, duration=args.duration, seed=args.seed,
                          out=None if args.out is None else str(args.out))
    if args.tui and args.json:
        raise UsageError("--tui and --json both say how to show the tune: choose one")
    tuner = make_tuner(request)  # bad input fails here (exit 2), before any server starts or a dashboard opens
    if args.plan:
        for line in tuner.plan_lines():
            print(line)
        return EXIT_OK
    if args.tui:
        if sys.stdout.isatty() and sys.stdin.isatty():
            return tune_dashboard(tuner, request)
        print("cvload tune --tui: not a terminal (stdout or stdin is redirected): printing the table instead",
              file=sys.stderr, flush=True)
    try:
        return tuner.run(TuneConsole(json_output=args.json, quiet=args.quiet))
    finally:
        sys.stdout.flush()


def tune_dashboard(tuner: Tuner, request: TuneRequest) -> int:
    """The tune in the dashboard: measured in the dashboard's measuring process (``cvload.tui.measuring``) as the
    console's tune is measured here; once the dashboard closes, the table and the answer are printed as without it."""
    from cvload.tui.tune_source import TuneSource
    from cvload.tune.console import TuneConsole
    from cvload.tune.runner import Candidate

    request = dataclasses.replace(request, out=str(tuner.out_dir.resolve()), space=str(Path(request.space).resolve()))
    source = TuneSource(tuner.base, request, yield_cpu=True)
    code = show(source)
    if source.tune_result is not None:
        tuner.candidates = [Candidate.from_json(c) for c in source.tune_result["candidates"]]
        console = TuneConsole()
        console.started(tuner)
        console.final(tuner, source.tune_result)
    return code
