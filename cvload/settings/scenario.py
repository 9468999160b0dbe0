"""Scenario files: TOML whose keys are RunConfig's field names, checked strictly against their types.

A scenario is the part of a run worth keeping in git (load shape, inputs, objectives). Every key and value is
checked here, so a typo (``num_task = 8``) or a wrong type (``requests = "40"``) is an error naming the key and
the file instead of a setting silently ignored. Durations (``duration``, ``ramp``, ``request_timeout``,
``telemetry_interval``, ``drain``) take seconds or strings like ``"60s"``/``"500ms"``; relative ``inputs`` and ``out`` paths
are relative to the scenario file's folder. The run command merges defaults < scenario < explicit flags. A
``[sweep]`` table holds ``cvload sweep``'s levels and rules (``SweepSettings``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvload.apis import PROTOCOLS
from cvload.errors import UsageError
from cvload.measure.slo import parse_objectives
from cvload.settings.config import (
    ARRIVALS,
    MODES,
    SEARCHES,
    RunConfig,
    SweepSettings,
    Warmup,
    parse_duration,
    parse_levels,
)
from cvload.settings.typed_toml import Rules, Where, build, read_table, read_toml

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "scenarios"  # the project's ready-made scenarios
DURATION_KEYS = ("duration", "ramp", "request_timeout", "telemetry_interval", "drain", "sweep.stable_max")
PATH_KEYS = ("inputs", "out")
CHOICES = {"protocol": PROTOCOLS, "mode": MODES, "arrival": ARRIVALS,
           "gpu_source": ("auto", "server", "nvml", "none"), "sweep.search": SEARCHES}
RESERVED = ("scenario",)  # set by cvload itself: the scenario file's path


def available_scenarios() -> list[str]:
    """Names of the ready-made scenarios (``cvload run NAME``)."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")) if SCENARIO_DIR.is_dir() else []


def find_scenario(name: str | os.PathLike[str], *, cwd: Path | None = None) -> Path:
    """A scenario path, or a name looked up as NAME.toml in the current folder, its scenarios/, then the
    project's scenarios/ folder."""
    given = os.path.expanduser(os.fspath(name))
    path = Path(given)
    if path.is_file():
        return path
    if path.exists():
        raise UsageError(f"scenario {given} is not a file")
    if path.suffix == ".toml" or os.sep in given or "/" in given:
        raise UsageError(f"scenario file {given} not found")
    here = cwd or Path.cwd()
    for folder in (here, here / "scenarios", SCENARIO_DIR):
        candidate = folder / f"{given}.toml"
        if candidate.is_file():
            return candidate
    known = available_scenarios()
    close = difflib.get_close_matches(given, known, n=1)
    raise UsageError(
        f"no scenario named {given!r} (looked for {given}.toml here, in ./scenarios and in {SCENARIO_DIR})"
        + (f"; did you mean {close[0]!r}?" if close else ""),
        hint="built-in scenarios: " + (", ".join(known) or "none") + "; or give a path to a .toml file",
    )


def load_scenario(path: str | os.PathLike[str], *, cwd: Path | None = None) -> dict[str, Any]:
    """Typed RunConfig values from a scenario file (or name), with ``scenario`` set to its path and ``name``
    defaulting to the file's stem; raises UsageError naming the file and key on anything wrong."""
    file = find_scenario(path, cwd=cwd)
    raw = read_toml(file, "scenario")
    values = read_table(raw, RunConfig, Where(f"scenario {file}"), base=file.parent, rules=RULES)
    if "sweep" in values:  # the [sweep] table: cvload sweep's levels and rules
        values["sweep"] = build(SweepSettings, values["sweep"])
    values["scenario"] = str(file.resolve())
    values.setdefault("name", file.stem)
    return values


def _duration(key: str) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        return parse_duration(value, what=key) if isinstance(value, str) else value
    return parse


def _not_negative(value: float) -> float:
    if value < 0:
        raise UsageError(f"must not be negative, got {value}")
    return value


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            raise UsageError(f"{value!r} is not one of {', '.join(choices)}"
                             + (f" (did you mean {close[0]!r}?)" if close else ""))
        return value
    return check


def _valid(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        parse(value)
        return value
    return check


RULES = Rules(
    parse={key: _duration(key) for key in DURATION_KEYS},
    check={**{key: _not_negative for key in DURATION_KEYS},
           **{key: _one_of(choices) for key, choices in CHOICES.items()},
           "warmup": _valid(Warmup.parse), "slo": _valid(parse_objectives),
           "sweep.num_tasks": _valid(lambda v: parse_levels(v, "num_tasks")),
           "sweep.rate": _valid(lambda v: parse_levels(v, "rate"))},
    paths=PATH_KEYS,
    reserved=RESERVED,
    keys_hint="scenario keys are `cvload run` settings with underscores",
)
