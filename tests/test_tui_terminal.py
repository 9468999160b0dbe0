"""The dashboard in a real terminal: tmux runs the exact command a user types first, we read the screen,
press q, and find the results folder."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

TITLES = ("First chunk", "Second chunk", "RTF", "Throughput", "GPU", "Errors", "Recent requests")
RUN_ROW = re.compile(r"run\s+\d+\.\d\s+\d+\.\d")  # the run row of a latency panel with numbers in it


def test_dashboard_in_tmux(tmp_path):
    venv_bin = Path(sys.executable).parent
    out = tmp_path / "results"
    status = tmp_path / "exit_code"
    cmd = (f"PATH={shlex.quote(str(venv_bin))}:$PATH {shlex.quote(str(venv_bin / 'cvload'))} tui --emulator "
           f"--mode streaming --num-tasks 8 --out {shlex.quote(str(out))}; "
           f"echo $? > {shlex.quote(str(status))}")
    sock = f"cvload-test-{tmp_path.name}"
    tmux = ["tmux", "-L", sock]
    subprocess.run([*tmux, "new-session", "-d", "-s", "tui", "-x", "160", "-y", "48", cmd], check=True,
                   cwd=tmp_path)
    screen = ""

    def capture() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "tui"], capture_output=True, text=True).stdout

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screen = capture()
            if all(t in screen for t in TITLES) and RUN_ROW.search(screen) and "RUNNING" in screen \
                    and "(or q)" in screen:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the dashboard did not show its panels and live numbers:\n{screen}")
        subprocess.run([*tmux, "send-keys", "-t", "tui", "q"], check=True)
        deadline = time.monotonic() + 60
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status.exists(), f"cvload tui did not exit after q:\n{capture()}"
        assert status.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["requests"]["ok"] > 0
    assert (out / "records.jsonl").exists() and (out / "config.json").exists()
