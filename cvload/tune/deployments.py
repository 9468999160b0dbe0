"""Deployments ``cvload tune`` can reconfigure: knobs in, a serving server out, restarting only what must.

``Deployment`` is what the tuner asks of one; ``EmulatorDeployment`` is the embedded pipeline emulator (five
models on a real tritonserver started with ``--model-control-mode=explicit``, so a changed model is loaded again
through Triton's repository API instead of restarting the server). ``cvload bootstrap``'s deployments
(``server_bootstrap.tune``) register a factory here (``register``): cvload never imports server_bootstrap.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cvload.errors import CvloadError, UsageError
from cvload.tune.space import Knob, Value

LOAD_TIMEOUT_S = 120.0  # one model's load through the repository API


class DeploymentFailed(CvloadError):
    """A candidate's server did not start or a model did not load: the candidate is recorded with the reason."""


@dataclass(frozen=True)
class Change:
    """What a candidate needs done to the deployment as it serves now: the tuner does it (or ``--plan`` shows it)."""

    launch: bool = False  # start the server process (first candidate, or after a failure / a server-level knob)
    reload: tuple[str, ...] = ()  # models loaded again through the repository API (explicit model control)
    rebuild: bool = False  # an engine build (no engine of these knobs in the cache)
    engine: str | None = None  # the engine's cache key (its knobs' hash), when the deployment has an engine
    commands: tuple[str, ...] = ()  # what would run, as a plan prints it
    reason: str = ""

    def describe(self) -> str:
        parts = []
        if self.rebuild:
            parts.append(f"rebuild engine {self.engine}")
        elif self.engine:
            parts.append(f"engine {self.engine} (cached)")
        if self.launch:
            parts.append("launch server")
        elif self.reload:
            parts.append("reload " + ", ".join(self.reload))
        elif not self.rebuild:
            parts.append("nothing to restart")
        return "; ".join(parts) + (f" ({self.reason})" if self.reason else "")

    def to_json(self) -> dict[str, Any]:
        return {"launch": self.launch, "reload": list(self.reload), "rebuild": self.rebuild, "engine": self.engine,
                "reason": self.reason}


class Deployment(Protocol):
    """What the tuner needs of a deployment."""

    name: str

    def knobs(self) -> dict[str, Knob]: ...

    def defaults(self) -> dict[str, Value]: ...

    def plan(self, knobs: Mapping[str, Value]) -> Change:
        """What serving ``knobs`` needs, from what serves now (or was pretended to)."""
        ...

    def pretend(self, knobs: Mapping[str, Value], change: Change) -> None:
        """Take ``knobs`` as serving without doing anything (``--plan``: the next plan follows from it)."""
        ...

    def apply(self, knobs: Mapping[str, Value], change: Change) -> dict[str, Any]:
        """Make the deployment serve ``knobs``; return RunConfig overrides (server, metrics_url, model, mode)."""
        ...

    def write_best(self, knobs: Mapping[str, Value], folder: Path) -> list[Path]: ...

    def close(self) -> None: ...


Factory = Callable[[str, Path], Deployment]  # (config path, work folder for its servers)
_FACTORIES: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    """A deployment kind another package provides (``--bootstrap CONFIG``: server_bootstrap registers it)."""
    _FACTORIES[name] = factory


def factory(name: str) -> Factory:
    if name not in _FACTORIES:
        raise UsageError(f"no {name!r} deployment is installed for cvload tune",
                         hint="reinstall cvload (pip install -e .): server_bootstrap registers it")
    return _FACTORIES[name]


# ---- the embedded pipeline emulator ----------------------------------------------------------------------------
# Knob -> the models whose config.pbtxt it changes (the front model is named by the run's model).
EMULATOR_KNOBS = {
    "bls_instances": ("front",),
    "token2wav_instances": ("token2wav",),
    "max_batch_size": ("all",),
}


def load_model(http: str, model: str, timeout: float = LOAD_TIMEOUT_S) -> None:
    """Triton's repository API: (re)load ``model`` from its repository; raise DeploymentFailed with Triton's words."""
    request = urllib.request.Request(f"http://{http}/v2/repository/models/{model}/load", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError):
            body = json.loads(body).get("error", body)
        raise DeploymentFailed(f"loading model {model} failed: {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DeploymentFailed(f"loading model {model}: the server did not answer ({exc})") from None


@dataclass
class EmulatorDeployment:
    """The pipeline emulator with the space's knobs as profile settings; models reload in place."""

    profile: str
    profile_set: Mapping[str, Any]
    root: Path
    model: str = "cosyvoice2"
    mode: str = "streaming"
    prompt_models: bool = True
    name: str = "emulator"
    server: Any = field(default=None, init=False)  # cvload.triton.launcher.TritonServer
    serving: dict[str, Value] | None = field(default=None, init=False)  # knobs the loaded models were built from

    def knobs(self) -> dict[str, Knob]:
        """Defaults: the profile with the scenario's profile_set (the deployment as configured: the baseline)."""
        base = self._profile({})
        return {name: Knob(name, getattr(base, name), "reload", f"models reloaded: {', '.join(models)}")
                for name, models in EMULATOR_KNOBS.items()}

    def defaults(self) -> dict[str, Value]:
        return {name: knob.default for name, knob in self.knobs().items()}

    def _profile(self, knobs: Mapping[str, Value]) -> Any:
        from cvload.emulator import get_profile

        return get_profile(self.profile, {**self.profile_set, **knobs})

    def _models(self) -> list[str]:
        from cvload.emulator import pipeline_models

        return pipeline_models(self.model, prompt_models=self.prompt_models)

    def plan(self, knobs: Mapping[str, Value]) -> Change:
        if self.serving is None:
            return Change(launch=True, reason="no server running")
        if self.server is not None and not self.server.alive():
            return Change(launch=True, reason="the server died")
        changed = [k for k in EMULATOR_KNOBS if self.serving.get(k) != knobs.get(k, self.defaults()[k])]
        models: list[str] = []
        for knob in changed:
            for m in EMULATOR_KNOBS[knob]:
                names = self._models() if m == "all" else [self.model] if m == "front" else [m]
                models += [n for n in names if n not in models]
        # Sub-models first: the front model calls them as soon as it is back.
        ordered = tuple(sorted(models, key=lambda n: n == self.model))
        return Change(reload=ordered, reason=", ".join(f"{k} {self.serving.get(k)} -> {knobs.get(k)}"
                                                       for k in changed))

    def pretend(self, knobs: Mapping[str, Value], change: Change) -> None:
        self.serving = {**self.defaults(), **knobs}

    def apply(self, knobs: Mapping[str, Value], change: Change) -> dict[str, Any]:
        from cvload.emulator import build_pipeline_repository
        from cvload.triton.launcher import TritonServer

        full = {**self.defaults(), **knobs}
        try:
            profile = self._profile(full)
        except UsageError as exc:
            raise DeploymentFailed(f"emulator profile: {exc.message}") from None
        # Models that stay loaded keep their folders as they are (their instances hold files there, such as the
        # shared state file): moved aside while the repository is written, then put back.
        kept = [] if change.launch else [m for m in self._models() if m not in change.reload]
        served, aside = self.root / "model_repository", self.root / "kept"
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir(parents=True)
        for model in kept:
            (served / model).rename(aside / model)
        repo = build_pipeline_repository(self.root, profile, name=self.model, mode=self.mode,
                                         prompt_models=self.prompt_models, trace=False)
        for model in kept:
            shutil.rmtree(repo / model)
            (aside / model).rename(repo / model)
        self.serving = None  # until it serves these knobs
        try:
            if change.launch:
                self.stop()
                loads = [f"--load-model={m}" for m in self._models()]
                # --exit-timeout-secs=0: an emulator has nothing to save, so it exits at once when the tune is
                # over or relaunches it (as `cvload run --emulator`'s does) instead of unloading its models
                # one by one, about a second per stub process.
                self.server = TritonServer(repo, workdir=self.root / "server", die_with_parent=True,
                                           extra_args=["--model-control-mode=explicit", "--exit-timeout-secs=0",
                                                       *loads])
                self.server.start()
            else:
                for model in change.reload:
                    try:
                        load_model(self.server.http_url, model)
                    except DeploymentFailed as exc:  # Triton's answer is short; its log says why
                        from cvload.triton.launcher import log_excerpt

                        log = self.server.log_path
                        raise DeploymentFailed(f"{exc.message}; log {log}:\n{log_excerpt(log, tail=4, max_errors=4)}")\
                            from None
        except CvloadError as exc:
            self.stop()
            raise DeploymentFailed(str(exc)) from None
        self.serving = dict(full)
        return {"server": [self.server.grpc_url], "metrics_url": self.server.metrics_url, "model": self.model,
                "mode": self.mode, "protocol": "grpc"}

    def write_best(self, knobs: Mapping[str, Value], folder: Path) -> list[Path]:
        """The best candidate as a ``cvload bootstrap --target emulator`` config and its config.pbtxt set."""
        from cvload.emulator import build_pipeline_repository

        full = {**self.defaults(), **knobs}
        repo = build_pipeline_repository(folder, self._profile(full), name=self.model, mode=self.mode,
                                         prompt_models=self.prompt_models, trace=False)
        for model in self._models():  # the set of configs only: model.py copies belong to the emulator
            for path in (repo / model / "1").iterdir():
                path.unlink()
            (repo / model / "1").rmdir()
        set_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in sorted(self.profile_set.items()))
        toml = folder / "bootstrap.toml"
        toml.write_text(
            "# The best configuration cvload tune found: `cvload bootstrap up --config bootstrap.toml`\n"
            f'target = "emulator"\nmode = "{self.mode}"\n\n[model]\nname = "{self.model}"\n\n[triton]\n'
            f"bls_instances = {full['bls_instances']}\ntoken2wav_instances = {full['token2wav_instances']}\n"
            f"max_batch_size = {full['max_batch_size']}\n"
            f"use_spk2info_cache = {'false' if self.prompt_models else 'true'}\n\n"
            f'[emulator]\npipeline = true\nprofile = "{self.profile}"\n'
            + (f"\n[emulator.profile_set]\n{set_lines}" if set_lines else ""), encoding="utf-8")
        return [toml, *sorted(repo.glob("*/config.pbtxt"))]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.serving = None

    def close(self) -> None:
        self.stop()
