"""Subprocesses of every kind (Triton, emulated servers, load processes, bootstrap's commands): long commands with a log and progress, ending a process group, waiting with a deadline, log tails,
finding a process again later, and the /dev/shm and /tmp residue a killed Triton server leaves.

Commands are argument lists, never shell strings, so a config value cannot inject a command. A long command's
full output goes to its log; the console gets one progress line every few seconds (elapsed time and the size of
what the command is writing) and, on failure, the command, its exit code and the end of the log.

Processes are found and watched through psutil; a recorded process is told from a reused pid by its start time.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

import psutil

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
            end(proc, grace=5.0)
            raise
    elapsed = time.monotonic() - start
    if code != 0:
        raise CvloadError(f"{label}: `{show(cmd)}` exited with code {code} after {human_duration(elapsed)}; "
                          f"full log {log_path}; last lines:\n{tail(log_path)}", hint=hint)
    return elapsed


def _sizes(paths: Sequence[Path]) -> str:
    return "".join(f", {p.name} {human_size(tree_size(p))}" for p in paths)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` of a log, indented for quoting in an error or on the console."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (log is empty)"


# ---- starting a server -------------------------------------------------------------------------------------
# prctl resolved here, not in the forked child (a dlopen or import there could block on a lock another thread held).
try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux), so a killed cvload or test run does not
    leave an orphaned server that its own session shields from the terminal's signals."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def spawn(cmd: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None,
          die_with_parent: bool = False) -> subprocess.Popen[bytes]:
    """Start a server child with its output in a fresh ``log_path``, in its own session: Ctrl-C in a terminal
    reaches us, and we stop the server in order (``end``).

    ``die_with_parent`` asks for SIGTERM when this process dies (even by SIGKILL), on Linux. The death signal
    fires when the *thread* that started the child ends, so it is asked for only from the main thread, whose end
    is the process's.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent and _PRCTL is not None and main_thread else None)


# ---- waiting with a deadline ---------------------------------------------------------------------------------
T = TypeVar("T")


class WaitTimeout(CvloadError, TimeoutError):
    """A condition did not come true before its deadline."""


def wait_until(predicate: Callable[[], T], timeout_s: float, *, what: str, first_delay: float = 0.01,
               max_delay: float = 0.25) -> T:
    """Poll ``predicate`` until it returns a true value, and return that value.

    Polls often at first (a server that is ready at once is seen at once), then every ``max_delay`` seconds.
    The predicate is tried once more at the deadline; then a WaitTimeout names ``what``. An exception from the
    predicate (a server that exited, say) ends the wait at once.
    """
    deadline = time.monotonic() + timeout_s
    delay = first_delay
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(min(delay, left))
        delay = min(delay * 1.5, max_delay)


# ---- finding a process again ---------------------------------------------------------------------------------
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (as /proc/<pid>/stat has it), None if it is gone.

    Recorded beside a pid (the bootstrap's state file), it tells that process from a later one given the same
    pid. Ticks rather than psutil's wall-clock seconds keep records written by earlier versions valid.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # it has exited already
            return None
        return round((proc.create_time() - psutil.boot_time()) * _CLOCK_TICKS)
    except psutil.Error:
        return None


def _process(pid: int, started: int | None) -> psutil.Process | None:
    """The running process ``pid``, if it is the one that started at ``started`` (None: any)."""
    now = start_time(pid) if pid > 0 else None
    if now is None or (started is not None and now != started):
        return None
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid)
    return None


def alive(pid: int | None, started: int | None) -> bool:
    """True while the process we recorded runs (a reused pid has another start time)."""
    return pid is not None and _process(pid, started) is not None  # pid 0 and below: _process gives None


def _running(proc: psutil.Process) -> bool:
    """Still running: not exited, not a zombie, not a reused pid. Collects the exit status of our own child."""
    try:
        if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.Error:
        return False
    with contextlib.suppress(OSError):
        os.waitpid(proc.pid, os.WNOHANG)  # our child: reap it (someone else's zombie is theirs to reap)
    return False


def group_members(pgid: int) -> list[psutil.Process]:
    """The running processes (zombies left out) of process group ``pgid``: a server and its backend stubs."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


# ---- ending a process group ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ended:
    """How ``end`` went."""

    was_running: bool  # the leader ran when asked to end (False: it had exited, or its pid is another's now)
    forced: bool  # the leader outlived its grace period and was killed (SIGKILL)


def send_term(pid: int, started: int | None = None) -> bool:
    """SIGTERM to a recorded process, if it still runs, without waiting (to end several at once)."""
    proc = _process(pid, started)
    if proc is None:
        return False
    with contextlib.suppress(psutil.Error):
        proc.terminate()
    return True


def end(leader: subprocess.Popen[Any] | int, *, grace: float = 5.0, sigterm: Literal["group", "leader"] = "group",
        started: int | None = None, kill_wait: float = 10.0) -> Ended:
    """End the process group ``leader`` leads, children included: SIGTERM, up to ``grace`` seconds for the
    leader to exit, then SIGKILL to whatever of the group is left.

    ``leader`` is a Popen we started with ``start_new_session`` (waited on, so its ``returncode`` is set), or a
    pid of any process with its ``start_time`` as ``started`` to tell it from a reused pid. ``sigterm="leader"``
    sends SIGTERM to the leader only and lets it end its children: tritonserver unloads its models and ends its
    Python-backend stubs itself, while a stub terminated under a running server leaves its model unable to
    unload, and the server then waits out its 30 s exit timeout. Processes that started their own session
    (a server with die-with-parent) are not of the group: they follow their parent's death on their own.

    A Popen leader that has exited already is not signalled, but the rest of its group still gets SIGKILL
    (the stubs of a server that died); a recorded pid that no longer runs is left alone (its group number may
    be another's by now).
    """
    if isinstance(leader, subprocess.Popen):
        popen: subprocess.Popen[Any] | None = leader
        pid, running = leader.pid, leader.poll() is None
        proc = None
    else:
        popen, pid = None, leader
        proc = _process(pid, started)
        running = proc is not None
        if not running:
            return Ended(False, False)

    def leader_gone() -> bool:
        if popen is not None:
            return popen.poll() is not None
        return proc is None or not _running(proc)  # proc is set whenever popen is None

    leads = _leads_group(pid)
    forced = False
    if running:
        _signal(pid, signal.SIGTERM, group=leads and sigterm == "group")
        try:
            wait_until(leader_gone, grace, what=f"process {pid} to exit")
        except WaitTimeout:
            forced = True
    members = group_members(pid)
    _signal(pid, signal.SIGKILL, group=True)
    if forced and not leads:
        _signal(pid, signal.SIGKILL, group=False)
    with contextlib.suppress(WaitTimeout):
        wait_until(lambda: leader_gone() and not any(_running(m) for m in members), kill_wait,
                   what=f"process group {pid} to exit after SIGKILL")
    return Ended(running, forced)


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return True  # the leader is gone; its group (if any is left) still bears its pid


def _signal(pid: int, sig: int, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


# ---- what a killed Triton server leaves behind ---------------------------------------------------------------
# Triton's Python backend names its shared-memory regions ``<prefix><n>``: by default
# ``triton_python_backend_shm_region_``, shared by every server on the machine, so the launcher gives each server
# its own prefix (``--backend-config=python,shm-region-prefix-name=...``) and removes only that one's.
PYTHON_ENVS = "/tmp/python_env_*"  # where the Python backend unpacks execution environments


def shm_regions(prefix: str) -> list[str]:
    """The /dev/shm regions whose names start with ``prefix``."""
    if not prefix:
        raise ValueError("an empty shared-memory prefix would match every region of every program")
    return glob.glob(f"/dev/shm/{glob.escape(prefix)}*")


def remove_shm(prefix: str) -> None:
    """Remove the /dev/shm regions of one server, which a server killed (not stopped) leaves behind."""
    for path in shm_regions(prefix):
        with contextlib.suppress(OSError):
            os.unlink(path)


def python_envs() -> set[str]:
    """The Python backend's folders in /tmp now (compare before and after a start to find a server's own)."""
    return set(glob.glob(PYTHON_ENVS))


def remove_empty_dirs(paths: Iterable[str]) -> None:
    """Remove those of ``paths`` that are empty folders: never a neighbour's unpacked environment."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.rmdir(path)
