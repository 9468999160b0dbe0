"""A tune's report (``cvload report TUNE_FOLDER``): the answer, capacity against cost with the Pareto front, every
candidate as a row, and the best candidate's sweep drawn as a sweep report draws it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvload import __version__
from cvload.report import figures
from cvload.report.document import Figure, Report, Section, Table
from cvload.results.folder import SweepResults, open_results
from cvload.results.tune_file import cell_text


def pareto_figure(tune: dict[str, Any]) -> Figure | None:
    cost = tune["space"].get("pareto_cost")
    points = [c for c in tune["candidates"] if c["status"] == "measured" and c["capacity"] is not None
              and c.get("eligible", True)]
    if not points or not cost:
        return None
    fig, (ax,) = figures._figure(4.0)
    front = set(tune.get("pareto") or [])
    best = (tune.get("best") or {}).get("number")
    xs = [c["cost"].get(cost, 0.0) for c in points]
    ys = [c["capacity"] for c in points]
    ax.scatter(xs, ys, color=figures.SHARED_COLOR, s=30, alpha=0.6, label="measured candidates")
    on = sorted((c["cost"].get(cost, 0.0), c["capacity"], c["number"]) for c in points if c["number"] in front)
    if on:
        ax.plot([p[0] for p in on], [p[1] for p in on], color=figures.colour(0), marker="o", linewidth=1.6,
                drawstyle="steps-post", label="Pareto front")
        for x, y, number in on:
            ax.annotate(f"#{number}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for c in points:
        if c["number"] == best:
            ax.scatter([c["cost"].get(cost, 0.0)], [c["capacity"]], marker="*", s=220, color=figures.PASS_COLOR,
                       zorder=5, label=f"best (#{best})")
        if c.get("baseline"):
            ax.scatter([c["cost"].get(cost, 0.0)], [c["capacity"]], marker="s", s=80, facecolors="none",
                       edgecolors=figures.FAIL_COLOR, zorder=5, label=f"baseline (#{c['number']})")
    ax.set_xlabel(cost)
    ax.set_ylabel("capacity (" + ("req/s" if tune.get("kind") == "rate" else "streams") + ")")
    ax.set_ylim(bottom=0)
    figures._legend(ax, loc="lower right")
    return Figure("Capacity against cost", figures._png(fig),
                  f"each measured candidate's capacity within {', '.join(tune['objectives'])} against its "
                  f"{cost}; the line joins the Pareto front (no other candidate holds more for less).")


def candidates_table(tune: dict[str, Any]) -> Table:
    knobs = list(tune["space"]["knobs"])
    costs = list(tune["space"].get("cost") or {})
    rows, marked = [], set()
    front = set(tune.get("pareto") or [])
    best = (tune.get("best") or {}).get("number")
    for i, c in enumerate(tune["candidates"]):
        bracket = c.get("bracket") or [None, None]
        status = c["status"] + (" (baseline)" if c.get("baseline") else "") + (" *best*" if c["number"] == best
                                                                               else "")
        rows.append([str(c["number"]), *(cell_text(c["knobs"].get(k)) for k in knobs), cell_text(c["capacity"]),
                     f"[{cell_text(bracket[0])}, {cell_text(bracket[1])}]", *(cell_text(c["cost"].get(k)) for k in costs),
                     "yes" if c["number"] in front else "", status, (c.get("reason") or "")[:120]])
        if c["number"] == best:
            marked.add(i)
    return Table("Candidates", ["#", *knobs, "capacity", "bracket", *costs, "Pareto", "status", "reason"], rows,
                 note="pruned: failed the objectives at the best capacity so far (not bisected); failed: the "
                      "server did not serve the candidate's configuration.", marked=marked)


def answer(tune: dict[str, Any]) -> list[str]:
    best, base = tune.get("best"), tune.get("baseline")
    unit = "req/s" if tune.get("kind") == "rate" else "streams"
    lines = [f"{len(tune['candidates'])} candidates on the {tune['deployment']} ({tune['search']['method']} "
             f"search), objectives {', '.join(tune['objectives'])}; {tune['stopped_because']} ({tune['status']})."]
    if best is None:
        closest = tune.get("closest")
        lines.append("No candidate met the objectives" + (f"; closest: {closest['text']}." if closest else "."))
        return lines
    knobs = ", ".join(f"{k}={cell_text(v)}" for k, v in best["knobs"].items())
    spread = best.get("spread") or {}
    lines.append(f"Best: candidate {best['number']} ({knobs}), capacity {cell_text(best['capacity'])} {unit}; "
                 f"measured {spread.get('n', 1)}x: {cell_text(spread.get('min'))}-{cell_text(spread.get('max'))} "
                 f"(median {cell_text(spread.get('median'))}).")
    if base is not None:
        lines.append(f"Baseline (the deployment's own knobs): candidate {base['number']}, capacity "
                     f"{cell_text(base['capacity'])} {unit}.")
    return lines


def build_tune(folder: Path, tune: dict[str, Any],
               sweep_sections: Callable[[list[SweepResults], list[str]], list[Section]]) -> Report:
    """The report; ``sweep_sections`` lays out the best candidate's sweep (build.py's, as for any sweep)."""
    search: list[Figure | Table | str] = [f for f in (pareto_figure(tune),) if f is not None]
    sections = [Section("Search", [*search, candidates_table(tune)])]
    best = tune.get("best")
    if best is not None:
        sweep_folder = folder / f"candidate-{best['number']:03d}"
        if (sweep_folder / "sweep.json").is_file():
            sweep = open_results(sweep_folder)
            if isinstance(sweep, SweepResults) and sweep.levels:
                for section in sweep_sections([sweep], [f"candidate {best['number']}"]):
                    sections.append(Section(f"Best candidate: {section.title.lower()}", section.items))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Report(title=f"cvload tune report: {folder.name}", inputs=[(folder.name, str(folder),
                                                                       figures.colour(0))],
                  lines=answer(tune), sections=sections, generated=f"cvload {__version__}, {stamp}")
