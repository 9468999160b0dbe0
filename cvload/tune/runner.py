"""The tuner: for each candidate, reconfigure the deployment, measure its capacity with ``cvload sweep``'s bisect,
record it in ``tune.json``; at the end re-measure the best and write it out as a ready configuration.

Early stopping: once some candidate holds B streams, the next candidate's sweep starts at B; failing there, it is
abandoned (``pruned``: capacity below B) without bisecting. Every candidate is written to ``tune.json`` as soon as
it is judged, so an interrupted tune loses nothing and ``--resume`` skips what was measured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import shutil
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cvload import __version__
from cvload.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SLO_FAILED, CvloadError, UsageError
from cvload.load.sweep import DEFAULT_LEVEL_S, Sweep, SweepPlan
from cvload.measure.slo import parse_objectives
from cvload.results.tune_file import TUNE_SCHEMA, load_tune
from cvload.results.writer import write_json
from cvload.settings.config import RunConfig, parse_levels
from cvload.tune.deployments import Change, Deployment, DeploymentFailed
from cvload.tune.search import Exhaustive, make_search
from cvload.tune.space import Space, Value, knobs_text

DEFAULT_LEVELS = "1:16"
LAUNCH_ESTIMATE_S = 5.0  # a launch or reload, for the budget's first estimate
MEASURED = ("measured", "pruned", "failed", "no_capacity")  # a candidate --resume does not measure again


@dataclass
class Candidate:
    number: int
    knobs: dict[str, Value]
    cost: dict[str, float]
    baseline: bool = False
    repeat: int = 0  # a re-measurement of the best (n of --repeat), not a candidate of its own
    eligible: bool = True  # inside the space and its constraints (the baseline may be outside)
    status: str = "pending"  # measured | pruned | failed | no_capacity | interrupted
    capacity: float | None = None
    bracket: list[float | None] = field(default_factory=lambda: [None, None])
    reason: str | None = None
    change: dict[str, Any] | None = None
    started_at: float | None = None
    elapsed_s: float | None = None
    levels: list[dict[str, Any]] = field(default_factory=list)  # value, slo_passed, first-chunk p95, objectives

    @property
    def folder(self) -> str:
        return f"candidate-{self.number:03d}"

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "folder": self.folder, "knobs": self.knobs, "cost": self.cost,
                "baseline": self.baseline, "eligible": self.eligible, "status": self.status,
                "capacity": self.capacity, "bracket": self.bracket, "reason": self.reason, "change": self.change,
                "elapsed_s": self.elapsed_s, "levels": self.levels}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(number=data["number"], knobs=dict(data["knobs"]), cost=dict(data.get("cost") or {}),
                   baseline=bool(data.get("baseline")), eligible=bool(data.get("eligible", True)),
                   status=data["status"], capacity=data.get("capacity"), bracket=list(data.get("bracket") or
                   [None, None]), reason=data.get("reason"), change=data.get("change"),
                   elapsed_s=data.get("elapsed_s"), levels=list(data.get("levels") or []))


class TuneView(Protocol):
    """What the tuner tells a view (the console table, a live dashboard)."""

    def started(self, tuner: Tuner) -> None: ...

    def candidate_started(self, tuner: Tuner, candidate: Candidate, change: Change) -> None: ...

    def candidate_done(self, tuner: Tuner, candidate: Candidate) -> None: ...

    def sweep_view(self) -> Any: ...  # a cvload.load.sweep.SweepView for each candidate's sweep

    def final(self, tuner: Tuner, result: dict[str, Any]) -> None: ...


class Tuner:
    def __init__(self, space: Space, deployment: Deployment, base: RunConfig, *, out_dir: Path,
                 budget_s: float | None = None, resume: bool = False, repeat: int | None = None) -> None:
        self.space = space.check(deployment.knobs())
        self.deployment = deployment
        self.base = base
        if not base.slo:
            raise UsageError(f"space {space.file}: no objectives: tune searches the most streams within them",
                             hint='add slo = ["first_chunk.p95<700ms"] to the space file, or --slo')
        rate = base.sweep.rate
        self.kind = "rate" if rate is not None else "concurrency"
        self.levels = parse_levels(rate, "rate") if rate is not None else \
            parse_levels(base.sweep.num_tasks or DEFAULT_LEVELS, "num_tasks")
        self.out_dir = out_dir
        self.budget_s = budget_s if budget_s is not None else space.budget_s
        self.repeat = space.repeat if repeat is None else repeat
        self.candidates: list[Candidate] = []
        self.best_so_far: float | None = None
        self.started = 0.0
        self.status = "running"
        self.stopped_because: str | None = None
        self.repeats: list[dict[str, Any]] = []
        self._check_budget()
        self._check_sweep()
        self.search = make_search(space, first=self._first())
        if resume:
            self._resume()

    # ---- before anything runs --------------------------------------------------------------------------------
    def level_s(self) -> float:
        """One level's least time: its window plus a warm-up (a guess for --requests windows)."""
        window = self.base.duration if self.base.duration is not None else (
            None if self.base.requests is not None else DEFAULT_LEVEL_S)
        return (window or 5.0) + 2.0

    def _check_budget(self) -> None:
        if self.budget_s is None:
            return
        least = LAUNCH_ESTIMATE_S + self.level_s()
        if self.budget_s < least:
            raise UsageError(f"budget {self.budget_s:g} s is too small for one candidate: a launch and one level "
                             f"take at least ~{least:.0f} s", hint=f"give --budget {math.ceil(least * 10)}s or more "
                             "(a candidate that is bisected takes several levels)")

    def _check_sweep(self) -> None:
        """Each candidate's sweep settings, checked before any server starts (a typo fails now, exit 2)."""
        probe = self._sweep_config({"server": ["127.0.0.1:8001"]}, self.out_dir, list(self.levels))
        dataclasses.replace(probe).validate()
        SweepPlan.from_config(probe)
        parse_objectives(probe.slo)

    def _first(self) -> list[dict[str, Value]]:
        """The deployment's own configuration first: the bar early stopping starts from, and the comparison."""
        if not self.space.baseline:
            return []
        defaults = self.deployment.defaults()
        return [{name: defaults[name] for name in self.space.knobs}]

    def _resume(self) -> None:
        path = self.out_dir / "tune.json"
        if not path.is_file():
            raise UsageError(f"--resume: no tune.json in {self.out_dir}", hint="give the --out of the tune to go on "
                             "with, or leave out --resume to start one")
        try:
            data = load_tune(path)
        except UsageError as exc:
            raise UsageError(f"--resume: {exc.message}", hint="give the --out of a cvload tune") from None
        if data.get("space", {}).get("knobs") != self.space.knobs:
            raise UsageError(f"--resume: {path} was made from another space (knobs differ)",
                             hint="resume with the same space file, or use another --out")
        for entry in data.get("candidates", []):
            candidate = Candidate.from_json(entry)
            if candidate.status not in MEASURED:  # interrupted: measured again
                shutil.rmtree(self.out_dir / candidate.folder, ignore_errors=True)
                continue
            self.candidates.append(candidate)
            self._tell(candidate)
        self.candidates.sort(key=lambda c: c.number)

    def plan_lines(self) -> list[str]:
        """``--plan``: every candidate in the order an exhaustive search measures them, with what it would
        rebuild, relaunch or reload after the one before; nothing runs."""
        feasible = [k for k in Exhaustive(self.space, first=self._first()).queue]
        lines = [f"cvload tune plan: {self.space.file} on the {self.deployment.name}, {len(feasible)} candidate(s)"
                 + ("" if self.search.method == "exhaustive" else
                    f" (TPE measures at most {self.search.total()} of them, in its own order)")]
        for n, knobs in enumerate(feasible, 1):
            change = self.deployment.plan(knobs)
            lines.append(f"  {n}. {knobs_text(knobs)}: {change.describe()}")
            lines += [f"       $ {command}" for command in change.commands]
            self.deployment.pretend(knobs, change)
        return lines

    # ---- the search ------------------------------------------------------------------------------------------
    def run(self, view: TuneView) -> int:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        view.started(self)
        try:
            self._search(view)
            if self.status == "running":
                self._remeasure(view)
        except KeyboardInterrupt:
            self.status, self.stopped_because = "interrupted", "interrupted"
        finally:
            self.deployment.close()
        result = self.result()
        self._write(result)
        best = self.best()
        if best is not None:  # interrupted too: the best of what was measured
            self.deployment.write_best(best.knobs, self.out_dir / "best")
        view.final(self, result)
        if self.status == "interrupted" and not any(c.status in MEASURED for c in self.candidates):
            return EXIT_INTERRUPTED
        return EXIT_OK if best is not None else EXIT_SLO_FAILED

    def _search(self, view: TuneView) -> None:
        while True:
            knobs = self.search.ask()
            if knobs is None:
                self.stopped_because = self.stopped_because or f"every candidate measured ({self.search.method})"
                return
            if self.budget_s is not None and self.elapsed() + self.level_s() > self.budget_s:
                self.stopped_because = (f"budget {self.budget_s:g} s spent after {len(self.candidates)} "
                                        "candidate(s)")
                return
            candidate = Candidate(number=len(self.candidates) + 1, knobs=knobs, cost=self.space.cost(knobs),
                                  baseline=bool(self._first()) and knobs == self._first()[0],
                                  eligible=self._eligible(knobs))
            self.candidates.append(candidate)
            self._measure(candidate, view)
            if candidate.status == "interrupted":
                self.status, self.stopped_because = "interrupted", "interrupted"
                return
            self._tell(candidate)
            self._write(self.result())

    def _eligible(self, knobs: Mapping[str, Value]) -> bool:
        inside = all(knobs[n] in values for n, values in self.space.knobs.items())
        return inside and not self.space.violated(knobs)

    def _tell(self, candidate: Candidate) -> None:
        if candidate.eligible and candidate.capacity is not None and candidate.status == "measured":
            self.best_so_far = max(self.best_so_far or candidate.capacity, candidate.capacity)
        self.search.tell(candidate.knobs, candidate.capacity if candidate.status == "measured" else None)

    def elapsed(self) -> float:
        return time.monotonic() - self.started if self.started else 0.0

    def _plan_levels(self) -> list[float]:
        """Early stopping: start at the best capacity so far; failing there ends the candidate."""
        bar = self.best_so_far
        if bar is None:
            return list(self.levels)
        above = [lv for lv in self.levels if lv > bar]
        return [bar, *(above or [bar * 2])]

    def _sweep_config(self, overrides: Mapping[str, Any], folder: Path, levels: list[float]) -> RunConfig:
        shown = ",".join(f"{int(v)}" if self.kind == "concurrency" else f"{v:g}" for v in levels)
        sweep = dataclasses.replace(self.base.sweep, search="bisect",
                                    num_tasks=shown if self.kind == "concurrency" else None,
                                    rate=shown if self.kind == "rate" else None)
        return dataclasses.replace(self.base, emulator=False, pipeline=False, out=str(folder), sweep=sweep,
                                   **{k: v for k, v in overrides.items() if k in ("server", "metrics_url", "model",
                                                                                    "mode", "protocol")})

    def _measure(self, candidate: Candidate, view: TuneView, *, levels: list[float] | None = None,
                 folder: Path | None = None) -> None:
        folder = folder or self.out_dir / candidate.folder
        shutil.rmtree(folder, ignore_errors=True)
        change = self.deployment.plan(candidate.knobs)
        candidate.change = change.to_json()
        view.candidate_started(self, candidate, change)
        began = time.monotonic()
        try:
            try:
                overrides = self.deployment.apply(candidate.knobs, change)
            except DeploymentFailed as exc:
                candidate.status, candidate.reason = "failed", exc.message
                return
            levels = levels or self._plan_levels()
            config = self._sweep_config(overrides, folder, levels)
            try:
                asyncio.run(Sweep(config).run(view.sweep_view()))
            except UsageError:
                raise
            except CvloadError as exc:  # the server stopped answering before the first level
                candidate.status, candidate.reason = "failed", str(exc)
                self.deployment.close()
                return
            self._judge(candidate, folder, levels)
        finally:
            if candidate.status == "pending":  # Ctrl-C while the deployment changed
                candidate.status = "interrupted"
            candidate.elapsed_s = round(time.monotonic() - began, 3)
            view.candidate_done(self, candidate)

    def _judge(self, candidate: Candidate, folder: Path, levels: list[float]) -> None:
        try:
            sweep = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            candidate.status, candidate.reason = "failed", f"no sweep.json in {folder}: {exc}"
            return
        candidate.levels = [_level_entry(lv) for lv in sweep.get("levels", [])]
        capacity = sweep["capacity"]
        candidate.capacity, candidate.bracket = capacity["value"], list(capacity["bracket"])
        if sweep["status"] == "interrupted":
            candidate.status = "interrupted"
        elif sweep["status"] == "aborted":
            candidate.status, candidate.reason = "failed", f"server failed during the sweep: {sweep['stopped_because']}"
            self.deployment.close()  # relaunched for the next candidate
        elif candidate.capacity is not None:
            candidate.status = "measured"
        elif self.best_so_far is not None and levels[0] == self.best_so_far:
            candidate.status = "pruned"
            candidate.reason = f"failed the objectives at {_shown(levels[0])}, the best capacity so far"
        else:
            candidate.status = "no_capacity"
            candidate.reason = sweep.get("stopped_because")

    def _remeasure(self, view: TuneView) -> None:
        """The best candidate again, ``repeat`` times, with the space's full levels: how far to trust its capacity."""
        best = self.best()
        if best is None or self.repeat < 1:
            return
        for n in range(1, self.repeat + 1):
            again = Candidate(number=best.number, knobs=best.knobs, cost=best.cost, repeat=n)
            folder = self.out_dir / f"repeat-{n}-{best.folder}"
            self._measure(again, view, levels=list(self.levels), folder=folder)
            if again.status == "interrupted":
                self.status, self.stopped_because = "interrupted", "interrupted"
                return
            self.repeats.append({"folder": folder.name, "status": again.status, "capacity": again.capacity,
                                 "bracket": again.bracket, "reason": again.reason})
            self._write(self.result())

    # ---- the answer ------------------------------------------------------------------------------------------
    def best(self) -> Candidate | None:
        cost = self.space.pareto_cost
        found = [c for c in self.candidates if c.eligible and c.status == "measured" and c.capacity is not None]
        if not found:
            return None
        return max(found, key=lambda c: (c.capacity, -(c.cost.get(cost, 0.0) if cost else 0.0), -c.number))

    def pareto(self) -> list[int]:
        """Candidates no other beats on both capacity (higher) and the Pareto cost (lower)."""
        cost = self.space.pareto_cost
        # (number, capacity, cost) of each measured candidate
        found = [(c.number, c.capacity, c.cost.get(cost, 0.0) if cost else 0.0) for c in self.candidates
                 if c.eligible and c.status == "measured" and c.capacity is not None]
        front = []
        for number, capacity, mine in found:
            beaten = any(other >= capacity and other_cost <= mine and (other > capacity or other_cost < mine)
                         for n, other, other_cost in found if n != number)
            if not beaten:
                front.append(number)
        return sorted(front)

    def closest(self) -> tuple[Candidate, str] | None:
        """When nothing met the objectives: the candidate whose lowest level came nearest to them."""
        best: tuple[float, Candidate, str] | None = None
        for c in self.candidates:
            if not c.levels:
                continue
            low = min(c.levels, key=lambda lv: lv["value"])
            ratios = [(_ratio(v), v) for v in low["slo"] if v.get("measured") is not None]
            if not ratios:
                continue
            ratio, worst = max(ratios, key=lambda r: r[0])
            text = (f"candidate {c.number} ({knobs_text(c.knobs)}): {worst['objective']} measured "
                    f"{worst['measured']:.4g} at {_shown(low['value'])}")
            if best is None or ratio < best[0]:
                best = (ratio, c, text)
        return None if best is None else (best[1], best[2])

    def result(self) -> dict[str, Any]:
        best = self.best()
        baseline = next((c for c in self.candidates if c.baseline), None)
        caps = ([best.capacity] if best else []) + [r["capacity"] for r in self.repeats if r["capacity"] is not None]
        status = self.status if self.status != "running" else "completed"
        closest = self.closest() if best is None else None
        return {
            "schema": TUNE_SCHEMA,
            "cvload_version": __version__,
            "deployment": self.deployment.name,
            "space": {"file": str(self.space.file), "knobs": self.space.knobs,
                      "cost": {k: e.text for k, e in self.space.costs.items()},
                      "constraints": [c.text for c in self.space.constraints], "pareto_cost": self.space.pareto_cost,
                      "size": self.space.size, "feasible": len(self.space.feasible())},
            "objectives": list(self.base.slo),
            "kind": self.kind,
            "levels": [_shown(v) for v in self.levels],
            "search": {"method": self.search.method, "seed": self.space.seed, "candidates": self.search.total(),
                       "early_stopping": "a candidate failing at the best capacity so far is not bisected"},
            "budget_s": self.budget_s,
            "elapsed_s": round(self.elapsed(), 3),
            "candidates": [c.to_json() for c in self.candidates],
            "baseline": None if baseline is None else {"number": baseline.number, "knobs": baseline.knobs,
                                                       "capacity": baseline.capacity, "status": baseline.status},
            "best": None if best is None else {
                "number": best.number, "knobs": best.knobs, "capacity": best.capacity, "bracket": best.bracket,
                "cost": best.cost, "repeats": self.repeats,
                "spread": {"min": min(caps), "max": max(caps), "median": statistics.median(caps), "n": len(caps)},
                "config": "best/"},
            "closest": None if closest is None else {"number": closest[0].number, "text": closest[1]},
            "pareto": self.pareto(),
            "stopped_because": self.stopped_because or status,
            "status": status,
        }

    def _write(self, result: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.out_dir / "tune.json", result)


def _level_entry(level: Mapping[str, Any]) -> dict[str, Any]:
    first = level["summary"]["metrics"]["first_chunk_latency_ms"]
    return {"value": level["value"], "phase": level["phase"], "slo_passed": level["slo_passed"],
            "first_chunk_p95_ms": first.get("p95"),
            "slo": [{k: v.get(k) for k in ("objective", "op", "threshold", "measured", "verdict")}
                    for v in level.get("slo", [])]}


def _ratio(verdict: Mapping[str, Any]) -> float:
    """How far a measurement is from its objective: 1 on the line, above 1 failing."""
    measured, threshold = float(verdict["measured"]), float(verdict["threshold"])
    if verdict.get("op", "<").startswith("<"):
        return measured / threshold if threshold else math.inf
    return threshold / measured if measured else math.inf


def _shown(value: float | None) -> Any:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value

