"""``cvload compare BASE NEW [NEW...]``: did a change regress? A table per metric, exit 3 on a regression (CI)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from cvload.errors import EXIT_OK, EXIT_SLO_FAILED, UsageError

if TYPE_CHECKING:
    from cvload.results.compare import Comparison, Settings

_VERDICT_STYLE = {"regression": "bold red", "improved": "green", "uncertain": "yellow", "ok": "", "no_data": "dim"}


def register(sub: argparse._SubParsersAction) -> None:
    from cvload.results.compare import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, THRESHOLD_HELP

    p = sub.add_parser(
        "compare", help="compare results folders (runs or sweeps) and flag regressions (CI)",
        description="Compare each results folder after the first (NEW) with the first (BASE), metric by metric. "
                    "A metric regressed when its change is worse than the threshold AND the bootstrap confidence "
                    "interval of the change excludes zero, so noise does not fail a build. Exit codes: 0 no "
                    "regression, 3 a regression, 2 bad usage (not a results folder, a run against a sweep, "
                    "different --mode or --api, an unknown metric).",
    )
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="BASE NEW [NEW...]: results folders (runs or sweeps)")
    p.add_argument("--threshold", action="append", default=[], metavar="SPEC",
                   help=f"how much worse counts (default 5%%): {THRESHOLD_HELP.replace('%', '%%')} (repeatable)")
    p.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE, metavar="C",
                   help=f"confidence of the bootstrap interval (default {DEFAULT_CONFIDENCE})")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                   help=f"bootstrap resamples per metric (default {DEFAULT_RESAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (same seed, same verdicts)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON (schema cvload.compare/1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cvload.results.compare import Settings, compare_folders, parse_thresholds, to_json

    if len(args.folders) < 2:
        raise UsageError("compare needs two results folders: BASE NEW [NEW...]")
    if not 0.5 <= args.confidence < 1.0:
        raise UsageError(f"--confidence {args.confidence}: use a value from 0.5 to below 1, e.g. 0.95")
    if args.resamples < 100:
        raise UsageError(f"--resamples {args.resamples}: use at least 100 (default 2000)")
    default, per_metric = parse_thresholds(args.threshold)
    settings = Settings(default=default, per_metric=per_metric, confidence=args.confidence,
                        resamples=args.resamples, seed=args.seed)
    comparisons = compare_folders(args.folders, settings)
    regressed = any(c.regressions for c in comparisons)
    if args.json:
        json.dump(to_json(comparisons, settings), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print(comparisons, settings)
    return EXIT_SLO_FAILED if regressed else EXIT_OK


def _fmt(value: float | None, unit: str, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    sign = "+" if signed else ""
    if unit == "share":
        return f"{value * 100:{sign}.2f}%"
    if unit in ("ms", "req/s"):
        return f"{value:{sign}.1f}" if unit == "ms" else f"{value:{sign}.2f}"
    return f"{value:{sign}.3g}"


def _percent(value: float | None, delta: float | None) -> str:
    if value is None:
        return "-" if not delta else "new"  # a change from zero has no percentage
    return f"{value * 100:+.1f}%"


def _print(comparisons: list[Comparison], settings: Settings) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    out = Console()
    if not out.is_terminal:
        out = Console(width=120)  # CI logs: one line per metric
    for c in comparisons:
        table = Table(title=f"{c.new}  vs  {c.base} (base)", title_justify="left", box=box.SIMPLE_HEAD)
        table.add_column("metric", no_wrap=True)
        for column in ("base", "new", "delta", "%", f"{settings.confidence:.0%} interval", "limit"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
        level = None
        for r in c.rows:
            if r.level != level:
                level = r.level
                table.add_section()
                table.add_row(f"[bold]{level}[/]", *[""] * 7)
            unit = f" ({r.unit})" if r.unit and r.unit != "share" else ""
            ci = f"{_fmt(r.ci[0], r.unit, signed=True)}..{_fmt(r.ci[1], r.unit, signed=True)}" if r.ci else "-"
            style = _VERDICT_STYLE.get(r.verdict, "")
            verdict = f"[{style}]{r.verdict}[/]" if style else r.verdict
            table.add_row(f"{r.metric}{unit}", _fmt(r.base, r.unit), _fmt(r.new, r.unit),
                          _fmt(r.delta, r.unit, signed=True), _percent(r.percent, r.delta), ci, r.threshold, verdict)
        out.print(table)
        by_note: dict[str, list[str]] = {}
        for r in c.rows:
            if r.note and r.verdict in ("uncertain", "ok") and r.percent != 0:
                by_note.setdefault(r.note, []).append(r.metric if r.level is None else f"{r.level} {r.metric}")
        for note, names in by_note.items():
            out.print(f"{', '.join(names)}: at most uncertain, {note}", highlight=False)
        for note in c.notes:
            out.print(f"note: {note}", highlight=False)
        if c.regressions:
            worst = ", ".join(f"{r.metric} {_fmt(r.delta, r.unit, signed=True)}{' ms' if r.unit == 'ms' else ''} "
                              f"({_percent(r.percent, r.delta)})" for r in c.regressions)
            out.print(f"[bold red]REGRESSION[/] {c.new}: {worst}", highlight=False)
        else:
            out.print(f"no regression: {c.new}", highlight=False)
