"""Which candidate next: every feasible one (small spaces), or Optuna's TPE sampler (large ones).

Why TPE: the knobs are few, integer or categorical, and each trial costs minutes of measurement, so the search must
learn from a handful of results; TPE models good and bad regions from few trials without gradients or a smooth
objective, handles integer and categorical knobs natively, and is seeded (``TPESampler(seed=...)``), so the same
space and seed propose the same candidates. Optuna's ask/tell interface lets the tuner measure (or prune) a
candidate itself between asking and telling. Infeasible proposals (constraints) and repeats of a measured candidate
cost no measurement: the first is told as failed, the second the value already known.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cvload.tune.space import Space, Value

MAX_PROPOSALS = 200  # asks without a new feasible candidate before TPE is taken as exhausted


def key(knobs: Mapping[str, Value]) -> str:
    return json.dumps(dict(knobs), sort_keys=True)


class Exhaustive:
    """Every feasible candidate in the grid's order (the first knob varies slowest)."""

    method = "exhaustive"

    def __init__(self, space: Space, *, first: list[dict[str, Value]] | None = None) -> None:
        seen: set[str] = set()
        self.queue: list[dict[str, Value]] = []
        for knobs in [*(first or []), *space.feasible()]:
            if key(knobs) not in seen:
                seen.add(key(knobs))
                self.queue.append(knobs)
        self.done: set[str] = set()

    def ask(self) -> dict[str, Value] | None:
        for knobs in self.queue:
            if key(knobs) not in self.done:
                return knobs
        return None

    def tell(self, knobs: Mapping[str, Value], value: float | None) -> None:
        self.done.add(key(knobs))

    def total(self) -> int:
        return len(self.queue)


class TPE:
    """Optuna's TPE sampler over the space's knobs, ``trials`` distinct candidates at most."""

    method = "tpe"

    def __init__(self, space: Space, *, trials: int, seed: int, first: list[dict[str, Value]] | None = None) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.trials = trials
        self.distributions = {name: _distribution(values) for name, values in space.knobs.items()}
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)))
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.values: dict[str, float] = {}
        self.first = [k for k in (first or []) if not space.violated(k)]
        self.pending: dict[str, Any] = {}
        self._optuna = optuna

    def ask(self) -> dict[str, Value] | None:
        if len(self.values) >= self.trials:
            return None
        for knobs in self.first:
            if key(knobs) not in self.values:
                return knobs
        for _ in range(MAX_PROPOSALS):
            trial = self.study.ask(self.distributions)
            knobs = {name: trial.params[name] for name in self.space.knobs}
            k = key(knobs)
            if self.space.violated(knobs):
                self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
            elif k in self.values:
                self.study.tell(trial, self.values[k])
            elif k in self.pending:
                self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
            else:
                self.pending[k] = trial
                return knobs
        return None

    def tell(self, knobs: Mapping[str, Value], value: float | None) -> None:
        """A measured (or resumed, pruned, failed: value None -> 0) candidate."""
        k = key(knobs)
        v = float(value or 0.0)
        self.values[k] = v
        trial = self.pending.pop(k, None)
        if trial is not None:
            self.study.tell(trial, v)
        elif any(knobs[name] not in values for name, values in self.space.knobs.items()):
            return  # the baseline outside the space: measured, but no point of TPE's distributions
        else:
            params = {name: knobs[name] for name in self.space.knobs}
            self.study.add_trial(self._optuna.trial.create_trial(params=params, distributions=self.distributions,
                                                                 value=v))

    def total(self) -> int:
        return min(self.trials, len(self.space.feasible()))


def _distribution(values: list[Value]) -> Any:
    """Integers evenly spaced: an ordered integer distribution (TPE then knows 3 is near 4); else categories."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if ints and len(values) > 1:
        ordered = sorted(values)  # type: ignore[type-var]
        step = ordered[1] - ordered[0]  # type: ignore[operator]
        if step > 0 and ordered == list(range(ordered[0], ordered[-1] + 1, step)):  # type: ignore[arg-type]
            return IntDistribution(ordered[0], ordered[-1], step=step)  # type: ignore[arg-type]
    return CategoricalDistribution(values)


def make_search(space: Space, *, first: list[dict[str, Value]] | None = None) -> Exhaustive | TPE:
    if space.method() == "exhaustive":
        return Exhaustive(space, first=first)
    trials = space.trials or max(8, min(30, len(space.feasible()) // 3))
    return TPE(space, trials=trials, seed=space.seed, first=first)
