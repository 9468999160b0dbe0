"""``cvload tune --bootstrap CONFIG``: a ``cvload bootstrap`` deployment as something cvload tune reconfigures.

Knobs are the config's: ``[triton]`` keys by their own names (a model repository reload), ``[engine]`` keys as
``engine_<key>`` and ``dtype`` (an engine rebuild, cached by the engine's knobs under ``engines/<hash>``, so a
candidate returning to engine knobs built before reuses that engine), ``use_spk2info_cache``, ``engine_tp_size`` and
``engine_pp_size`` (the server's models or GPUs change: a relaunch). ``plan`` says exactly that per candidate, with
the commands; the emulator target (``[emulator] pipeline = true``) is measured for real through
``cvload.tune.deployments.EmulatorDeployment``. cvload never imports this module: ``register`` (called when
``cvload bootstrap`` registers its command) hands cvload tune the factory.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvload.errors import UsageError
from cvload.tune.deployments import Change, DeploymentFailed, EmulatorDeployment
from cvload.tune.deployments import register as register_deployment
from cvload.tune.space import Knob, Value, shown
from server_bootstrap import model_repository
from server_bootstrap.config import DeploymentConfig, EngineConfig, TritonConfig, load_config
from server_bootstrap.layout import Layout, resolve_workdir
from server_bootstrap.stages import Build, Context
from server_bootstrap.state import State, stable_hash

RELAUNCH = ("use_spk2info_cache", "engine_tp_size", "engine_pp_size")  # the server's models or GPUs change
REBUILD = ("dtype",)  # with every engine_* knob
SKIPPED = ("decoupled",)  # follows mode; not a knob


@dataclass(frozen=True)
class TuneLayout(Layout):
    """The bootstrap's layout with one engine folder per engine-knob hash: the cache a tune rebuilds into."""

    engine_key: str = ""

    @property
    def engine_dir(self) -> Path:
        return self.workdir / "engines" / self.engine_key


def _knob_values(config: DeploymentConfig) -> dict[str, Value]:
    values: dict[str, Value] = {}
    for f in dataclasses.fields(TritonConfig):
        if f.name not in SKIPPED:
            values[f.name] = getattr(config.triton, f.name)
    for f in dataclasses.fields(EngineConfig):
        value = getattr(config.engine, f.name)
        if f.name not in ("python", "trtllm_build") and value is not None:
            values[f"engine_{f.name}"] = value
    values["dtype"] = config.model.dtype
    return values


def _overrides(knobs: Mapping[str, Value]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in knobs.items():
        if name.startswith("engine_"):
            out[f"engine.{name[len('engine_'):]}"] = value
        elif name == "dtype":
            out["model.dtype"] = value
        else:
            out[f"triton.{name}"] = value
    return out


@dataclass
class BootstrapDeployment:
    config_path: str
    root: Path
    name: str = "bootstrap deployment"
    serving: dict[str, Value] | None = field(default=None, init=False)
    engines: set[str] = field(default_factory=set, init=False)  # engine keys built (or pretended) in this tune
    emulator: EmulatorDeployment | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.config = load_config(self.config_path)
        self.workdir = resolve_workdir(None, self.config)
        self.name = f"bootstrap {self.config.target} deployment of {self.config.origin}"
        if self.config.target == "python-runtime":
            raise UsageError(f"{self.config.origin}: target python-runtime has no Triton knobs to tune",
                             hint="tune a trtllm or emulator target")
        for key in self.workdir.glob("engines/*/config.json"):  # engines of earlier tunes: the cache
            self.engines.add(key.parent.name)

    # ---- knobs -----------------------------------------------------------------------------------------------
    def knobs(self) -> dict[str, Knob]:
        out = {}
        for name, default in _knob_values(self.config).items():
            restarts = ("relaunch" if name in RELAUNCH else "rebuild" if name.startswith("engine_") or
                        name in REBUILD else "reload")
            out[name] = Knob(name, default, restarts)
        return out

    def defaults(self) -> dict[str, Value]:
        return _knob_values(self.config)

    def candidate(self, knobs: Mapping[str, Value]) -> DeploymentConfig:
        """The deployment config of a candidate: the file's, with the knobs set (validated as bootstrap does)."""
        return load_config(self.config_path, overrides=_overrides(knobs))

    def engine_key(self, config: DeploymentConfig) -> str:
        return stable_hash(self._build(config, "").inputs())[:12]

    def layout(self, config: DeploymentConfig) -> TuneLayout:
        return TuneLayout(self.workdir, config, engine_key=self.engine_key(config))

    def _build(self, config: DeploymentConfig, key: str) -> Build:
        layout = TuneLayout(self.workdir, config, engine_key=key)
        return Build(Context(config=config, layout=layout, state=State(layout.state_path), out=sys.stdout))

    # ---- plans -----------------------------------------------------------------------------------------------
    def plan(self, knobs: Mapping[str, Value]) -> Change:
        try:
            config = self.candidate(knobs)
        except UsageError as exc:
            return Change(reason=f"invalid: {exc.message}")
        engine = None
        rebuild = False
        commands: list[str] = []
        if config.target == "trtllm":
            engine = self.engine_key(config)
            rebuild = engine not in self.engines
            if rebuild:
                from cvload.subprocesses import show

                commands += [show(c) for c in self._build(config, engine).commands()]
        serving = self.serving
        previous = None if serving is None else self.candidate(serving)
        if serving is None or previous is None or any(serving.get(k) != knobs.get(k, self.defaults()[k])
                                                      for k in RELAUNCH):
            reason = "no server running" if previous is None else "the server's models or GPUs change"
            return Change(launch=True, rebuild=rebuild, engine=engine, commands=tuple(commands), reason=reason)
        reload = self._changed_models(previous, config)
        http = config.server_ports(0)[0]
        commands += [f"POST http://{config.host}:{http}/v2/repository/models/{m}/load" for m in reload]
        return Change(reload=tuple(reload), rebuild=rebuild, engine=engine, commands=tuple(commands),
                      reason="; ".join(f"{k} {shown(serving.get(k))} -> {shown(v)}"  # type: ignore[arg-type]  # a knob the server has
                                       for k, v in knobs.items() if serving.get(k) != v))

    def _changed_models(self, before: DeploymentConfig, after: DeploymentConfig) -> list[str]:
        """Models whose filled config.pbtxt differs (sub-models first, the front model last)."""
        if after.target == "emulator":
            a, b = self._emulator_knobs(before), self._emulator_knobs(after)
            names = {"bls_instances": [after.model.name], "token2wav_instances": ["token2wav"],
                     "max_batch_size": model_repository.emulator_models(after)}
            models = [m for k in names if a[k] != b[k] for m in names[k]]
        else:
            old = model_repository.template_values(before, self.layout(before))
            new = model_repository.template_values(after, self.layout(after))
            models = [m for m in new if old.get(m) != new[m]]
            if before.triton.token2wav_instances != after.triton.token2wav_instances and "token2wav" not in models:
                models.append("token2wav")  # its instance count is set in the file, not a placeholder
        unique = list(dict.fromkeys(models))
        return sorted(unique, key=lambda m: m == after.model.name)

    @staticmethod
    def _emulator_knobs(config: DeploymentConfig) -> dict[str, Value]:
        t = config.triton
        return {"bls_instances": t.bls_instances, "token2wav_instances": t.token2wav_instances,
                "max_batch_size": t.max_batch_size}

    def pretend(self, knobs: Mapping[str, Value], change: Change) -> None:
        if change.reason.startswith("invalid"):
            return
        self.serving = {**self.defaults(), **knobs}
        if change.engine:
            self.engines.add(change.engine)

    # ---- doing it --------------------------------------------------------------------------------------------
    def apply(self, knobs: Mapping[str, Value], change: Change) -> dict[str, Any]:
        try:
            config = self.candidate(knobs)
        except UsageError as exc:
            raise DeploymentFailed(f"invalid candidate config: {exc.message}") from None
        if config.target != "emulator" or not config.emulator.pipeline:
            raise UsageError(f"{config.origin}: cvload tune measures the bootstrap's emulator target with "
                             "[emulator] pipeline = true; a trtllm target is planned only (--plan)",
                             hint="run `cvload tune SPACE --bootstrap CONFIG --plan` for its per-candidate plan")
        if self.emulator is None:
            self.emulator = EmulatorDeployment(profile=config.emulator.profile,
                                               profile_set=dict(config.emulator.profile_set), root=self.root,
                                               model=config.model.name, mode=config.mode,
                                               prompt_models=not config.triton.use_spk2info_cache)
        emulated = self._emulator_knobs(config)
        overrides = self.emulator.apply(emulated, self.emulator.plan(emulated))
        self.serving = {**self.defaults(), **knobs}
        return overrides

    def write_best(self, knobs: Mapping[str, Value], folder: Path) -> list[Path]:
        """The best candidate as a complete bootstrap config (the file's, knobs set) and its config.pbtxt set."""
        config = self.candidate(knobs)
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"# The best configuration cvload tune found, from {self.config_path}",
                 "# `cvload bootstrap up --config bootstrap.toml`"]
        data = config.to_dict()
        top = {k: v for k, v in data.items() if not isinstance(v, dict)}
        lines += [f"{k} = {_toml(v)}" for k, v in top.items() if v is not None]
        for section, values in data.items():
            if isinstance(values, dict):
                plain = {k: v for k, v in values.items() if v is not None and not isinstance(v, dict)}
                lines += ["", f"[{section}]", *(f"{k} = {_toml(v)}" for k, v in plain.items())]
                for k, v in values.items():
                    if isinstance(v, dict) and v:
                        lines += ["", f"[{section}.{k}]", *(f"{kk} = {_toml(vv)}" for kk, vv in v.items())]
        path = folder / "bootstrap.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written = [path]
        if config.target == "emulator" and self.emulator is not None:
            written += self.emulator.write_best(self._emulator_knobs(config), folder / "emulator")
        return written

    def close(self) -> None:
        if self.emulator is not None:
            self.emulator.close()


def _toml(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def make(config: str, root: Path) -> BootstrapDeployment:
    return BootstrapDeployment(config, root)


def register() -> None:
    register_deployment("bootstrap", make)
