"""What listening costs: the timing it must not touch, the recognisers' speed, and `cvload check` of a saved run.

1. **Timing untouched.** At ``--streams`` (16) against one speaking emulator (``fixed`` profile: the first chunk
   leaves the model 200 ms after the request arrives), runs with and without ``--check-content 100%`` alternate
   (``--rounds`` of each, ``--seconds`` each; ``--onset`` alone as a third side: the VAD's share; ``--check SAMPLE``,
   repeatable, replaces ``100%`` with the samples given, e.g. ``--check 100% --check 2s/s``); printed: first-chunk p50/p99 of each run, the median of each side
   and their differences (the issue's bar: under 0.5 ms at p50 and 2 ms at p99), the measuring loop's lag p50/p99
   per side (beside a bare loop's p99: the host's share), the first chunk's p99 split into the server's part
   (arrival to first send, the emulator's trace) and the client's (that send to cvload's stamp), and how many
   requests the live checker transcribed (the rest went past its bounded backlog, as they would under real load).
2. **Recognisers.** Each backend installed here transcribes the same hibari-spoken English sentences: audio
   seconds per CPU second of the process doing it (``openai`` through ``cvload asr-serve`` on this host: the
   client's own CPU, and the server's), and the word error rate it scored (it should be ~0: the text is known).
3. **`cvload check`** of ``--check-requests`` (1000) saved requests of a run with ``--jobs`` recogniser processes
   (default: every CPU): wall time, requests and audio seconds per wall second, audio seconds per CPU second over
   its helper processes, and the spread of the word error rates.

    .venv/bin/python -m benchmarks.listening_overhead [--rounds 3 --seconds 10 --streams 16 --check-requests 1000]
        [--jobs N] [--asr moonshine|whisper:tiny.en] [--only timing|recognisers|check] [--check SAMPLE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cvload.emulator import EmulatedModel, build_repository, get_profile
from cvload.results.writer import read_records
from cvload.triton.launcher import TritonServer, free_port

SENTENCES = ("The morning train was late again, so we shared a coffee on the platform and watched the rain.",
             "Please remember to water the plants on the balcony while I am away for the long weekend.",
             "If the weather stays clear tonight, we may see the planets low in the western sky.",
             "Hello there, how are you?")


QUIET = ("--quiet", "--metrics-url", "none", "--gpu-source", "none")  # the bare server has no metrics endpoint


def cvload(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cvload", *args], check=False, stdout=subprocess.DEVNULL)


def summary_of(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def split_first_chunk(out: Path, trace: Path) -> tuple[float, float]:
    """p99 of the server's part of the first chunk (request arrival to its first send, from the emulator's trace)
    and of the client's part (that send to cvload's stamp: transport plus the measuring process's delay), ms."""
    sends = {e["id"]: e for e in map(json.loads, trace.read_text().splitlines())} if trace.exists() else {}
    server, client = [], []
    for r in read_records(out):
        entry = sends.get(r.request_id)
        if r.warmup or entry is None or not entry["sends"] or not r.chunk_offsets:
            continue
        server.append(entry["sends"][0] * 1000)
        client.append((r.sent + r.chunk_offsets[0] - entry["arrival"] - entry["sends"][0]) * 1000)
    return (float(np.percentile(server, 99)) if server else 0.0, float(np.percentile(client, 99)) if client else 0.0)


def timing(server: TritonServer, work: Path, rounds: int, seconds: float, streams: int,
           checks: tuple[str, ...] = ("100%",)) -> None:
    print(f"\n1. first chunk at {streams} streams, {rounds} rounds of {seconds:g} s, alternating "
          "(loop lag: the measuring process's event loop, cvload.measure.loop_health; bare: a bare loop beside it)")
    flags: dict[str, list[str]] = {"plain": [], "onset": ["--onset"],
                                   **{f"check-content {spec}": ["--check-content", spec] for spec in checks}}
    sides: dict[str, list[tuple[float, ...]]] = {side: [] for side in flags}
    english = _english(work)  # the recogniser's language: 100% means every request
    for n in range(rounds):
        for side in sides:
            out = work / f"timing-{n}-{side.replace(' ', '-').replace('/', '-per-').replace('%', 'pct')}"
            extra = flags[side]
            cvload("run", *QUIET, "--server", server.grpc_url, "--num-tasks", str(streams), "--duration",
                   f"{seconds}s", "--warmup", str(streams), "--inputs", str(english), "--out", str(out), *extra)
            s = summary_of(out)
            first = s["metrics"]["first_chunk_latency_ms"]
            client = s.get("client") or {}
            lag = client.get("loop_lag_ms") or {}
            bare = client.get("bare_loop_lag_ms") or {}
            row = (first["p50"], first["p99"], lag.get("p50") or 0.0, lag.get("p99") or 0.0, bare.get("p99") or 0.0,
                   *split_first_chunk(out, work / "emulator" / "cosyvoice2.trace.jsonl"))
            sides[side].append(row)
            content = s.get("content")
            checked = "" if content is None else f"  checked {content['checked']}, skipped {content['skipped']}" + (
                " (" + ", ".join(f"{k} {v}" for k, v in content.get("skipped_because", {}).items()) + ")"
                if content["skipped"] else "")
            print(f"   round {n + 1} {side:20} p50 {row[0]:8.2f} ms  p99 {row[1]:8.2f} ms  loop lag p50/p99 "
                  f"{row[2]:.3f}/{row[3]:.3f} ms (bare p99 {row[4]:.3f}); p99 server part {row[5]:.2f}, client part "
                  f"{row[6]:.2f} ms  ({s['requests']['total']} requests)"
                  f"{checked}")
    medians = {side: tuple(statistics.median(r[k] for r in v) for k in range(7)) for side, v in sides.items()}
    base = medians["plain"]
    plain_p99 = [r[1] for r in sides["plain"]]
    print(f"   plain runs' own p99 spread (max - min over rounds): {max(plain_p99) - min(plain_p99):.2f} ms: "
          "a difference below it is within noise")
    for side, m in medians.items():
        print(f"   median {side:20} p50 {m[0]:8.2f} p99 {m[1]:8.2f}  loop lag p50/p99 {m[2]:.3f}/{m[3]:.3f} "
              f"(bare p99 {m[4]:.3f})   against plain: p50 {m[0] - base[0]:+.2f} ms, p99 {m[1] - base[1]:+.2f} ms, "
              f"loop lag p99 {m[3] - base[3]:+.3f} ms, bare loop p99 {m[4] - base[4]:+.3f} ms, server part p99 "
              f"{m[5] - base[5]:+.2f} ms, client part p99 {m[6] - base[6]:+.2f} ms"
              + ("" if side == "plain" else "   (bar for checks: 0.5 / 2 ms)"))


def recognisers(work: Path) -> None:
    import importlib.util

    import hibari

    from cvload.listen.asr import make_recognizer
    from cvload.listen.content import error_rate

    voice = hibari.Hibari()
    clips = [(text, np.asarray(voice(text), np.float32)) for text in SENTENCES]
    audio_s = sum(len(a) for _, a in clips) / 24000
    print(f"\n2. recognisers on {len(clips)} hibari sentences ({audio_s:.1f} s of audio)")
    specs = ["moonshine"]
    from cvload.listen.asr.whisper import bundled_model

    if not importlib.util.find_spec("faster_whisper"):
        specs.append("whisper (not installed: pip install 'cvload[whisper]')")
    else:
        specs.append("whisper:tiny.en" if bundled_model("tiny.en") else "whisper (no model without a download)")
    specs.append("sherpa-onnx paraformer/sensevoice (not installed)" if not importlib.util.find_spec("sherpa_onnx")
                 else "paraformer (needs a model folder: not measured)")
    for spec in specs:
        if "(" in spec:
            print(f"   {spec}")
            continue
        recognizer = make_recognizer(spec)
        recognizer.transcribe(clips[0][1], 24000, "en")  # load
        started = time.process_time()
        errors = [error_rate(text, recognizer.transcribe(audio, 24000, "en"), "en") for text, audio in clips]
        cpu = time.process_time() - started
        print(f"   {spec:12} {audio_s / cpu:6.2f} audio s per CPU s   mean WER {np.mean(errors):.3f}")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cvload", "asr-serve", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        client = make_recognizer(f"openai:http://127.0.0.1:{port}")
        client.transcribe(clips[0][1], 24000, "en")
        server_cpu0 = _cpu_of(server.pid)
        started = time.process_time()
        errors = [error_rate(text, client.transcribe(audio, 24000, "en"), "en") for text, audio in clips]
        cpu = time.process_time() - started
        server_cpu = _cpu_of(server.pid) - server_cpu0
        print(f"   openai       {audio_s / cpu:6.1f} audio s per CPU s of the client "
              f"({audio_s / server_cpu:.2f} per CPU s of the asr-serve server on this host)   "
              f"mean WER {np.mean(errors):.3f}")
    finally:
        server.terminate()
        server.wait(timeout=10)


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check(server: TritonServer, work: Path, requests: int, jobs: int, asr: str) -> None:
    """A run saves ``requests`` responses, then ``cvload check --workers JOBS`` scores them: its wall time, the
    requests and audio seconds it got through per second, audio seconds per CPU second of its recognisers, and
    the spread of the word error rates (a correct server: ~0, the recogniser's own misses)."""
    out = work / "saved"
    print(f"\n3. cvload check of {requests} saved requests, --asr {asr}, --workers {jobs} ({os.cpu_count()} CPUs)",
          flush=True)
    started = time.monotonic()
    cvload("run", *QUIET, "--server", server.grpc_url, "--model", "instant", "--num-tasks", "8", "--requests",
           str(requests), "--save-audio", "--inputs", str(_english(work)), "--out", str(out))
    s = summary_of(out)
    audio = s["audio_s_total"]
    print(f"   saved {s['requests']['total']} responses ({audio:.0f} s of audio) in {time.monotonic() - started:.1f} s",
          flush=True)
    started = time.monotonic()
    cpu = _tree_cpu([sys.executable, "-m", "cvload", "check", str(out), "--asr", asr, "--workers", str(jobs)])
    wall = time.monotonic() - started
    content = summary_of(out)["content"]
    rates = np.array([json.loads(line)["content_error_rate"]
                      for line in (out / "content.jsonl").read_text().splitlines()], dtype=float)
    print(f"   checked {content['checked']} in {wall:.1f} s wall: {content['checked'] / wall:.2f} requests/s, "
          f"{audio / wall:.2f} audio s per wall s, {audio / cpu:.2f} audio s per CPU s "
          f"(recognisers alone: {content['audio_s_per_cpu_s']}), {content['mismatches']} content_mismatch")
    if rates.size:
        print(f"   WER over {rates.size}: mean {rates.mean():.3f}, p50 {np.percentile(rates, 50):.3f}, "
              f"p95 {np.percentile(rates, 95):.3f}, p99 {np.percentile(rates, 99):.3f}, max {rates.max():.3f}; "
              f"{int((rates == 0).sum())} exact", flush=True)


def _tree_cpu(command: list[str]) -> float:
    """Run ``command``; the CPU seconds of it and of every process under it, sampled every 0.2 s until each one
    ends (getrusage misses a helper its parent did not wait for; this misses at most each one's last 0.2 s)."""
    import psutil

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    root, seen = psutil.Process(proc.pid), {}
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    seen[p.pid] = times.user + times.system
        time.sleep(0.2)
    return sum(seen.values())


def _english(work: Path) -> Path:
    path = work / "en.jsonl"
    path.write_text("".join(json.dumps({"id": f"en{i}", "target_text": t}) + "\n" for i, t in enumerate(SENTENCES)))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--check-requests", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="recogniser processes of `cvload check` (its --workers; default: every CPU)")
    parser.add_argument("--asr", default="moonshine", help="the recogniser `cvload check` uses (default moonshine)")
    parser.add_argument("--only", choices=("timing", "recognisers", "check"), action="append")
    parser.add_argument("--check", action="append", metavar="SAMPLE",
                        help="timing: a side per --check-content SAMPLE (default 100%%; e.g. --check 100%% --check 2s/s)")
    args = parser.parse_args()
    only = set(args.only or ("timing", "recognisers", "check"))
    with tempfile.TemporaryDirectory(prefix="cvload-listen-") as tmp:
        work = Path(tmp)
        models = [EmulatedModel(name="cosyvoice2", profile=get_profile("fixed"), mode="streaming"),
                  EmulatedModel(name="instant", profile=get_profile("instant"), mode="streaming")]
        repo = build_repository(work / "emulator", models, texts=SENTENCES)
        with TritonServer(repo, workdir=work / "server", die_with_parent=True) as server:
            if "timing" in only:
                timing(server, work, args.rounds, args.seconds, args.streams, tuple(args.check or ("100%",)))
            if "recognisers" in only:
                recognisers(work)
            if "check" in only:
                check(server, work, args.check_requests, args.jobs, args.asr)


if __name__ == "__main__":
    main()
