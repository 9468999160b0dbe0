"""The results folder: every record on disk as it completes, so a crash, Ctrl-C or dead server loses nothing.

Layout (documented in README.md): config.json, records.jsonl, summary.json, summary.csv, model_config.json,
server_stats.json, telemetry.jsonl, audio/*.wav (with --save-audio), emulator/ (with --emulator).
"""

from __future__ import annotations

import csv
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from cvload.errors import UsageError
from cvload.metrics import MISSING, REQUEST_METRICS, RUN_METRICS, STAT_KEYS, lookup, record_json
from cvload.records import RequestRecord

SUMMARY_SCHEMA = "cvload.summary/1"


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
    """

    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir)
        records = self.dir / "records.jsonl"
        if (self.dir / "summary.json").exists() or (records.exists() and records.stat().st_size > 0):
            raise UsageError(f"results folder {self.dir} already holds a run",
                             hint="choose another --out (or leave it out for a new timestamped folder)")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._records = open(self.dir / "records.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot write results folder {self.dir}: {exc.strerror}",
                             hint="pass a writable --out folder") from None
        self._queue: queue.SimpleQueue[RequestRecord | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self.write_error: OSError | None = None

    def write_json(self, name: str, data: Any) -> Path:
        path = self.dir / name
        write_json(path, data)
        return path

    def on_record(self, record: RequestRecord) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_records, name="cvload-records", daemon=True)
            self._writer.start()
        self._queue.put(record)

    def _write_records(self) -> None:
        get, fh = self._queue.get, self._records
        while (record := get()) is not None:
            try:
                fh.write(json.dumps(record_json(record), default=_jsonable, ensure_ascii=False) + "\n")
                fh.flush()
            except OSError as exc:  # disk full: keep draining so close() returns; the summary still comes
                self.write_error = exc

    def flush_records(self) -> None:
        """Wait until every record handed to ``on_record`` is on disk."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None

    def write_audio(self, record: RequestRecord, chunks: list[np.ndarray]) -> None:
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
        with open(self.dir / "summary.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            keys = [k for k in STAT_KEYS]
            writer.writerow(["metric", "unit", *keys])
            for metric in REQUEST_METRICS:
                stats = summary["metrics"].get(metric.name, {})
                writer.writerow([metric.name, metric.unit, *[_cell(stats.get(k)) for k in keys]])
            for metric in RUN_METRICS:
                value = lookup(summary, metric.name)
                if metric.csv and value is not MISSING:
                    writer.writerow([metric.name, "", _cell(value)])

    def close(self) -> None:
        self.flush_records()
        self._records.close()


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
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(RequestRecord.from_json(json.loads(line)))
        except (ValueError, TypeError) as exc:
            if line_no == len(lines):
                break  # a last line cut by a crash: keep everything before it
            raise UsageError(f"{path}:{line_no}: unreadable record ({exc})") from None
    return records
