"""The lifecycle the emulated servers share as child processes: a work folder with the log, a child that imports
this very cvload, a wait until it listens that fails fast (quoting the log) if it exits, and a stop that keeps the
folder of a failure for its log. ``OpenAIServer`` and ``RuntimeServer`` build on it; ``TritonServer`` has its own
(shared memory, the Python backend's folders) on the same ``cvload.subprocesses`` pieces.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cvload import subprocesses
from cvload.errors import ServerError

S = TypeVar("S", bound="ChildServer")


@dataclass
class ChildServer:
    """Base of an emulated server run as a child process; a context manager.

    ``workdir`` holds the log (a temporary folder if none, removed after a clean stop).
    """

    # Keyword-only, so they follow a subclass's own arguments (its first stays its first positional one).
    workdir: Path | None = field(default=None, kw_only=True)
    ready_timeout: float = field(default=30.0, kw_only=True)
    stop_timeout: float = field(default=5.0, kw_only=True)
    #: SIGTERM the server when the process that started it dies (Linux, when started from the main thread).
    die_with_parent: bool = field(default=False, kw_only=True)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    log_path: Path | None = field(default=None, init=False)
    #: None while running (or never started); True after a clean stop, False after any failure.
    clean_exit: bool | None = field(default=None, init=False)
    _own_workdir: bool = field(default=False, init=False)

    def _prepare_workdir(self, prefix: str, log_name: str) -> None:
        """A temporary work folder unless one was given (then it is the caller's to keep); the log goes there."""
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / log_name

    @staticmethod
    def child_env() -> dict[str, str]:
        """This environment, with PYTHONPATH led by the folder this cvload lives in: the child imports this very
        cvload, wherever it came from (a checkout on PYTHONPATH included)."""
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    def _launch(self, cmd: list[str], env: dict[str, str], listening: Callable[[], bool], name: str) -> None:
        """Start ``cmd`` and wait until ``listening()``; on an exit, a timeout or Ctrl-C, stop it and re-raise."""
        assert self.log_path is not None
        self.process = proc = subprocesses.spawn(cmd, self.log_path, env=env, die_with_parent=self.die_with_parent)
        log_path = self.log_path

        def up() -> bool:
            code = proc.poll()
            if code is not None:
                raise ServerError(f"{name} exited with code {code} before it listened; log {log_path}:\n"
                                  f"{subprocesses.tail(log_path, 25)}")
            return listening()

        try:
            subprocesses.wait_until(up, self.ready_timeout, what=f"{name} to listen", max_delay=0.1)
        except BaseException:
            self.clean_exit = False
            self.stop()
            raise

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after ``stop_timeout`` (cvload.subprocesses.end); safe to call twice. A work
        folder of our own goes after a clean stop; a failure keeps it, for its log."""
        proc = self.process
        if proc is None:
            return
        self.process = None
        clean = self.clean_exit is None and proc.poll() is None
        ended = subprocesses.end(proc, grace=self.stop_timeout)
        self.clean_exit = clean and not ended.forced and proc.returncode in (0, -signal.SIGTERM)
        if self._own_workdir and self.clean_exit and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self: S) -> S:
        self.start()
        return self

    def start(self: S) -> S:
        raise NotImplementedError  # the subclass: ports, work folder, command, then ``_launch``

    def __exit__(self, *exc: object) -> None:
        self.stop()
