"""Start, watch and stop a real ``tritonserver`` process.

Works with the NGC container's ``/opt/tritonserver`` and with the binary bundled in the ``nvidia-pytriton`` wheel,
which lets every machine (no GPU, no container) run a real server. It hides the pitfalls of running one by
hand (docs/local-triton.md): the wheel ships the Python-backend stub apart from the backend, the stub embeds the
``python3`` on its PATH and works only with numpy 1.x (``stub_python`` picks and checks that interpreter), it
needs that interpreter's libpython, a stub that cannot start makes the server hang instead of exit, and a killed
server leaves regions in /dev/shm and folders in /tmp.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import itertools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Protocol

from cvload import subprocesses
from cvload.errors import ServerError, UsageError
from cvload.settings.address import claimed, hostport, metrics_url
from cvload.triton import stub_python
from cvload.triton.stub_python import StubPython

INSTALL_HINT = (
    f"install the bundled server with `pip install 'cvload[emulator]' && {stub_python.SETUP_COMMAND}` "
    "(nvidia-pytriton, Linux x86_64), run inside NVIDIA's Triton container, or pass the binary's path explicitly "
    "(--tritonserver PATH)"
)
_counter = itertools.count()


def _new_shm_prefix() -> str:
    """A name prefix for one server start's Python-backend regions in /dev/shm: this process's pid (which
    ``orphan_on`` reads back) and a counter."""
    return f"cvload{os.getpid()}x{next(_counter)}x"


#: Starts tried when a server aborts in Triton's own stub start race (``TritonServer._start_race``).
START_ATTEMPTS = 2


@dataclass(frozen=True)
class TritonInstall:
    """Where a tritonserver binary and its backends live."""

    binary: Path
    backends: Path | None  # backend directory ready to pass to --backend-directory, if known
    bundle_root: Path | None = None  # pytriton's tritonserver folder, when the binary comes from the wheel
    libs: Path | None = None  # shared libraries the bundled binary needs


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return root if (root / "bin" / "tritonserver").exists() else None


def find_tritonserver(explicit: str | os.PathLike[str] | None = None, *, system: str | None = None,
                      machine: str | None = None) -> TritonInstall:
    """Find a tritonserver: an explicit path, PATH, /opt/tritonserver, then the nvidia-pytriton bundle, which
    exists only on Linux x86_64 (``system``/``machine`` stand in for this machine's, to show another's message)."""
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UsageError(f"tritonserver binary not found or not executable: {path}", hint=INSTALL_HINT)
        backends = path.parent.parent / "backends"
        return TritonInstall(path, backends if backends.is_dir() else None)
    on_path = shutil.which("tritonserver")
    if on_path:
        path = Path(on_path).resolve()
        backends = path.parent.parent / "backends"
        return TritonInstall(path, backends if backends.is_dir() else None)
    opt = Path("/opt/tritonserver/bin/tritonserver")
    if opt.exists():
        return TritonInstall(opt, Path("/opt/tritonserver/backends"))
    unsupported = stub_python.unsupported_platform(system, machine)
    if unsupported:
        raise ServerError(unsupported)
    root = _pytriton_root()
    if root is not None:
        libs = root.parent.parent / "nvidia_pytriton.libs"
        return TritonInstall(root / "bin" / "tritonserver", None, bundle_root=root, libs=libs)
    raise ServerError("tritonserver not found (looked at PATH, /opt/tritonserver and nvidia-pytriton)", hint=INSTALL_HINT)


def _prepare_bundle_backends(install: TritonInstall, workdir: Path, python: StubPython) -> Path:
    """The wheel ships the Python backend without its stub: assemble a backend folder with the stub of the Python
    that will run it.

    A stub that carries its own libpython (3.13: auditwheel grafted a pyenv build into nvidia_pytriton.libs) must
    run on the chosen interpreter's instead: the grafted one looks for its built-in modules as files, and Debian
    builds some into its libpython ("No module named 'fcntl'"). The stub finds the grafted one through its RPATH
    (``$ORIGIN/...``), which outranks LD_LIBRARY_PATH; a copy of the stub has an RPATH that leads nowhere, so the
    loader takes the name from ``stub-lib/``, where it links to the interpreter's own libpython."""
    assert install.bundle_root is not None
    stub = install.bundle_root / "python_backend_stubs" / python.version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(
            f"nvidia-pytriton has no Python-backend stub for Python {python.version} ({stub})",
            hint=f"run `{stub_python.SETUP_COMMAND}` to make an environment of a Python it has a stub for",
        )
    target = workdir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    src = install.bundle_root / "backends" / "python"
    grafted = _grafted_libpython(install, python.version)
    for item in (src / "libtriton_python.so", src / "triton_python_backend_utils.py", stub):
        _replace_link(target / item.name, item)
    if grafted is not None and python.libpython:
        (target / stub.name).unlink()
        shutil.copy2(stub, target / stub.name)
        _replace_link(workdir / "stub-lib" / grafted.name, Path(python.libpython))
    return workdir / "backends"


# Starts of cvload's servers on this machine take turns from the spawn until the Python backend has made its
# /tmp/python_env_* folder (whose name the backend does not tell), so each knows its own; a start that makes none
# within this many seconds stops waiting.
START_LOCK = Path("/tmp/cvload-triton-start.lock")
PYTHON_ENV_WAIT_S = 10.0


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    try:
        fh = open(START_LOCK, "a")  # noqa: SIM115 - closing it releases the lock
    except OSError:  # another user's lock file: go without
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _grafted_libpython(install: TritonInstall, version: str) -> Path | None:
    """The libpython the bundle carries for Python ``version`` (libpython3-<hash>.13.so.1.0), if it has one."""
    major, minor = version.split(".")
    if install.libs is None:
        return None
    return next(iter(sorted(install.libs.glob(f"libpython{major}-*.{minor}.so.1.0"))), None)


def _replace_link(link: Path, to: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(to)


def _python3_dir(python: Path, workdir: Path) -> Path:
    """A folder whose ``python3`` is ``python``: its own when that is the same interpreter (a venv's bin, so the
    stub finds the venv), else a link made in ``workdir`` (a bare /usr/bin/python3.12 beside another python3)."""
    own = python.parent / "python3"
    with contextlib.suppress(OSError):
        if own.exists() and os.path.samefile(own, python):
            return python.parent
    shim = workdir / "stub-bin"
    _replace_link(shim / "python3", python.resolve())
    return shim


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on ``host`` (the server binds it a moment later; a lost race fails loudly)."""
    return free_ports(1, host)[0]


_PICK = random.SystemRandom()  # not the random module's state: test runners seed that alike in every worker


LISTEN_PORTS_FROM = 20000  # above the ports servers are commonly given, and Ray's worker ports (10002-19999)


def _listening_ports() -> range | None:
    """Ports from LISTEN_PORTS_FROM up to the kernel's ephemeral range, which outgoing connections never take;
    None where that range is unknown or leaves too few below it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(LISTEN_PORTS_FROM, low) if low - LISTEN_PORTS_FROM >= 1000 else None


# A port picked is free, but only until its server binds it, which for a tritonserver comes after its models load
# (seconds). Meanwhile another launcher on the host (another cvload, another test worker) would find it free too:
# each pick is reserved by a file named after the port that holds the picker's pid, which other pickers pass over
# while that process lives, for RESERVE_S at most (no start takes longer) or until the server is up and releases it.
RESERVE_S = 120.0


def _reservations() -> Path:
    return Path(tempfile.gettempdir()) / f"cvload-ports-{os.getuid()}"


def _reserve(port: int) -> bool:
    """Reserve ``port`` for this process; False if another live process reserved it less than RESERVE_S ago."""
    folder = _reservations()
    folder.mkdir(mode=0o700, exist_ok=True)
    path, mine = folder / str(port), str(os.getpid())
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        with contextlib.suppress(OSError, ValueError):
            holder = int(path.read_text() or "0")
            if time.time() - path.stat().st_mtime < RESERVE_S and subprocesses.alive(holder, None):
                return False
        # stale: its picker is gone or its time is up; taken over whole (a rename), never half-written
        spare = folder / f".{port}.{mine}"
        spare.write_text(mine)
        os.replace(spare, path)
        return True
    with os.fdopen(fd, "w") as f:
        f.write(mine)
    return True


def release_ports(ports: Iterable[int]) -> None:
    """Drop this process's reservations of ``ports`` (once their server has bound them); others' stay."""
    folder, mine = _reservations(), str(os.getpid())
    for port in ports:
        path = folder / str(port)
        with contextlib.suppress(OSError):
            if path.read_text() == mine:
                path.unlink()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports, reserved for this process (``release_ports``): all sockets stay bound until
    all are chosen, so none is handed out twice. Chosen below the ephemeral range where there is one: a port the
    system hands out for ``bind(0)`` is one that any outgoing connection of a busy host may take next, before
    the server binds it."""
    listening = _listening_ports()
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            for _try in range(50 if listening else 0):
                assert listening is not None
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                port = _PICK.choice(listening)
                try:
                    s.bind((host, port))
                except OSError:
                    s.close()
                    continue
                if _reserve(port):
                    break
                s.close()
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((host, 0))
            stack.enter_context(s)
            ports.append(int(s.getsockname()[1]))
        return ports


def port_busy(host: str, port: int) -> bool:
    """Whether something listens on (or holds) ``host:port``; a port in TIME_WAIT after a stop counts as free,
    as it does for tritonserver, which binds with SO_REUSEADDR."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# How long a start waits for the server of a cvload that died (killed, crashed) to let go of a port it needs: that
# server got SIGTERM when its parent died (process.spawn's die_with_parent) and stops gracefully, unloading its
# models (2-3 s idle) and waiting for requests in flight (up to Triton's --exit-timeout-secs, 30 s by default).
ORPHAN_WAIT_S = 40.0
_SHM_PREFIX_ARG = re.compile(r"^--backend-config=python,shm-region-prefix-name=cvload(\d+)x")


def orphan_on(port: int) -> int | None:
    """The pid of a tritonserver that a cvload process no longer alive started (its shared-memory prefix names
    that process) and that was told to use ``port``: it is stopping, and will free the port."""
    import psutil

    flags = {f"--{kind}-port={port}" for kind in ("http", "grpc", "metrics")}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if not flags.intersection(cmdline):
            continue
        owner = next((int(m.group(1)) for arg in cmdline if (m := _SHM_PREFIX_ARG.match(arg))), None)
        if owner is not None and owner != os.getpid() and not psutil.pid_exists(owner):
            return int(proc.info["pid"])
    return None


def _port_free(host: str, port: int) -> bool:
    return not port_busy(host, port)


class _Hosted(Protocol):
    host: str


@contextlib.contextmanager
def claim_ports(server: _Hosted, names: tuple[str, ...], *,
                orphan_wait_s: float = ORPHAN_WAIT_S) -> Iterator[None]:
    """Around a server's start: give each of the ``server``'s port attributes ``names`` that is None a free port on
    its ``host``; a port given that is busy fails now, naming it, rather than as a bind error in the server's log,
    unless the server of a cvload that died holds it: then the port is waited for (``orphan_wait_s`` at most), so
    a script that restarts a killed ``cvload serve`` at once on the same ports works. The ports picked stay
    reserved for this process until the block ends (its server listens, or the start failed)."""
    host = server.host
    picked = free_ports(sum(getattr(server, n) is None for n in names), host)
    try:
        free = iter(picked)
        for name in names:
            port = getattr(server, name)
            if port is None:
                setattr(server, name, next(free))
            elif port_busy(host, port):
                orphan = orphan_on(port)
                if orphan is not None:
                    with contextlib.suppress(subprocesses.WaitTimeout):
                        subprocesses.wait_until(functools.partial(_port_free, host, port), orphan_wait_s,
                                                what=f"port {port}", first_delay=0.05, max_delay=0.1)
                    if not port_busy(host, port):
                        continue
                    raise ServerError(f"port {port} on {host} is still held by tritonserver (pid {orphan}) of a "
                                      f"cvload that is no longer running, {orphan_wait_s:g} s after it was asked "
                                      "to stop", hint=f"kill {orphan} (or its process group) or choose another port")
                raise ServerError(f"port {port} on {host} is already in use ({name.replace('_', ' ')})",
                                  hint=f"stop whatever listens on {host}:{port} or choose another port")
        yield
    finally:
        release_ports(picked)


def accepts(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ready(http: str, timeout: float = 1.0) -> bool:
    """Whether the Triton server at ``http`` (``host:port``) answers ``/v2/health/ready`` with 200."""
    # HTTPException: something else answers on the port (another server's gRPC took it meanwhile)
    with contextlib.suppress(urllib.error.URLError, OSError, HTTPException), \
            urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=timeout) as resp:
        return resp.status == 200
    return False


_PORT_TAKEN = re.compile(r"Socket '([^']+)' already in use")
# Lines of a tritonserver log that explain a failure, and the noise every CPU-only start prints at error level.
_LOG_ERROR = re.compile(r"^E\d{4} |\bERROR\b|Failed to initialize|UNAVAILABLE|Traceback|error: ")
_LOG_NOISE = re.compile(r"CudaDriverHelper|pinned memory|CUDA driver version|cuda_memory_manager|GPU metrics")


def log_excerpt(path: Path, *, tail: int = 12, max_errors: int = 12, width: int = 600) -> str:
    """What a failed start needs quoted: the log's error lines (the cause, which a plain tail of the startup
    tables often cuts off) followed by its last lines."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no server log)"
    if not text:
        return "    (server log is empty)"
    # The startup tables (options, models, backends) are wide and say little; a failing model shows UNAVAILABLE.
    lines = [ln for ln in text if ln.strip() and (not ln.startswith(("|", "+")) or "UNAVAILABLE" in ln)]
    last = lines[-tail:]
    errors = [ln for ln in lines[:-tail] if _LOG_ERROR.search(ln) and not _LOG_NOISE.search(ln)]
    out = []
    if errors:
        out.append("    errors in the log:")
        out += ["      " + _shorten(line, width) for line in errors[-max_errors:]]
        out.append("    last lines:")
    out += ["      " + _shorten(line, width) for line in last]
    return "\n".join(out)


def _shorten(line: str, width: int) -> str:
    line = line.replace("\\n", " | ")  # glog escapes Python tracebacks onto one line
    return line if len(line) <= width else line[: width - 3] + "..."


def trace_args(path: Path) -> list[str]:
    """Flags naming ``path`` as the server's request-trace file, tracing off: the trace API (``--triton-trace``)
    switches it on for a run but cannot name a file."""
    return [f"--trace-config=triton,file={path}", "--trace-config=level=OFF"]


@dataclass
class TritonServer:
    """A tritonserver process bound to loopback on free (or given) ports; use it as a context manager.

    ``with TritonServer(repo) as server: server.grpc_url`` starts the server, waits for ``/v2/health/ready``
    within ``ready_timeout`` and stops it (SIGTERM, then SIGKILL) on exit, removing what it left in /dev/shm and
    /tmp. Without a ``workdir`` it makes a temporary one for the log and the backend folder, removed after a clean
    stop and kept (log included) after a failure: a failed start, a server that died, or one that needed SIGKILL.
    """

    model_repository: Path
    host: str = "127.0.0.1"
    http_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None
    tritonserver: str | os.PathLike[str] | None = None
    workdir: Path | None = None
    log_path: Path | None = None
    ready_timeout: float = 60.0
    stop_timeout: float = 15.0
    gpu_metrics: bool = False
    metrics_interval_ms: int = 1000
    extra_args: list[str] = field(default_factory=list)
    #: SIGTERM the server when the process that started it dies (even by SIGKILL), on Linux, when started from the
    #: main thread. Off for servers meant to outlive their starter (``server_bootstrap up``).
    die_with_parent: bool = False
    #: The python3 that runs the bundled server's Python-backend stub (default: $CVLOAD_STUB_PYTHON, this
    #: interpreter, or the private environment; see ``stub_python.choose``). Checked before the server starts.
    stub_python: str | os.PathLike[str] | None = None
    stub: StubPython | None = field(default=None, init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _own_workdir: bool = field(default=False, init=False)
    _shm_prefix: str = field(default="", init=False)
    _tmp_before: set[str] = field(default_factory=set, init=False)
    _tmp_own: set[str] = field(default_factory=set, init=False)
    #: The logs of starts that aborted in Triton's stub start race and were started again (``_start_race``).
    aborted_starts: list[Path] = field(default_factory=list, init=False)
    #: None while running (or never started); True after a clean stop, False after any failure.
    clean_exit: bool | None = field(default=None, init=False)
    _stopped: bool = field(default=False, init=False)

    # ---- endpoints -------------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return hostport(self.host, claimed(self.http_port))

    @property
    def grpc_url(self) -> str:
        return hostport(self.host, claimed(self.grpc_port))

    @property
    def metrics_url(self) -> str:
        return metrics_url(self.host, claimed(self.metrics_port))

    @property
    def shm_prefix(self) -> str:
        """Name prefix of this server's Python-backend regions in /dev/shm (empty before start)."""
        return self._shm_prefix

    def endpoints(self) -> dict[str, str]:
        return {
            "http": f"http://{self.http_url}",
            "grpc": self.grpc_url,
            "metrics": self.metrics_url,
            "log": str(self.log_path),
        }

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def command(self, install: TritonInstall, backends: Path | None) -> list[str]:
        cmd = [
            str(install.binary),
            f"--model-repository={self.model_repository}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-cpu-metrics=true",
            f"--allow-gpu-metrics={'true' if self.gpu_metrics else 'false'}",
            f"--metrics-interval-ms={self.metrics_interval_ms}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        if backends is not None:
            cmd.append(f"--backend-directory={backends}")
        return cmd + list(self.extra_args)

    def _environment(self, install: TritonInstall) -> dict[str, str]:
        env = dict(os.environ)
        # The stub embeds the first python3 on PATH (its site-packages, its numpy): put the chosen one first.
        if self.stub is not None:
            assert self.workdir is not None
            bin_dir, libdir = _python3_dir(self.stub.python, self.workdir), self.stub.libdir
        else:
            bin_dir, libdir = Path(sys.executable).parent, sysconfig.get_config_var("LIBDIR") or ""
        env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
        lib_dirs = [libdir]
        if self.workdir is not None and (self.workdir / "stub-lib").is_dir():
            lib_dirs.insert(0, str(self.workdir / "stub-lib"))
        if install.libs is not None:
            lib_dirs.append(str(install.libs))
        if env.get("LD_LIBRARY_PATH"):
            lib_dirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in lib_dirs if d)
        return env

    def start(self) -> TritonServer:
        if not Path(self.model_repository).is_dir():
            raise UsageError(f"model repository not found: {self.model_repository}")
        install = find_tritonserver(self.tritonserver)
        # Before anything starts: a stub that cannot work fails on the first request, not at loading.
        self.stub = stub_python.choose(self.stub_python) if install.bundle_root is not None else None
        with claim_ports(self, ("http_port", "grpc_port", "metrics_port")):
            if self.workdir is None:
                self.workdir = Path(tempfile.mkdtemp(prefix="cvload-triton-"))
                self._own_workdir = True
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.log_path = self.log_path or self.workdir / "tritonserver.log"
            self._shm_prefix = _new_shm_prefix()
            backends = install.backends
            if install.bundle_root is not None:
                assert self.stub is not None
                backends = _prepare_bundle_backends(install, self.workdir, self.stub)
            self.clean_exit = None
            self._stopped = False
            try:
                for attempt in range(START_ATTEMPTS):
                    with _start_lock():
                        self._tmp_before = subprocesses.python_envs()
                        # Its own session: Ctrl-C in a terminal reaches us, and we stop the server in order.
                        self.process = subprocesses.spawn(self.command(install, backends), self.log_path,
                                                          env=self._environment(install),
                                                          die_with_parent=self.die_with_parent)
                        self.spawned()
                        self._claim_python_env()
                    try:
                        self.wait_ready()
                        break
                    except ServerError:
                        if attempt + 1 == START_ATTEMPTS or not self._start_race():
                            raise
                        self._discard_attempt(attempt + 1)
            except BaseException:
                self.clean_exit = False
                self.stop()
                raise
        return self

    def spawned(self) -> None:
        """Called as soon as the server process exists, before any wait (a subclass records it)."""

    def _start_race(self) -> bool:
        """Did the server abort while its Python backend started a stub (an interprocess lock between them
        failed, ``boost::interprocess::lock_exception``)? A race inside Triton, seen about once in a thousand
        starts on a busy host; the next start goes through."""
        assert self.process is not None and self.log_path is not None
        if self.process.poll() != -signal.SIGABRT:
            return False
        with contextlib.suppress(OSError):
            return "boost::interprocess" in self.log_path.read_text(errors="replace")
        return False

    def _discard_attempt(self, attempt: int) -> None:
        """Clear what an aborted start left (stubs still running, its /dev/shm regions, its Python backend's /tmp
        folder) for another start on the same ports and backends; its log stays beside the new one as
        ``<log>.attempt<N>``."""
        assert self.log_path is not None and self.process is not None
        subprocesses.end(self.process, grace=0)  # the server is dead: SIGKILL to the stubs of its group
        self.aborted_starts.append(self.log_path.with_name(f"{self.log_path.name}.attempt{attempt}"))
        self.log_path.replace(self.aborted_starts[-1])
        self._remove_residue(tmp_dirs=True)
        self._shm_prefix = _new_shm_prefix()

    def _claim_python_env(self) -> None:
        """Wait, holding the start lock, until the Python backend has made its /tmp/python_env_* folder (or the
        server exits, is ready, or ``PYTHON_ENV_WAIT_S`` passed), so that the folders new since the spawn are
        this server's alone: the backend deletes its own folder as the server stops and aborts the server if it
        is gone, so a cleanup must never take a neighbour's."""
        proc = self.process
        assert proc is not None

        def made() -> bool:
            new = subprocesses.python_envs() - self._tmp_before
            # Several at once: a server started outside cvload made one meanwhile, and none is known to be ours.
            self._tmp_own = new if len(new) == 1 else set()
            return bool(new) or proc.poll() is not None or ready(self.http_url, timeout=0.2)

        with contextlib.suppress(subprocesses.WaitTimeout):
            subprocesses.wait_until(made, min(self.ready_timeout, PYTHON_ENV_WAIT_S), what="the Python backend's folder",
                               max_delay=0.05)

    def wait_ready(self) -> None:
        """Poll readiness until the deadline; fail fast if the process exits, quoting the log either way."""
        proc = self.process
        assert proc is not None and self.log_path is not None
        log = self.log_path

        def up() -> bool:
            code = proc.poll()
            if code is not None:
                raise ServerError(
                    f"tritonserver exited with code {code} before becoming ready (ports http {self.http_port}, "
                    f"grpc {self.grpc_port}, metrics {self.metrics_port}); log {log}:\n{log_excerpt(log)}")
            # Triton opens its metrics port a moment after reporting ready: wait for every advertised endpoint.
            if not (ready(self.http_url) and accepts(self.host, claimed(self.metrics_port))):
                return False
            # What answered may be another server that took a port first: Triton then logs it, goes on without
            # that endpoint (metrics) and may crash a moment later.
            taken = _PORT_TAKEN.search(log.read_text(errors="replace"))
            if taken:
                raise ServerError(f"tritonserver could not bind {taken.group(1)}: another process took it first; "
                                  f"log {log}:\n{log_excerpt(log)}", hint="start it again (or give other ports)")
            return True

        try:
            subprocesses.wait_until(up, self.ready_timeout, what="tritonserver to become ready", max_delay=0.2)
        except subprocesses.WaitTimeout:
            raise ServerError(
                f"tritonserver not ready after {self.ready_timeout:g} s (a model still loading usually means a "
                f"Python-backend stub that cannot start); log {log}:\n{log_excerpt(log)}") from None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM to the server (it ends its stubs), SIGKILL to its whole group after ``stop_timeout``;
        afterwards no process of the group survives and its /dev/shm regions and temp folders are gone. Safe to
        call more than once."""
        proc = self.process
        if proc is None or self._stopped:
            return
        self._stopped = True
        clean = self.clean_exit is None and proc.poll() is None  # False: failed start, or it died on its own
        if clean:
            self._restore_python_env()
        ended = subprocesses.end(proc, grace=self.stop_timeout, sigterm="leader")
        self.clean_exit = clean and not ended.forced and proc.returncode in (0, -signal.SIGTERM)
        self.cleanup()

    def _restore_python_env(self) -> None:
        """Put the backend's /tmp folder back if something removed it (a launcher that started a server beside
        this one without the start lock, taking the folder for its own): the backend deletes it as the server
        stops and aborts the server if it is gone."""
        for path in self._tmp_own:
            with contextlib.suppress(OSError):  # there still (the usual case)
                os.mkdir(path, 0o700)

    def cleanup(self) -> None:
        """Remove the shared-memory regions and temp folders this server left behind."""
        self._remove_residue(tmp_dirs=not self.clean_exit)  # a clean stop: the backend deleted its folder itself
        if self._own_workdir and self.workdir is not None:
            if self.clean_exit:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:  # keep the log readable after a failure: only the backend and python3 links go
                shutil.rmtree(self.workdir / "backends", ignore_errors=True)
                shutil.rmtree(self.workdir / "stub-bin", ignore_errors=True)
                shutil.rmtree(self.workdir / "stub-lib", ignore_errors=True)

    def _remove_residue(self, *, tmp_dirs: bool) -> None:
        """This server's /dev/shm regions and (``tmp_dirs``) its empty /tmp/python_env_* folder."""
        if self._shm_prefix:
            subprocesses.remove_shm(self._shm_prefix)
        if tmp_dirs:
            subprocesses.remove_empty_dirs(self._tmp_own)
        self._tmp_own = set()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
