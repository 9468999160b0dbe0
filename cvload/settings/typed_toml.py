"""TOML files read into dataclasses by their type hints: every key known, every value of its declared type.

Scenario files (``RunConfig``) and the bootstrap's deployment config both go through here, so a typo or a wrong
type is the same kind of error everywhere: it names the file, the table and the key, says what was expected and
suggests the closest key, instead of a setting silently ignored. A field whose type is itself a dataclass is a
TOML table, read the same way. Relative paths (the fields named in ``paths``) are relative to the file's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvload.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "true/false values"), dict: ("a table", "tables")}


def read_toml(file: Path, what: str, *, hint: str | None = None) -> dict[str, Any]:
    """The parsed file, or a UsageError naming it (``what``: "scenario", "config", ...); ``hint`` helps when it
    does not exist."""
    try:
        data: dict[str, Any] = tomllib.loads(file.read_text(encoding="utf-8"))
        return data
    except FileNotFoundError:
        raise UsageError(f"{what} file {file} not found", hint=hint) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{what} {file} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {file} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {file}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Where:
    """A table of a file, for messages: ``key 'x' in [server] of config deploy.toml``."""

    source: str  # "scenario /path/s.toml", "config /path/deploy.toml", "command-line settings"
    table: str = ""  # dotted, "" for the top level

    def key(self, key: str) -> str:
        return f"key {key!r} in " + (f"[{self.table}] of {self.source}" if self.table else self.source)

    def inner(self, name: str) -> Where:
        return Where(self.source, f"{self.table}.{name}" if self.table else name)


@dataclass(frozen=True)
class Rules:
    """What a file may say beyond the types: per-key parsers (run on the raw value, e.g. "60s" -> 60.0) and
    checks (run on the typed value; both raise UsageError), path fields, and fields set by the program only."""

    parse: Mapping[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)
    check: Mapping[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)
    paths: Collection[str] = ()  # dotted field names ("inputs", "source.path")
    reserved: Collection[str] = ()  # fields a file must not set
    keys_hint: str = "known keys"  # how the key list in an unknown-key hint is introduced
    blank_is_none: bool = False  # "" unsets an optional field (TOML has no null)


def read_table(table: Mapping[str, Any], cls: type, where: Where, *, base: Path | None = None,
               rules: Rules = Rules()) -> dict[str, Any]:
    """Typed values of ``cls``'s fields from ``table`` (nested dicts for dataclass fields); paths resolved
    against ``base`` (left as given when it is None)."""
    hints = typing.get_type_hints(cls)
    keys = [f.name for f in dataclasses.fields(cls) if f.name not in rules.reserved]
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{where.table}.{key}" if where.table else key
        if key in rules.reserved:
            raise UsageError(f"{where.key(key)}: set by cvload, not by a file", hint="remove it")
        if key not in keys:
            guess = key.replace("-", "_")
            close = [guess] if guess in keys else difflib.get_close_matches(key, keys, n=1)
            raise UsageError(f"unknown {where.key(key)}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                             hint=f"{rules.keys_hint}" + (f" in [{where.table}]" if where.table else "")
                             + ": " + ", ".join(keys))
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UsageError(f"{where.key(key)} must be a table ([{dotted}]), got {_shown(value)}")
            values[key] = read_table(value, hint, where.inner(key), base=base, rules=rules)
            continue
        place = where.key(key)
        value = typed(_placed(place, rules.parse.get(dotted), value), hint, place, key,
                      blank_is_none=rules.blank_is_none)
        if value is not None:
            value = _placed(place, rules.check.get(dotted), value)
        if dotted in rules.paths and value:
            path = Path(os.path.expanduser(value))
            if base is not None and not path.is_absolute():
                path = (base / path).resolve()
            value = str(path)
        values[key] = value
    return values


def _placed(place: str, rule: Callable[[Any], Any] | None, value: Any) -> Any:
    """``rule(value)``, its UsageError prefixed with where the value was found."""
    if rule is None:
        return value
    try:
        return rule(value)
    except UsageError as exc:
        raise UsageError(f"{place}: {exc.message}", hint=exc.hint) from None


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of ``cls`` from ``read_table``'s values (defaults for what is not given)."""
    hints = typing.get_type_hints(cls)
    return cls(**{k: build(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v for k, v in values.items()})


def merge(into: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` laid over ``into`` (tables merged key by key)."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def typed(value: Any, hint: Any, place: str, key: str, *, blank_is_none: bool = False) -> Any:
    """``value`` if it fits the annotation (ints widen to float), else a UsageError: ``{place} must be ...``."""
    options = [hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (blank_is_none and value == ""):
            return None
    for option in options:
        ok, out = _fits(value, option)
        if ok:
            return out
    tip = None
    if isinstance(value, str) and any(typing.get_args(o) == (str,) for o in options):
        tip = f"write a list: {key} = [{json.dumps(value, ensure_ascii=False)}]"
    raise UsageError(f"{place} must be {' or '.join(_name(o) for o in options)}, got {_shown(value)}", hint=tip)


def _fits(value: Any, option: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(option) or option
    if option is Any:
        return True, value
    if origin is bool or isinstance(value, bool):
        return origin is bool and isinstance(value, bool), value
    if origin is float and isinstance(value, int | float):
        return True, float(value)
    if origin is list:
        args = typing.get_args(option)
        if not isinstance(value, list):
            return False, None
        items = [_fits(v, args[0]) if args else (True, v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        return isinstance(value, dict), dict(value) if isinstance(value, dict) else None
    return isinstance(value, origin), value


def _name(option: Any) -> str:
    origin = typing.get_origin(option) or option
    if origin is list:
        args = typing.get_args(option)
        return "a list of " + (_NAMES.get(args[0], ("", str(args[0])))[1] if args else "values")
    return _NAMES.get(origin, (getattr(origin, "__name__", str(origin)),))[0]


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
