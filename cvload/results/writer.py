"""The results folder: every record on disk as it completes, so a crash, Ctrl-C or dead server loses nothing.

Layout (documented in README.md): config.json, records.jsonl, records.columns (cvload.results.columns_file), summary.json,
summary.csv, model_config.json, server_stats.json, telemetry.jsonl, audio/*.wav (with --save-audio), emulator/
(with --emulator).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from cvload.errors import ServerError, UsageError
from cvload.measure.metrics import MISSING, REQUEST_METRICS, RUN_METRICS, STAT_KEYS, lookup, record_json
from cvload.results import columns_file
from cvload.results.records import RequestRecord

SUMMARY_SCHEMA = "cvload.summary/1"
MIN_FREE_BYTES = 1 << 20  # less free space than this in the results folder: refuse the run before any load


def default_out_dir(label: str, root: Path = Path("results")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{stamp}-{label}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{label}-{n}"
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable, ensure_ascii=False) + "\n")
    tmp.replace(path)  # a reader never sees half a file


class ResultsWriter:
    """Owns one results folder; ``on_record`` is an engine listener (one flushed line per request).

    Records are serialised and written by a writer thread: under load, ``json.dumps`` and the flush cost
    ~0.5 ms a record, which on the event loop would delay other requests' timestamps. Each line is flushed as
    soon as the thread gets to it (within milliseconds), and ``close()`` writes every record still queued.

    A write that fails (disk full, folder gone) cuts the file back to its last complete line, writes no more
    records and calls ``on_error`` (from the writer thread) with the reason: the run must stop, not lose records
    silently.
    """

    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir)
        records = self.dir / "records.jsonl"
        if (self.dir / "summary.json").exists() or (records.exists() and records.stat().st_size > 0):
            raise UsageError(f"results folder {self.dir} already holds a run",
                             hint="choose another --out (or leave it out for a new timestamped folder)")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._records = open(self.dir / "records.jsonl", "ab", buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot write results folder {self.dir}: {exc.strerror or exc}",
                             hint="pass a writable --out folder") from None
        try:
            _check_writable(self.dir)
        except UsageError:
            self._records.close()
            raise
        # The numbers of each line again, as a binary row (cvload.results.columns_file): reports on day-long runs read
        # this instead of parsing records.jsonl. Best effort: if it cannot be written it goes, the lines stay.
        self._columns: Any = None
        with contextlib.suppress(OSError):
            self._columns = open(self.dir / columns_file.NAME, "ab")  # noqa: SIM115
        self._queue: queue.SimpleQueue[RequestRecord | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self.write_error: OSError | None = None
        self.written = 0  # records on disk
        self.unwritten = 0  # records that came after a write failed
        self.on_error: Callable[[str], None] | None = None

    def write_json(self, name: str, data: Any) -> Path:
        path = self.dir / name
        try:
            write_json(path, data)
        except OSError as exc:
            path.with_suffix(path.suffix + ".tmp").unlink(missing_ok=True)
            raise self._disk_failure(exc, name) from None
        return path

    def _disk_failure(self, exc: OSError, name: str) -> ServerError:
        records = f"; {self.write_failure()}" if self.write_error is not None else ""
        return ServerError(f"results folder {self.dir}: cannot write {name} ({exc.strerror or exc}){records}",
                           hint="free space on that disk (or pass another --out); the records written so far stay readable "
                           "(`cvload tui --replay` shows them)")

    def on_record(self, record: RequestRecord) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_records, name="cvload-records", daemon=True)
            self._writer.start()
        self._queue.put(record)

    def _write_records(self) -> None:
        get, fh = self._queue.get, self._records
        while (record := get()) is not None:
            if self.write_error is not None:  # keep draining so close() returns
                self.unwritten += 1
                continue
            data = record_json(record)
            line = (json.dumps(data, default=_jsonable, ensure_ascii=False) + "\n").encode()
            good = fh.tell()
            try:
                view = memoryview(line)
                while view:  # an unbuffered write may be short (the last bytes of a disk)
                    view = view[fh.write(view) or 0:]
                self.written += 1
                if self._columns is not None:
                    self._write_columns(data, good + len(line))
            except OSError as exc:
                self.write_error = exc
                self.unwritten += 1
                with contextlib.suppress(OSError):
                    os.ftruncate(fh.fileno(), good)  # every line on disk stays whole
                if self.on_error is not None:
                    self.on_error(self.write_failure())

    def _write_columns(self, data: dict[str, Any], jsonl_end: int) -> None:
        try:
            self._columns.write(columns_file.row(data, jsonl_end))
        except OSError:  # the readers parse records.jsonl instead
            self._drop_columns()

    def _drop_columns(self) -> None:
        with contextlib.suppress(OSError):
            self._columns.close()
        (self.dir / columns_file.NAME).unlink(missing_ok=True)
        self._columns = None

    def write_failure(self) -> str:
        """What went wrong writing records, for the run's abort reason and the user."""
        exc = self.write_error
        assert exc is not None
        return (f"cannot write {self.dir / 'records.jsonl'}: {exc.strerror or exc}; stopped sending, the file holds "
                f"the first {self.written} records whole")

    def flush_records(self) -> None:
        """Wait until every record handed to ``on_record`` is on disk."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        if self._columns is not None:
            try:
                self._columns.flush()
            except OSError:
                self._drop_columns()

    def write_audio(self, record: RequestRecord, chunks: list[npt.NDArray[Any]]) -> None:
        import soundfile

        folder = self.dir / "audio"
        folder.mkdir(exist_ok=True)
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        safe_item = "".join(c if c.isalnum() or c in "-_" else "_" for c in record.item_id)[:60]
        soundfile.write(folder / f"{record.index:06d}_{safe_item}.wav", np.clip(audio, -1.0, 1.0),
                        record.sample_rate, subtype="PCM_16")

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.flush_records()  # a folder with summary.json holds every record
        self.write_json("summary.json", summary)
        try:
            self._write_csv(summary)
        except OSError as exc:
            raise self._disk_failure(exc, "summary.csv") from None

    def _write_csv(self, summary: dict[str, Any]) -> None:
        write_summary_csv(self.dir / "summary.csv", summary)

    def close(self) -> None:
        self.flush_records()
        self._records.close()
        if self._columns is not None:
            with contextlib.suppress(OSError):
                self._columns.close()
            self._columns = None


def write_summary_csv(path: Path, summary: dict[str, Any]) -> None:
    """summary.csv: each request metric's statistics, then the run metrics."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        keys = [k for k in STAT_KEYS]
        writer.writerow(["metric", "unit", *keys])
        for metric in REQUEST_METRICS:
            stats = summary["metrics"].get(metric.name, {})
            writer.writerow([metric.name, metric.unit, *[_cell(stats.get(k)) for k in keys]])
        for run_metric in RUN_METRICS:
            value = lookup(summary, run_metric.name)
            if run_metric.csv and value is not MISSING:
                writer.writerow([run_metric.name, "", _cell(value)])


def _check_writable(folder: Path) -> None:
    """Fail before any load when the folder cannot take a run's records: read-only, or (nearly) full."""
    probe = folder / ".cvload-write-check"
    try:
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            probe.unlink(missing_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise UsageError(f"cannot write results folder {folder}: {exc.strerror or exc}",
                         hint="pass a writable --out folder with free space") from None
    if free < MIN_FREE_BYTES:
        raise UsageError(f"results folder {folder} has only {free // 1024} KiB free: too little for a run's "
                         "records", hint="free space on that disk or pass another --out")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object of a results folder (summary.json, config.json); None when the file is not there."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable ({exc})") from None
    return data if isinstance(data, dict) else None


def read_records(folder: Path) -> list[RequestRecord]:
    """Records of a results folder (finished or cut short): for replay and reports."""
    path = Path(folder) / "records.jsonl"
    if not path.exists():
        raise UsageError(f"{folder} is not a cvload results folder (no records.jsonl)")
    rows = read_jsonl(path)
    records = []
    for n, row in enumerate(rows, 1):
        try:
            records.append(RequestRecord.from_json(row))
        except (ValueError, TypeError) as exc:
            if n == len(rows):
                break  # a last line cut by a crash: keep everything before it
            raise UsageError(f"{path}:{n}: unreadable record ({exc})") from None
    return records


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file cvload wrote (records.jsonl, telemetry.jsonl): a last line cut by a crash
    is left out, any other bad line is a UsageError naming the file and line."""
    data = path.read_bytes()
    body = data.rstrip(b"\n \r\t")
    if not body:
        return []
    try:  # one parse of the whole file as a JSON array: several times faster than a parse per line
        rows: list[dict[str, Any]] = orjson.loads(b"[" + body.replace(b"\n", b",") + b"]")
        if all(isinstance(r, dict) for r in rows):
            return rows
    except orjson.JSONDecodeError:
        pass
    rows, lines = [], body.split(b"\n")
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if line_no == len(lines):
                break  # a last line cut by a crash: keep everything before it
            raise UsageError(f"{path}:{line_no}: unreadable record ({exc})") from None
        rows.append(row)
    return rows
