"""The dashboard's side of its measuring process (``cvload.tui.measuring``): start it, send it messages, hand
what it says to a callback, keep its stderr for after the dashboard closes, wait for it, end it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable

from cvload import subprocesses
from cvload.tui.messages import Message, from_line

YIELD_NICE = 10


class MeasuringProcess:
    """One measuring process; ``on_message`` runs on a reader thread, ``on_exit`` after its output ended."""

    def __init__(self, on_message: Callable[[Message], None], on_exit: Callable[[int], None]) -> None:
        self.on_message = on_message
        self.on_exit = on_exit
        self.stderr: deque[str] = deque(maxlen=200)
        self.proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, first: Message, *, yield_cpu: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cvload.tui.measuring"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", bufsize=1,
            start_new_session=True,  # the terminal's Ctrl-C is the dashboard's to handle (it quits gracefully)
        )
        self.send(first)
        if yield_cpu:
            # Where the machine is short of CPU (a local server, a small box), drawing must lose to measuring:
            # this thread (the dashboard's, and threads it starts later) runs at a lower priority than the
            # measuring process started above and the server it starts.
            with contextlib.suppress(OSError, AttributeError):
                os.nice(YIELD_NICE)
        for target in (self._read_messages, self._read_stderr):
            thread = threading.Thread(target=target, daemon=True, name="cvload-tui-reader")
            thread.start()
            self._readers.append(thread)

    def send(self, message: Message) -> bool:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return False
        try:
            with self._lock:
                proc.stdin.write(message.to_line())
                proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def close_input(self) -> None:
        """The dashboard is gone, as the process sees it: it interrupts the run and writes the results."""
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def _read_messages(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            try:
                message = from_line(line)
            except ValueError:
                continue
            self.on_message(message)
        proc.wait()
        self.on_exit(proc.returncode)

    def _read_stderr(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stderr is not None
        for line in proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def join_readers(self, timeout: float = 5.0) -> None:
        for thread in self._readers:
            thread.join(timeout=timeout)

    def terminate(self, grace: float = 5.0) -> None:
        """The measuring process did not end after a stop: SIGTERM (it writes its summary), then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            subprocesses.end(self.proc, grace=grace)
