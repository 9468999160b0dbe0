"""Scenario files: TOML whose keys are RunConfig's field names, checked strictly against their types.

A scenario is the part of a run worth keeping in git (load shape, inputs, objectives). Every key and value is
checked here, so a typo (``num_task = 8``) or a wrong type (``requests = "40"``) is an error naming the key and
the file instead of a setting silently ignored. Durations (``duration``, ``ramp``, ``request_timeout``,
``telemetry_interval``) take seconds or strings like ``"60s"``/``"500ms"``; relative ``inputs`` and ``out`` paths
are relative to the scenario file's folder. The run command merges defaults < scenario < explicit flags.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from cvload.config import ARRIVALS, MODES, PROTOCOLS, RunConfig, Warmup, parse_duration
from cvload.errors import UsageError
from cvload.slo import parse_objectives

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"  # the project's ready-made scenarios
DURATION_KEYS = ("duration", "ramp", "request_timeout", "telemetry_interval")
PATH_KEYS = ("inputs", "out")
CHOICES = {"protocol": PROTOCOLS, "mode": MODES, "arrival": ARRIVALS,
           "gpu_source": ("auto", "server", "nvml", "none")}
RESERVED = ("scenario",)  # set by cvload itself: the scenario file's path
_HINTS = typing.get_type_hints(RunConfig)
KEYS = tuple(name for name in _HINTS if name not in RESERVED)


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
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"scenario {file} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"scenario {file} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read scenario {file}: {exc.strerror or exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        values[key] = _check(file, key, value)
    values["scenario"] = str(file.resolve())
    values.setdefault("name", file.stem)
    return values


def _check(file: Path, key: str, value: Any) -> Any:
    where = f"key {key!r} in scenario {file}"
    if key in RESERVED:
        raise UsageError(f"{where}: set by cvload, not by a scenario file", hint="remove it")
    if key not in _HINTS:
        guess = key.replace("-", "_")
        close = [guess] if guess in KEYS else difflib.get_close_matches(key, KEYS, n=1)
        raise UsageError(f"unknown {where}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                         hint="scenario keys are `cvload run` settings with underscores: " + ", ".join(KEYS))
    if key in DURATION_KEYS and isinstance(value, str):
        try:
            return parse_duration(value, what=key)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc.message}", hint=exc.hint) from None
    checked = _typed(where, key, _HINTS[key], value)
    if key in CHOICES and checked not in CHOICES[key]:
        close = difflib.get_close_matches(str(checked), CHOICES[key], n=1)
        raise UsageError(f"{where}: {checked!r} is not one of {', '.join(CHOICES[key])}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))
    if key in DURATION_KEYS and checked is not None and checked < 0:
        raise UsageError(f"{where}: must not be negative, got {checked}")
    if key == "warmup":
        try:
            Warmup.parse(checked)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc.message}", hint=exc.hint) from None
    if key == "slo":
        try:
            parse_objectives(checked)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc.message}", hint=exc.hint) from None
    if key in PATH_KEYS:
        p = Path(os.path.expanduser(checked))
        return str(p if p.is_absolute() else (file.parent / p).resolve())
    return checked


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list of strings", dict: "a table"}


def _typed(where: str, key: str, hint: Any, value: Any) -> Any:
    """``value`` if it fits the annotation (ints widen to float), else a UsageError saying what was expected."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] \
        if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if origin is int and isinstance(value, int):
            return value
        if origin is float and isinstance(value, int | float):
            return float(value)
        if origin is str and isinstance(value, str):
            return value
        if origin is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        if origin is dict and isinstance(value, dict):
            return dict(value)
    wanted = " or ".join(_TYPE_NAMES.get(typing.get_origin(o) or o, str(o)) for o in options)
    tip = None
    if any((typing.get_origin(o) or o) is list for o in options) and isinstance(value, str):
        tip = f"write a list: {key} = [{json.dumps(value, ensure_ascii=False)}]"
    raise UsageError(f"{where} must be {wanted}, got {type(value).__name__} {value!r}", hint=tip)
