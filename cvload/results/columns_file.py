"""records.columns: the numbers of records.jsonl as fixed-width binary rows, written beside each line.

A day of load at a few hundred requests a second is tens of millions of records: parsing records.jsonl then takes
minutes and tens of gigabytes, while ``cvload report`` and ``cvload compare`` only need a few numbers per request.
So the results writer appends one row of float64 per record here, right after the record's line is on disk, and
the readers load the whole file with one ``numpy.fromfile``. Each row also holds the size records.jsonl had once
its line was written: a reader uses this file only when its last row ends exactly where records.jsonl ends (a run
that crashed, a file edited or cut by hand: the readers parse records.jsonl, which stays the record of truth).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cvload.measure.metrics import REQUEST_METRICS
from cvload.results.records import OUTCOME_KINDS

NAME = "records.columns"
_FIXED = ("jsonl_end", "run_start", "sent_s", "end_offset", "ok", "warmup", "error")
DTYPE = np.dtype([(name, "<f8") for name in (*_FIXED, *(m.name for m in REQUEST_METRICS))])
_ERROR_CODE = {kind: float(i + 1) for i, kind in enumerate(OUTCOME_KINDS)}  # 0: no error
ERROR_NAMES = np.array([None, *OUTCOME_KINDS], dtype=object)
_METRICS = tuple(m.name for m in REQUEST_METRICS)
_ROW = struct.Struct(f"<{len(DTYPE.names or ())}d")  # the same layout as DTYPE, packed without numpy


def row(data: dict[str, Any], jsonl_end: int) -> bytes:
    """One record's row from its records.jsonl object (``cvload.measure.metrics.record_json``)."""
    return _ROW.pack(jsonl_end, data.get("run_start") or 0.0, data.get("sent_s") or 0.0,
                     _number(data.get("end_offset")), 1.0 if data.get("ok") else 0.0,
                     1.0 if data.get("warmup") else 0.0, _ERROR_CODE.get(data.get("error_kind") or "", 0.0),
                     *(_number(data.get(name)) for name in _METRICS))


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def read(folder: Path) -> npt.NDArray[Any] | None:
    """The rows, or None where the file is missing or does not cover records.jsonl exactly."""
    path, jsonl = Path(folder) / NAME, Path(folder) / "records.jsonl"
    try:
        size, jsonl_size = path.stat().st_size, jsonl.stat().st_size
    except OSError:
        return None
    if size % DTYPE.itemsize:
        return None
    rows = np.fromfile(path, dtype=DTYPE) if size else np.empty(0, dtype=DTYPE)
    ends = rows["jsonl_end"]
    if (rows.size and ends[-1] != jsonl_size) or (not rows.size and jsonl_size):
        return None
    return rows
