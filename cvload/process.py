"""Processes the bootstrap starts: long commands with a log file and progress, and servers it must find again.

Commands are argument lists, never shell strings, so a config value cannot inject a command. A long command's
full output goes to its stage log; the console gets one progress line every few seconds (elapsed time and the
size of what the command is writing) and, on failure, the command, its exit code and the end of the log.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from cvload.errors import CvloadError

# How to get a tool a command needs, by executable name (the error for a missing one says this).
TOOL_HINTS = {
    "git": "install git (apt-get install git)",
    "huggingface-cli": "pip install -U 'huggingface_hub[cli]'",
    "hf": "pip install -U 'huggingface_hub[cli]'",
    "modelscope": "pip install modelscope",
    "trtllm-build": "run inside nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3 (TensorRT-LLM is not on "
                    "PyPI for this machine) or use --docker",
    "docker": "install Docker Engine and the compose plugin (https://docs.docker.com/engine/install/)",
    "curl": "install curl (apt-get install curl)",
}


def show(cmd: Sequence[str]) -> str:
    """An argument list as a copy-pasteable shell line (display only; never executed through a shell)."""
    return shlex.join(str(c) for c in cmd)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def human_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def tree_size(path: Path) -> int:
    """Bytes under ``path`` (0 if absent); symlinks are not followed."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def run_logged(cmd: Sequence[str], log_path: Path, *, label: str, out: TextIO | None = None,
               watch: Sequence[Path] = (), cwd: Path | None = None, env: dict[str, str] | None = None,
               progress_every: float = 10.0, hint: str | None = None) -> float:
    """Run ``cmd`` with its output appended to ``log_path``; print progress; raise a CvloadError on failure.

    Returns the elapsed seconds. Ctrl-C stops the command's whole process group before re-raising.
    """
    out = out or sys.stdout
    cmd = [str(c) for c in cmd]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "ab") as log:
        log.write(f"\n$ {show(cmd)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                    env=env, start_new_session=True)
        except FileNotFoundError:
            tool = cmd[0]
            raise CvloadError(f"{label}: `{tool}` not found (needed for: {show(cmd)})",
                              hint=TOOL_HINTS.get(Path(tool).name, hint or f"install {tool} or put it on PATH")
                              ) from None
        try:
            while True:
                try:
                    code = proc.wait(timeout=progress_every)
                    break
                except subprocess.TimeoutExpired:
                    print(f"    {label}: {human_duration(time.monotonic() - start)} elapsed"
                          + _sizes(watch) + f", log {human_size(tree_size(log_path))}", file=out, flush=True)
        except BaseException:
            _kill_group(proc)
            raise
    elapsed = time.monotonic() - start
    if code != 0:
        raise CvloadError(f"{label}: `{show(cmd)}` exited with code {code} after {human_duration(elapsed)}; "
                          f"full log {log_path}; last lines:\n{tail(log_path)}", hint=hint)
    return elapsed


def _sizes(paths: Sequence[Path]) -> str:
    return "".join(f", {p.name} {human_size(tree_size(p))}" for p in paths)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (log is empty)"


# ---- processes of earlier invocations ------------------------------------------------------------------------
def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    """True while the process we recorded runs (a reused pid has another start time)."""
    if not pid:
        return False
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def stop_group(pid: int, started: int | None, *, timeout: float = 20.0,
               on_wait: Callable[[], None] | None = None) -> bool:
    """SIGTERM the leader ``pid`` (Triton unloads its models), then SIGKILL its whole group (the Python-backend
    stubs), after ``timeout`` at the latest.

    Only the leader gets SIGTERM: a stub terminated under a running server leaves its model unable to unload,
    and the server then waits out its 30 s exit timeout. Returns False if the process was not running. Waits on
    the process itself, which may not be our child.
    """
    if not alive(pid, started):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    delay = 0.02
    while alive(pid, started) and time.monotonic() < deadline:
        if on_wait:
            on_wait()
        _reap(pid)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # also the Python-backend stubs of the group
    deadline = time.monotonic() + 10
    while alive(pid, started) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (else it is someone else's zombie to reap)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
