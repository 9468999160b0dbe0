"""``cvload tune SPACE.toml [--emulator | --bootstrap CONFIG]``: which configuration of a deployment holds the most
streams within the objectives (docs/tune.md)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from cvload.commands.run import _duration
from cvload.errors import EXIT_OK, UsageError


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
    p.set_defaults(func=tune)


def tune(args: argparse.Namespace) -> int:
    from cvload.config import RunConfig
    from cvload.results import default_out_dir
    from cvload.tune.console import TuneConsole
    from cvload.tune.deployments import EmulatorDeployment, factory
    from cvload.tune.runner import Tuner
    from cvload.tune.space import load_space

    space = load_space(args.space)
    if args.seed is not None:
        space.seed = args.seed
    if args.repeat is not None and args.repeat < 0:
        raise UsageError(f"--repeat must not be negative, got {args.repeat}")
    base = dataclasses.replace(RunConfig(), **space.scenario)
    if args.slo:
        base = dataclasses.replace(base, slo=list(args.slo))
    if args.duration is not None:
        base = dataclasses.replace(base, duration=args.duration, requests=None)
    if base.server:
        raise UsageError(f"space {args.space}: server is set by the deployment tune reconfigures",
                         hint="drop server from the space file")
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out: the results folder of the tune to go on with")
    out = args.out or default_out_dir(f"tune-{args.space.stem}")
    if args.bootstrap:
        deployment = factory("bootstrap")(args.bootstrap, out / "bootstrap")
    else:
        deployment = EmulatorDeployment(profile=base.profile or "l20_pipeline", profile_set=dict(base.profile_set),
                                        root=out / "emulator", model=base.model, mode=base.mode,
                                        prompt_models=not base.spk_cache)
    tuner = Tuner(space, deployment, base, out_dir=out, budget_s=args.budget, resume=args.resume,
                  repeat=args.repeat)
    if args.plan:
        for line in tuner.plan_lines():
            print(line)
        return EXIT_OK
    try:
        return tuner.run(TuneConsole(json_output=args.json, quiet=args.quiet))
    finally:
        sys.stdout.flush()
