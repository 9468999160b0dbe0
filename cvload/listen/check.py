"""``cvload check RESULTS --asr ...``: score a finished run's saved audio (``--save-audio``) after the fact.

Each saved response is transcribed (and, where the run did not look, searched for where its speech starts) in
helper processes, the same jobs the live checker runs (cvload.listen.live). The folder then holds ``content.jsonl``
(one line per checked request: index, item, language, transcript, error rate), records.jsonl and records.columns
rewritten with the transcripts, error rates, onsets and ``content_mismatch`` flags, and summary.json (and .csv)
recomputed from them with the run's own wall time and concurrency, objectives judged again: ``cvload report`` and
``cvload compare`` read the checked run like any other. A sweep folder is checked level by level.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvload.errors import UsageError
from cvload.listen.content import DEFAULT_MAX_ERROR, language_of
from cvload.listen.live import CHECKED
from cvload.measure.metrics import Tally, record_json
from cvload.results import columns_file
from cvload.results.records import FLAG_CONTENT_MISMATCH, RequestRecord
from cvload.results.writer import read_json, read_records, write_json, write_summary_csv


def audio_files(folder: Path) -> dict[int, Path]:
    """Saved responses by request index (``audio/000123_item.wav``); a sweep's level: its sweep's audio folder."""
    out: dict[int, Path] = {}
    audio = folder / "audio" if (folder / "audio").is_dir() or not (folder.parent / "sweep.json").is_file() \
        else folder.parent / "audio"
    for path in sorted(audio.glob("*.wav")):
        head = path.name.split("_", 1)[0]
        if head.isdigit():
            out[int(head)] = path
    return out


def run_folders(folder: Path) -> list[Path]:
    """The run folders under ``folder``: itself, or a sweep's levels."""
    if (folder / "records.jsonl").is_file() and not (folder / "sweep.json").is_file():
        return [folder]
    levels = sorted(p.parent for p in folder.glob("*/records.jsonl"))
    if not levels:
        raise UsageError(f"{folder} is not a cvload results folder (no records.jsonl)",
                         hint="pass the folder `cvload run --save-audio` (or a sweep) wrote")
    return levels


def _job(spec: str, path: str, text: str, language: str, onset: bool) -> tuple[str, float, float, float | None]:
    """In a helper process: transcript, error rate, CPU seconds and (when asked) where speech starts."""
    import soundfile

    from cvload.listen.live import transcribe_job
    from cvload.listen.vad import speech_start

    audio, rate = soundfile.read(path, dtype="float32", always_2d=False)
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    started = time.process_time()
    start = speech_start(audio, rate) if onset else None
    heard, error, _ = transcribe_job(spec, [audio], rate, text, language, 1.0)
    return heard, error, time.process_time() - started, start  # the VAD's and the recogniser's CPU, once


async def _transcribe_all(spec: str, jobs: list[tuple[RequestRecord, Path, str]], workers: int, onset: bool,
                          progress: Callable[[int, int], None]) -> list[tuple[str, float, float, float | None]]:
    from cvload.measure.audio_checks import Decoders

    pool = Decoders(workers)
    loop = asyncio.get_running_loop()
    done = 0

    def tick(_: Any) -> None:
        nonlocal done
        done += 1
        progress(done, len(jobs))

    try:
        futures = []
        for record, path, language in jobs:
            future = pool.submit(loop, _job, spec, str(path), record.text, language, onset)
            future.add_done_callback(tick)
            futures.append(future)
        return list(await asyncio.gather(*futures))
    finally:
        pool.close()


def check_folder(folder: Path, spec: str, *, max_error: float = DEFAULT_MAX_ERROR, workers: int | None = None,
                 language: str | None = None, progress: Callable[[int, int], None] = lambda n, total: None,
                 ) -> dict[str, Any]:
    """Check one run folder; returns the summary's ``content`` section."""
    from cvload.listen.asr import make_recognizer

    recognizer = make_recognizer(spec)
    records = read_records(folder)
    files = audio_files(folder)
    if not files:
        raise UsageError(f"{folder}: no saved audio to check (audio/*.wav)",
                         hint="run with --save-audio, then `cvload check` that folder")
    recognizer.check()
    jobs, unsupported = [], 0
    for record in records:
        path = files.get(record.index)
        if path is None or record.error_kind is not None:
            continue
        lang = language or record.language or language_of(record.text)
        if lang not in recognizer.languages:
            unsupported += 1
            continue
        jobs.append((record, path, lang))
    if not jobs and unsupported:
        raise UsageError(f"{folder}: --asr {spec} transcribes {', '.join(recognizer.languages)}, and every saved "
                         "response is in another language", hint="use a recogniser for it: paraformer:DIR, "
                         "sensevoice:DIR, whisper or openai:URL")
    onset = any(r.speech_start_s is None for r, _, _ in jobs)
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: at least one recogniser process", hint="e.g. --workers 4")
    count = workers or os.cpu_count() or 1
    started = time.monotonic()
    results = asyncio.run(_transcribe_all(spec, jobs, count, onset, progress))
    wall = time.monotonic() - started
    lines, mismatches, audio_s, cpu_s = [], 0, 0.0, 0.0
    for (record, _, lang), (heard, error, cpu, start) in zip(jobs, results):
        record.transcript, record.content_error = heard, round(error, 6)
        record.content_check = CHECKED
        if record.speech_start_s is None:
            record.speech_start_s = start
        mismatch = error > max_error
        mismatches += mismatch
        if mismatch and FLAG_CONTENT_MISMATCH not in record.flags:
            record.flags.append(FLAG_CONTENT_MISMATCH)
        elif not mismatch and FLAG_CONTENT_MISMATCH in record.flags:
            record.flags.remove(FLAG_CONTENT_MISMATCH)
        audio_s += record.audio_s
        cpu_s += cpu
        lines.append({"index": record.index, "item_id": record.item_id, "language": lang, "text": record.text,
                      "transcript": heard, "content_error_rate": round(error, 6), "mismatch": bool(mismatch)})
    _write_jsonl(folder / "content.jsonl", lines)
    _rewrite_records(folder, records)
    section = {"asr": spec, "sampling": "saved audio, after the run", "max_error": max_error, "workers": count,
               "checked": len(lines), "skipped": len(records) - len(lines), "unsupported_language": unsupported,
               "failed": 0, "mismatches": mismatches, "backlog": 0, "backlog_audio_s": 0.0,
               "audio_s_per_cpu_s": round(audio_s / cpu_s, 3) if cpu_s > 0 else None,
               "wall_s": round(wall, 3), "last_error": None}
    _update_summary(folder, records, section)
    return section


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _rewrite_records(folder: Path, records: list[RequestRecord]) -> None:
    """records.jsonl and records.columns with the checked values (each replaced whole, never half written)."""
    lines = [(json.dumps(record_json(r), ensure_ascii=False) + "\n").encode() for r in records]
    jsonl, columns = folder / "records.jsonl", folder / columns_file.NAME
    tmp_lines, tmp_columns = jsonl.with_suffix(".jsonl.tmp"), columns.with_suffix(".columns.tmp")
    end = 0
    with open(tmp_lines, "wb") as lf, open(tmp_columns, "wb") as cf:
        for record, line in zip(records, lines):
            lf.write(line)
            end += len(line)
            cf.write(columns_file.row(record_json(record), end))
    with contextlib.suppress(OSError):
        columns.unlink()  # a reader never pairs new lines with old rows: without the file it parses the lines
    tmp_lines.replace(jsonl)
    tmp_columns.replace(columns)


def _update_summary(folder: Path, records: list[RequestRecord], section: dict[str, Any]) -> None:
    from cvload.measure.slo import all_met, evaluate, parse_objectives, request_check

    summary = read_json(folder / "summary.json")
    if summary is None:
        return  # a run cut short before its summary: the records carry the results
    config = (read_json(folder / "config.json") or {}).get("config", {})
    objectives = parse_objectives(config.get("slo") or [])
    tally = Tally.of(records, request_check(objectives))
    summary.update(tally.summary(wall_s=float(summary.get("wall_s") or 0.0),
                                 concurrency=summary.get("concurrency") or {}))
    summary["content"] = section
    if "slo" in summary:
        verdicts = evaluate(objectives, summary)
        summary["slo"], summary["slo_passed"] = verdicts, all_met(verdicts)
    write_json(folder / "summary.json", summary)
    write_summary_csv(folder / "summary.csv", summary)


def throughput(section: dict[str, Any]) -> str:
    rate = section.get("audio_s_per_cpu_s")
    return f"{rate:.2f} audio s per CPU s" if rate else "no audio checked"



