"""A tune's results file (``tune.json``): its schema, its reader, and how a table of candidates writes a cell.

The tuner that writes it (cvload.tune) and the views that show it (the tune's console and dashboard, and
``cvload report``, which may not import the tuner) share these from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvload.errors import UsageError

TUNE_SCHEMA = "cvload.tune/1"


def load_tune(path: Path) -> dict[str, Any]:
    """A tune.json's content; a UsageError naming the file when it is unreadable or of another schema."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != TUNE_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise UsageError(f"{path}: schema {found!r}, expected {TUNE_SCHEMA!r}")
    return data


def read_tune(folder: Path) -> dict[str, Any] | None:
    """tune.json of a tune folder (None when the folder is no tune); a UsageError when it is unreadable."""
    path = Path(folder) / "tune.json"
    return load_tune(path) if path.is_file() else None


def cell_text(value: Any) -> str:
    """A value in a table of candidates (console, dashboard, report): a knob as the space file writes it (true,
    not True), whole numbers without a decimal point, "-" for none."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if not value.is_integer() else f"{int(value)}"
    return str(value)
