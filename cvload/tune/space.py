"""The search space file of ``cvload tune``: a scenario (how to load each candidate) plus a ``[tune]`` table.

```toml
profile = "l20_pipeline"                 # scenario keys: how each candidate is loaded and judged
slo = ["first_chunk.p95<700ms"]
duration = "4s"
[sweep]
num_tasks = "1:16"                       # each candidate's sweep (bisect is implied)
[tune]
search = "auto"                          # exhaustive up to exhaustive_max candidates, else tpe
budget = "14m"
constraints = ["gpu_memory_gib <= 6"]
[tune.knobs]
token2wav_instances = {min = 1, max = 3} # a range (step 1, or step = N)
bls_instances = [2, 4, 8]                # values
[tune.cost]
gpu_memory_gib = "2 + 1.5 * token2wav_instances"
```
Knob names are the deployment's (``Deployment.knobs()``); a misspelt one fails with the closest name. Costs and
constraints are expressions over knobs (and, for constraints, costs): ``expr.py``.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvload.errors import UsageError
from cvload.settings.config import RunConfig, SweepSettings, parse_duration
from cvload.settings.scenario import RULES as SCENARIO_RULES
from cvload.settings.typed_toml import Where, build, read_table, read_toml
from cvload.tune.expr import Expr, parse_expr

SEARCHES = ("auto", "exhaustive", "tpe")
DEFAULT_EXHAUSTIVE_MAX = 24  # auto: every candidate up to this many, TPE above
TUNE_KEYS = ("knobs", "cost", "constraints", "search", "trials", "exhaustive_max", "seed", "budget", "repeat",
             "baseline", "pareto_cost")

Value = int | float | bool | str


@dataclass(frozen=True)
class Knob:
    """A knob the deployment knows: its default (the deployment as configured) and what changing it restarts."""

    name: str
    default: Value
    restarts: str  # "reload" (model repository reload), "relaunch" (the server process), "rebuild" (engine)
    help: str = ""


@dataclass
class Space:
    file: Path
    knobs: dict[str, list[Value]]  # in the file's order; one value = fixed
    costs: dict[str, Expr] = field(default_factory=dict)
    constraints: list[Expr] = field(default_factory=list)
    search: str = "auto"
    trials: int | None = None
    exhaustive_max: int = DEFAULT_EXHAUSTIVE_MAX
    seed: int = 0
    budget_s: float | None = None
    repeat: int = 1
    baseline: bool = True  # measure the deployment's defaults first (the bar, and the comparison)
    pareto_cost: str | None = None
    scenario: dict[str, Any] = field(default_factory=dict)  # RunConfig values

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.knobs.values())

    def grid(self) -> Iterator[dict[str, Value]]:
        names = list(self.knobs)
        for combo in itertools.product(*(self.knobs[n] for n in names)):
            yield dict(zip(names, combo))

    def cost(self, knobs: Mapping[str, Value]) -> dict[str, float]:
        return {name: _number(expr(knobs)) for name, expr in self.costs.items()}

    def violated(self, knobs: Mapping[str, Value]) -> list[str]:
        """The constraints a candidate breaks (empty: feasible)."""
        values = {**knobs, **self.cost(knobs)}
        return [c.text for c in self.constraints if not c(values)]

    def feasible(self) -> list[dict[str, Value]]:
        return [k for k in self.grid() if not self.violated(k)]

    def method(self) -> str:
        if self.search != "auto":
            return self.search
        return "exhaustive" if len(self.feasible()) <= self.exhaustive_max else "tpe"

    def check(self, known: Mapping[str, Knob]) -> Space:
        """Knob names against the deployment's; constraints that leave no candidate; raise UsageError."""
        where = f"space {self.file}"
        for name in self.knobs:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                raise UsageError(f"{where}: [tune.knobs] {name!r} is not a knob of this deployment"
                                 + (f" (did you mean {close[0]!r}?)" if close else ""),
                                 hint="knobs: " + ", ".join(sorted(known)))
        if not self.feasible():
            alone = []
            total = self.size
            for c in self.constraints:
                admitted = sum(1 for k in self.grid() if c({**k, **self.cost(k)}))
                alone.append(f"{c.text!r} admits {admitted} of {total}")
            raise UsageError(f"{where}: the constraints exclude every candidate ({'; '.join(alone)}; together "
                             "none): they contradict each other or the knob values",
                             hint="widen a knob's values or loosen a constraint")
        return self


def shown(value: Value) -> str:
    """A knob value as the space file writes it (true, not True)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def knobs_text(knobs: Mapping[str, Value]) -> str:
    return ", ".join(f"{k}={shown(v)}" for k, v in knobs.items())


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"a cost must be a number, got {value!r}")
    return float(value)


def _values(name: str, raw: Any, where: str) -> list[Value]:
    """``[1, 2]`` | ``{min, max, step}`` | a single value -> the knob's values, in order, without repeats."""
    place = f"{where}: [tune.knobs] {name}"
    if isinstance(raw, list):
        values = raw
    elif isinstance(raw, dict):
        unknown = sorted(set(raw) - {"min", "max", "step"})
        if unknown or "min" not in raw or "max" not in raw:
            raise UsageError(f"{place}: a range is {{min = A, max = B}} (step = S optional)"
                             + (f", not {', '.join(unknown)}" if unknown else ""))
        lo, hi, step = raw["min"], raw["max"], raw.get("step", 1)
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (lo, hi, step)):
            raise UsageError(f"{place}: min, max and step must be numbers")
        if step <= 0:
            raise UsageError(f"{place}: step must be positive, got {step}")
        if hi < lo:
            raise UsageError(f"{place}: max {hi} is below min {lo}: an empty range")
        whole = all(isinstance(x, int) for x in (lo, hi, step))
        count = int(math.floor((hi - lo) / step + 1e-9)) + 1
        values = [lo + i * step if whole else round(lo + i * step, 9) for i in range(count)]
    else:
        values = [raw]
    if not values:
        raise UsageError(f"{place}: no values: an empty space", hint="give at least one value")
    for v in values:
        if not isinstance(v, int | float | bool | str):
            raise UsageError(f"{place}: {v!r} is not a number, true/false or a string")
    seen: list[Value] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def load_space(path: str | Path) -> Space:
    """Read a space file; knob names are checked later against the deployment (``Space.check``)."""
    file = Path(path)
    raw = read_toml(file, "space", hint="see scenarios/tune-pipeline.toml for an example")
    where = f"space {file}"
    tune = raw.pop("tune", None)
    if not isinstance(tune, dict):
        raise UsageError(f"{where}: no [tune] table: an empty space",
                         hint="add [tune.knobs] with the knobs to search, e.g. token2wav_instances = [1, 2, 3]")
    for key in tune:
        if key not in TUNE_KEYS:
            close = difflib.get_close_matches(key, TUNE_KEYS, n=1)
            raise UsageError(f"{where}: unknown key {key!r} in [tune]" + (f" (did you mean {close[0]!r}?)"
                             if close else ""), hint="keys: " + ", ".join(TUNE_KEYS))
    knobs_raw = tune.get("knobs") or {}
    if not isinstance(knobs_raw, dict) or not knobs_raw:
        raise UsageError(f"{where}: [tune.knobs] is empty: an empty space, nothing to search",
                         hint="name at least one knob with its values, e.g. token2wav_instances = [1, 2, 3]")
    knobs = {name: _values(name, value, where) for name, value in knobs_raw.items()}
    cost_raw = tune.get("cost") or {}
    if not isinstance(cost_raw, dict):
        raise UsageError(f"{where}: [tune.cost] must be a table of name = \"expression\"")
    costs = {name: parse_expr(text, f"{where}: [tune.cost] {name}", knobs) for name, text in cost_raw.items()}
    if not costs:  # instances are the natural cost when nothing else is said
        counted = [k for k in knobs if k.endswith("_instances")]
        if counted:
            costs["instances"] = parse_expr(" + ".join(counted), f"{where}: default cost", knobs)
    constraints_raw = tune.get("constraints") or []
    if isinstance(constraints_raw, str):
        constraints_raw = [constraints_raw]
    constraints = [parse_expr(text, f"{where}: [tune] constraints", [*knobs, *costs]) for text in constraints_raw]
    search = tune.get("search", "auto")
    if search not in SEARCHES:
        raise UsageError(f"{where}: [tune] search {search!r}: use one of {', '.join(SEARCHES)}")
    pareto_cost = tune.get("pareto_cost")
    if pareto_cost is not None and pareto_cost not in costs:
        raise UsageError(f"{where}: [tune] pareto_cost {pareto_cost!r} is not a cost",
                         hint="costs: " + (", ".join(costs) or "none: add [tune.cost]"))

    def positive(key: str, default: int | None, least: int = 1) -> int | None:
        value = tune.get(key, default)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise UsageError(f"{where}: [tune] {key} must be an integer of at least {least}, got {value!r}")
        return value

    budget = tune.get("budget")
    space = Space(
        file=file, knobs=knobs, costs=costs, constraints=constraints, search=search,
        trials=positive("trials", None), exhaustive_max=positive("exhaustive_max", DEFAULT_EXHAUSTIVE_MAX) or 0,
        seed=int(tune.get("seed", 0)), repeat=positive("repeat", 1, least=0) or 0,
        budget_s=None if budget is None else parse_duration(budget, what=f"{where}: [tune] budget"),
        baseline=bool(tune.get("baseline", True)), pareto_cost=pareto_cost or next(iter(costs), None),
    )
    scenario = read_table(raw, RunConfig, Where(where), base=file.parent, rules=SCENARIO_RULES)
    if "sweep" in scenario:
        scenario["sweep"] = build(SweepSettings, scenario["sweep"])
    scenario.setdefault("name", file.stem)
    space.scenario = scenario
    return space

