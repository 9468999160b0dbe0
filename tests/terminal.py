"""`cvload tui` in a real terminal: tmux runs the command a user types, the test reads the screen, presses q and
reads the exit status. Shared by the tests that drive the dashboard as a user does."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SIZE = ("160", "48")


class Terminal:
    """One tmux server of its own running ``cvload ARGS``; the exit status lands in a file when cvload ends."""

    def __init__(self, tmp_path: Path, args: str) -> None:
        venv_bin = Path(sys.executable).parent
        self.status = tmp_path / "exit_code"
        # A tmux server of this test run's own: another run of the same test on this machine (its tmp_path has
        # the same name) would otherwise share it, its window size and its session.
        self.tmux = ["tmux", "-L", f"cvload-test-{os.getpid()}-{tmp_path.name}"]
        self.cmd = (f"PATH={shlex.quote(str(venv_bin))}:$PATH {shlex.quote(str(venv_bin / 'cvload'))} {args}; "
                    f"echo $? > {shlex.quote(str(self.status))}")
        self.cwd = tmp_path

    def __enter__(self) -> Terminal:
        subprocess.run([*self.tmux, "new-session", "-d", "-s", "tui", "-x", SIZE[0], "-y", SIZE[1], self.cmd],
                       check=True, cwd=self.cwd)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)

    def capture(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", "tui"], capture_output=True, text=True).stdout

    def wait_for(self, shown: Callable[[str], bool], what: str, timeout: float = 60.0) -> str:
        """The screen once ``shown`` holds for it (the test fails after ``timeout`` seconds, showing the screen)."""
        screen, deadline = "", time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.capture()
            if shown(screen):
                return screen
            time.sleep(0.05)
        pytest.fail(f"{what} did not show:\n{screen}")

    def quit(self, timeout: float = 60.0) -> str:
        """Press q and wait for cvload to end; its exit status."""
        subprocess.run([*self.tmux, "send-keys", "-t", "tui", "q"], check=True)
        deadline = time.monotonic() + timeout
        while not self.status.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.status.exists(), f"cvload tui did not exit after q:\n{self.capture()}"
        return self.status.read_text().strip()
