"""A tune's arguments (``TuneRequest``) and the ``Tuner`` they make: ``cvload tune`` builds it here, and so does the
dashboard's measuring process (``cvload tune --tui``), which gets the request as JSON, so both tune the same way."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvload.errors import UsageError
from cvload.tune.runner import Tuner


@dataclass
class TuneRequest:
    """What ``cvload tune`` was asked (its command line, less how to show it)."""

    space: str
    bootstrap: str | None = None
    slo: list[str] | None = None
    budget: float | None = None
    resume: bool = False
    repeat: int | None = None
    duration: float | None = None
    seed: int | None = None
    out: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TuneRequest:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def make_tuner(request: TuneRequest) -> Tuner:
    """The space loaded and checked, the deployment chosen, the results folder named: a Tuner ready to run (bad
    input raises UsageError here, before any server starts)."""
    from cvload.results.writer import default_out_dir
    from cvload.settings.config import RunConfig
    from cvload.tune.deployments import EmulatorDeployment, factory
    from cvload.tune.space import load_space

    space_file = Path(request.space)
    space = load_space(space_file)
    if request.seed is not None:
        space.seed = request.seed
    if request.repeat is not None and request.repeat < 0:
        raise UsageError(f"--repeat must not be negative, got {request.repeat}")
    base = dataclasses.replace(RunConfig(), **space.scenario)
    if request.slo:
        base = dataclasses.replace(base, slo=list(request.slo))
    if request.duration is not None:
        base = dataclasses.replace(base, duration=request.duration, requests=None)
    if base.server:
        raise UsageError(f"space {space_file}: server is set by the deployment tune reconfigures",
                         hint="drop server from the space file")
    if request.resume and request.out is None:
        raise UsageError("--resume needs --out: the results folder of the tune to go on with")
    out = Path(request.out) if request.out else default_out_dir(f"tune-{space_file.stem}")
    if request.bootstrap:
        deployment = factory("bootstrap")(request.bootstrap, out / "bootstrap")
    else:
        deployment = EmulatorDeployment(profile=base.profile or "l20_pipeline", profile_set=dict(base.profile_set),
                                        root=out / "emulator", model=base.model, mode=base.mode,
                                        prompt_models=not base.spk_cache)
    return Tuner(space, deployment, base, out_dir=out, budget_s=request.budget, resume=request.resume,
                 repeat=request.repeat)
