"""From results folders to a Report: check that they can be shown together, then lay out figures and tables."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvload import __version__
from cvload.errors import UsageError
from cvload.report import figures, tables
from cvload.report.document import Figure, Report, Section, Table
from cvload.report.tune import build_tune
from cvload.results.folder import Results, RunResults, SweepResults, open_results
from cvload.results.tune_file import read_tune


def labels_for(inputs: Sequence[Results]) -> list[str]:
    """Folder names, made unique with their parents where two are the same (results/a/run, results/b/run)."""
    labels = [r.label for r in inputs]
    for n, r in enumerate(inputs):
        if labels.count(r.label) > 1:
            labels[n] = "/".join(r.path.resolve().parts[-2:])
    seen: dict[str, int] = {}
    for n, label in enumerate(labels):  # the same folder twice
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[n] = f"{label} #{seen[label]}"
    return labels


def check_together(inputs: Sequence[Results]) -> None:
    """Runs and sweeps, streaming and offline, do not share axes: a UsageError before anything is drawn."""
    runs = [r for r in inputs if isinstance(r, RunResults)]
    if runs and len(runs) != len(inputs):
        raise UsageError("cannot report runs and sweeps together: "
                         + ", ".join(f"{r.path} is a {'run' if isinstance(r, RunResults) else 'sweep'}"
                                     for r in inputs),
                         hint="report the runs and the sweeps separately")
    modes = {str(r.path): r.mode for r in inputs}
    if len(set(modes.values())) > 1:
        raise UsageError("cannot overlay streaming and offline results: "
                         + ", ".join(f"{path} is {mode or 'of unknown mode'}" for path, mode in modes.items()),
                         hint="offline requests have one chunk: their latencies do not compare with streaming "
                              "ones; report each mode on its own")
    for r in inputs:
        if isinstance(r, SweepResults) and not r.levels:
            raise UsageError(f"{r.path / 'sweep.json'}: the sweep has no levels", hint="nothing to report")


def build(inputs: Sequence[Results]) -> Report:
    check_together(inputs)
    labels = labels_for(inputs)
    colours = [figures.colour(n) for n in range(len(inputs))]
    runs = [r for r in inputs if isinstance(r, RunResults)]  # check_together: all runs or all sweeps
    sweep_list = [r for r in inputs if isinstance(r, SweepResults)]
    sweeps = bool(sweep_list)
    sections = _sweep_sections(sweep_list, labels) if sweeps else _run_sections(runs, labels)
    kind = "sweep" if sweeps else "run"
    several = len(inputs) > 1
    title = (f"cvload {kind} report: " + labels[0]) if not several else f"cvload {kind} comparison: " + \
        " vs ".join(labels)
    mode = inputs[0].mode or "unknown mode"
    lines = [f"{len(inputs)} {kind}{'s' if several else ''}, {mode}."]
    if sweeps:
        lines += [(f"{label}: " if several else "") + tables.sweep_answer(sweep)
                  for label, sweep in zip(labels, sweep_list)]
    else:
        verdicts: dict[object, str] = {True: "objectives met", False: "objectives missed"}
        for label, run in zip(labels, runs):
            s = run.summary
            verdict = verdicts.get(s.get("slo_passed")) \
                if s.get("slo") else "no objectives"
            req = s.get("requests") or {}
            lines.append((f"{label}: " if several else "")
                         + f"{req.get('ok', 0):,} of {req.get('total', 0):,} requests ok, "
                         f"first chunk p95 {tables.fmt((s.get('metrics') or {}).get('first_chunk_latency_ms', {}).get('p95'), 'ms')} ms, "
                         f"{tables.fmt((s.get('throughput') or {}).get('requests_per_s'), 'rate')} req/s, "
                         f"{verdict} ({s.get('status', '?')}).")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Report(title=title, inputs=[(label, str(r.path), c) for label, r, c in zip(labels, inputs, colours)],
                  lines=lines, sections=sections, generated=f"cvload {__version__}, {stamp}")


def _run_sections(runs: Sequence[RunResults], labels: list[str]) -> list[Section]:
    figs = [f for f in (draw(runs, labels) for draw in figures.RUN_FIGURES) if f is not None]
    headline = Section("Results")
    if len(runs) > 1:
        headline.items.append(tables.deltas(tables.HEADLINE, [r.summary for r in runs], labels, "Deltas"))
    verdicts = tables.objectives(list(zip(labels, (r.summary for r in runs))))
    if verdicts is not None:
        headline.items.append(verdicts)
    def titled(*names: str) -> list[Figure | Table | str]:
        return [f for f in figs if f.title in names]

    out = [headline,
           Section("Latency", titled("First-chunk latency (CDF)", "Second-chunk gap", "Real-time factor")),
           Section("Over time", titled("Latency and throughput over time", "Errors and stalls over time")),
           Section("Server", titled("Server time per stage")),
           Section("Barge-in", titled("Barge-in release time", "Barge-in: first chunk of the others"))]
    if len(runs) == 1:
        out.append(Section("Summary", [tables.run_summary(runs[0])]))
    else:
        out.append(Section("Summaries", [_titled(tables.run_summary(r), label) for r, label in zip(runs, labels)]))
    config = tables.configuration(labels, [r.config for r in runs])
    if config is not None:
        out.append(Section("Configuration", [config]))
    return [s for s in out if s.items]


def _titled(table: Table, label: str) -> Table:
    table.title = f"Summary of {label}"
    return table


def _sweep_sections(sweeps: Sequence[SweepResults], labels: list[str]) -> list[Section]:
    figs = [f for f in (draw(sweeps, labels) for draw in figures.SWEEP_FIGURES) if f is not None]
    headline = Section("Capacity")
    if len(sweeps) > 1:
        headline.items.append(tables.sweep_deltas(sweeps, labels))
    out = [headline, Section("Against load", list(figs)),
           Section("Levels", [tables.levels(s, label, len(sweeps) > 1) for s, label in zip(sweeps, labels)])]
    configs = []
    for sweep in sweeps:
        extra = {k: v for k, v in sweep.sweep.items() if k not in ("levels", "capacity", "knee", "schema")}
        config = sweep.config  # the sweep's own config.json; else what its levels' configurations share
        if config is None:
            levels = [lv.run.config or {} for lv in sweep.levels if lv.run is not None]
            config = common(levels) if levels else {}
        configs.append({**({"sweep": extra} if extra else {}), **config})
    table = tables.configuration(labels, configs)
    if table is not None:
        out.append(Section("Configuration", [table]))
    missing = [f"{s.path}: level {lv.value:g}" for s in sweeps for lv in s.levels if lv.run is None]
    if missing:
        out[2].items.append("Levels without their run folder (values from sweep.json only): " + "; ".join(missing))
    return [s for s in out if s.items]


PER_LEVEL = "(per level)"


def common(configs: Sequence[Any]) -> Any:
    """What the levels' configurations share; a value that differs between levels (the load, the folder) is
    shown as PER_LEVEL rather than as the first level's."""
    first = configs[0]
    if all(isinstance(c, dict) for c in configs):
        keys = dict.fromkeys(k for c in configs for k in c)
        return {k: common([c.get(k) for c in configs]) for k in keys}
    return first if all(c == first for c in configs) else PER_LEVEL


def output_paths(out: str | None, inputs: Sequence[Path]) -> tuple[Path, Path]:
    """The HTML file and its Markdown twin: ``-o report.html`` writes report.html and report.md beside it (and
    ``-o report.md`` the same pair); without -o, report.html in the folder of a single input, else here."""
    if out:
        path = Path(out)
        stem = path.with_suffix("") if path.suffix.lower() in (".html", ".htm", ".md") else path
        return stem.with_suffix(".html"), stem.with_suffix(".md")
    folder = Path(inputs[0]) if len(inputs) == 1 else Path(".")
    return folder / "report.html", folder / "report.md"


def write_report(paths: Sequence[str | Path], out: str | None = None) -> tuple[Path, Path]:
    """Read the results folders, draw the report, write the HTML and Markdown files; their paths."""
    from cvload.report import html, markdown
    tunes = [read_tune(Path(p)) for p in paths]
    if any(t is not None for t in tunes):
        if len(paths) > 1:
            raise UsageError("a tune is reported on its own: " + ", ".join(str(p) for p, t in zip(paths, tunes)
                                                                          if t is not None),
                             hint="give one tune folder (its report shows every candidate)")
        tune = tunes[0]  # the one folder, a tune (checked above)
        assert tune is not None
        report = build_tune(Path(paths[0]), tune, _sweep_sections)
    else:
        inputs = [open_results(p) for p in paths]  # every folder checked before any drawing
        report = build(inputs)
    html_path, md_path = output_paths(out, [Path(p) for p in paths])
    try:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(html.render(report), encoding="utf-8")
        md_path.write_text(markdown.render(report, html_path.name), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the report to {html_path}: {exc.strerror}",
                         hint="pass a writable -o path") from None
    return html_path, md_path
