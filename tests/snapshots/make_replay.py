"""Regenerate ``replay_run/``: a small real results folder the dashboard's snapshot tests replay.

A short ``cvload run`` against the embedded Triton server (emulator ``demo`` profile with some errors and
playback stalls, so every panel has something to show), with its telemetry scraped from the server:

    .venv/bin/python tests/snapshots/make_replay.py
    .venv/bin/python -m pytest -q tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from cvload.cli import main
from cvload.emulator import EmulatedModel, build_repository, get_profile
from cvload.triton.launcher import TritonServer

HERE = Path(__file__).resolve().parent
OUT = HERE / "replay_run"
PROFILE = get_profile("demo", {"error_rate": 0.1, "stall_prob": 0.2, "stall_s": 1.5, "seed": 3})


def generate() -> int:
    root = Path(tempfile.mkdtemp(prefix="cvload-replay-"))
    repo = build_repository(root / "repo", [EmulatedModel(name="cosyvoice2", profile=PROFILE, mode="streaming")])
    tmp_out = root / "out"
    with TritonServer(repo, workdir=root / "server") as server:
        code = main(["run", "--quiet", "--server", server.grpc_url, "--num-tasks", "4", "--requests", "40",
                     "--seed", "3", "--metrics-url", server.metrics_url, "--telemetry-interval", "0.5",
                     "--slo", "first_chunk.p95<800ms", "--slo", "error_rate<5%", "--out", str(tmp_out)])
    if OUT.exists():
        shutil.rmtree(OUT)
    keep = ("config.json", "records.jsonl", "summary.json", "summary.csv", "telemetry.jsonl", "server_stats.json")
    OUT.mkdir()
    for name in keep:
        if (tmp_out / name).exists():
            shutil.copy(tmp_out / name, OUT / name)
    shutil.rmtree(root, ignore_errors=True)
    print(f"wrote {OUT} (cvload run exit code {code})")
    return 0


if __name__ == "__main__":
    sys.exit(generate())
