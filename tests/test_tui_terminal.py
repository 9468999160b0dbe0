"""The dashboard in a real terminal: tmux runs the exact command a user types first, we read the screen,
press q, and find the results folder."""

from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest
from terminal import Terminal

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

TITLES = ("First chunk", "Second chunk", "RTF", "Throughput", "GPU", "Errors", "Recent requests")
RUN_ROW = re.compile(r"run\s+\d+\.\d\s+\d+\.\d")  # the run row of a latency panel with numbers in it


def test_dashboard_in_tmux(tmp_path):
    out = tmp_path / "results"
    with Terminal(tmp_path, f"tui --emulator --mode streaming --num-tasks 8 --out {shlex.quote(str(out))}") as term:
        term.wait_for(lambda screen: all(t in screen for t in TITLES) and RUN_ROW.search(screen) is not None
                      and "RUNNING" in screen and "(or q)" in screen, "the dashboard's panels and live numbers")
        assert term.quit() == "0"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["requests"]["ok"] > 0
    assert (out / "records.jsonl").exists() and (out / "config.json").exists()
