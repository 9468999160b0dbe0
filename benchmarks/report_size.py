"""`cvload report` on a large run: how long it takes and how big the HTML gets.

Synthesises a results folder of ``--records`` requests (default 100,000) in the real format, written through
cvload's own ResultsWriter (records.jsonl via record_json with its records.columns twin, summary.json and
summary.csv as a run folds them, and the objectives' evaluate), with telemetry.jsonl holding GPU utilization once a
second and a server_stats.json of a three-model pipeline. The run is 8 streams, with a slow patch, timeouts and
playback stalls, so every figure has something to draw. Then runs ``cvload report`` on it, and ``cvload compare``
of the run against itself, each in a fresh process (imports included, as a user would), and prints their times
and the size of the HTML and Markdown files; ``--reference`` times both again with records.columns set aside
(parsing records.jsonl) and prints the ratios.

Exit status 1 when the report takes ``--max-s`` seconds or more (default 10) or the HTML is ``--max-mb`` MB or
more (default 5).

    .venv/bin/python -m benchmarks.report_size --records 100000
    .venv/bin/python -m benchmarks.report_size --records 2000000 --reference --max-s 60
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cvload.measure.metrics import Tally
from cvload.measure.slo import all_met, evaluate, parse_objectives
from cvload.results import columns_file
from cvload.results.records import ERR_TIMEOUT, RequestRecord
from cvload.results.writer import SUMMARY_SCHEMA, ResultsWriter, write_json

RATE = 24000
OBJECTIVES = ["first_chunk.p95<400ms", "second_chunk.p99<300ms", "error_rate<1%"]


def synthesize(folder: Path, n: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    streams = 8
    run_start = 1000.0
    writer = ResultsWriter(folder)
    tally = Tally()  # the summary as a run folds it: no record kept, so millions fit
    clock = np.zeros(streams)
    for index in range(n):
        worker = index % streams
        sent = run_start + clock[worker]
        slow = 1.0 + 1.5 * (0.45 < clock[worker] / (n / streams * 0.9) < 0.55)  # a slow patch mid-run
        first = rng.lognormal(np.log(0.2 * slow), 0.25)
        n_chunks = int(rng.integers(3, 8))
        gaps = rng.lognormal(np.log(0.09 * slow), 0.3, n_chunks - 1)
        if rng.random() < 0.01 * slow:  # the second chunk later than the first one's 1 s of audio: a stall
            gaps[0] += 1.2
        offsets = list(np.cumsum([first, *gaps]))
        samples = [RATE] + [2 * RATE] * (n_chunks - 2) + [int(rng.integers(2000, RATE))]
        record = RequestRecord(index=index, request_id=f"bench-{index}", item_id=f"utt{index % 26:02d}",
                               worker=worker, server="127.0.0.1:8001", text="synthetic", sent=sent,
                               chunk_offsets=offsets, chunk_samples=samples, end_offset=offsets[-1] + 0.001,
                               sample_rate=RATE, run_start=run_start)
        if rng.random() < 0.002:
            record.error_kind, record.error = ERR_TIMEOUT, "request timed out"
        tally.add(record)
        writer.on_record(record)
        clock[worker] += record.end_offset or 0.0
    wall = tally.wall_time()
    summary = {"schema": SUMMARY_SCHEMA, "cvload_version": "bench",
               "target": {"servers": ["127.0.0.1:8001"], "protocol": "grpc", "mode": "streaming",
                          "model": "cosyvoice2"},
               "load": {"kind": "closed", "num_tasks": streams}, "status": "completed", "abort_reason": None}
    summary.update(tally.summary(wall_s=wall, concurrency={"requested": float(streams)}))
    summary["slo"] = evaluate(parse_objectives(OBJECTIVES), summary)
    summary["slo_passed"] = all_met(summary["slo"])
    writer.write_json("config.json", {"config": {"num_tasks": streams, "mode": "streaming", "protocol": "grpc",
                                                 "slo": OBJECTIVES}, "versions": {"cvload": "bench"}})
    writer.write_summary(summary)
    writer.close()
    with open(folder / "telemetry.jsonl", "w", encoding="utf-8") as fh:
        for t in np.arange(0.0, wall + 1.0, 1.0):
            util = float(np.clip(0.7 + 0.2 * np.sin(t / 300.0) + rng.normal(0, 0.05), 0, 1))
            fh.write(json.dumps({"t": run_start + t, "wall": 1.8e9 + t, "measured": True,
                                 "gpu": {"util": util}, "status": {"gpu": "ok"}}) + "\n")
    write_json(folder / "server_stats.json", {"models": [
        {"model": m, "count": n, "queue_ms": q, "compute_input_ms": 0.1, "compute_infer_ms": c,
         "compute_output_ms": 0.05} for m, q, c in (("cosyvoice2", 0.2, 3.5), ("tensorrt_llm", 4.0, 120.0),
                                                     ("token2wav", 2.0, 35.0))]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--max-s", type=float, default=10.0)
    parser.add_argument("--max-mb", type=float, default=5.0)
    parser.add_argument("--keep", metavar="DIR", help="write the results folder and report here and keep them")
    parser.add_argument("--reference", action="store_true",
                        help="also time both commands parsing records.jsonl (records.columns set aside): the ratio")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cvload-report-bench-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        folder = root / "run"
        t0 = time.perf_counter()
        synthesize(folder, args.records)
        made = time.perf_counter() - t0
        jsonl_mb = (folder / "records.jsonl").stat().st_size / 1e6
        print(f"results folder: {args.records:,} records, records.jsonl {jsonl_mb:.1f} MB (made in {made:.1f} s)")
        out = root / "report.html"
        took, cpu = timed([sys.executable, "-m", "cvload", "report", str(folder), "-o", str(out)])
        html_mb = out.stat().st_size / 1e6
        md_kb = out.with_suffix(".md").stat().st_size / 1e3
        print(f"cvload report: {took:.2f} s wall, {cpu:.2f} s CPU (fresh process, imports included; the wall time "
              f"grows on a busy machine, the CPU time much less); report.html {html_mb:.2f} MB, report.md "
              f"{md_kb:.1f} KB")
        compare_s, compare_cpu = timed([sys.executable, "-m", "cvload", "compare", str(folder), str(folder)],
                                       codes=(0, 1, 3))
        print(f"cvload compare (the run against itself): {compare_s:.2f} s wall, {compare_cpu:.2f} s CPU")
        ok = took < args.max_s and html_mb < args.max_mb
        if args.reference:  # the same two commands parsing records.jsonl, as before records.columns existed
            columns = folder / columns_file.NAME
            columns.rename(folder / "aside")
            ref, ref_cpu = timed([sys.executable, "-m", "cvload", "report", str(folder), "-o", str(root / "r.html")])
            cref, cref_cpu = timed([sys.executable, "-m", "cvload", "compare", str(folder), str(folder)],
                                   codes=(0, 1, 3))
            (folder / "aside").rename(columns)
            print(f"reference, parsing records.jsonl: report {ref:.2f} s wall ({ref_cpu:.2f} s CPU), compare "
                  f"{cref:.2f} s wall ({cref_cpu:.2f} s CPU); with records.columns: report x{took / ref:.2f}, "
                  f"compare x{compare_s / cref:.2f} of the reference's wall time")
        print("within limits" if ok else f"OVER LIMITS (under {args.max_s:g} s and {args.max_mb:g} MB wanted)")
        return 0 if ok else 1


def timed(cmd: list[str], codes: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """Wall and CPU seconds of one command in a fresh process (its exit status must be one of ``codes``)."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    code = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
    took = time.perf_counter() - t0
    if code not in codes:
        raise SystemExit(f"{' '.join(cmd[2:4])} exited {code}")
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return took, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)


if __name__ == "__main__":
    sys.exit(main())
