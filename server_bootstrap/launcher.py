"""Start, watch and stop a real ``tritonserver`` process.

Works with the NGC container's ``/opt/tritonserver`` and with the binary bundled in the ``nvidia-pytriton`` wheel,
which lets every machine (no GPU, no container) run a real server. See shared/LOCAL_TRITON.md for the pitfalls
this module exists to hide: stub lookup, libpython resolution, hangs on a stub that cannot start, leftovers in
/dev/shm.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import itertools
import os
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
from dataclasses import dataclass, field
from pathlib import Path

from cvload.errors import ServerError, UsageError

INSTALL_HINT = (
    "install the bundled server with `pip install 'cvload[emulator]'` (nvidia-pytriton, Linux x86_64), "
    "run inside NVIDIA's Triton container, or pass the binary's path explicitly (--tritonserver PATH)"
)
_counter = itertools.count()


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


def find_tritonserver(explicit: str | os.PathLike[str] | None = None) -> TritonInstall:
    """Find a tritonserver: an explicit path, PATH, /opt/tritonserver, then the nvidia-pytriton bundle."""
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
    root = _pytriton_root()
    if root is not None:
        libs = root.parent.parent / "nvidia_pytriton.libs"
        return TritonInstall(root / "bin" / "tritonserver", None, bundle_root=root, libs=libs)
    raise ServerError("tritonserver not found (looked at PATH, /opt/tritonserver and nvidia-pytriton)", hint=INSTALL_HINT)


def _prepare_bundle_backends(install: TritonInstall, workdir: Path) -> Path:
    """The wheel ships the Python backend without its stub: assemble a backend folder with the right one."""
    assert install.bundle_root is not None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = install.bundle_root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(
            f"nvidia-pytriton has no Python-backend stub for Python {version} ({stub})",
            hint="use a Python version nvidia-pytriton ships a stub for (3.8-3.13)",
        )
    target = workdir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    src = install.bundle_root / "backends" / "python"
    for item in (src / "libtriton_python.so", src / "triton_python_backend_utils.py", stub):
        link = target / item.name
        if not link.exists():
            link.symlink_to(item)
    return workdir / "backends"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on ``host`` (the server binds it a moment later; a lost race fails loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_busy(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (server log is empty)"


@dataclass
class TritonServer:
    """A tritonserver process bound to loopback on free (or given) ports; use it as a context manager.

    ``with TritonServer(repo) as server: server.grpc_url`` starts the server, waits for ``/v2/health/ready``
    within ``ready_timeout`` and stops it (SIGTERM, then SIGKILL) on exit, removing what it left in /dev/shm.
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
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _own_workdir: bool = field(default=False, init=False)
    _shm_prefix: str = field(default="", init=False)
    _tmp_before: set[str] = field(default_factory=set, init=False)

    # ---- endpoints -------------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

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
        # The stub runs the first python3 on PATH: make it this interpreter's (it imports numpy).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        lib_dirs = [sysconfig.get_config_var("LIBDIR") or ""]
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
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if port is None:
                setattr(self, name, free_port(self.host))
            elif _port_busy(self.host, port):
                raise ServerError(
                    f"port {port} on {self.host} is already in use ({name.replace('_', ' ')})",
                    hint=f"stop whatever listens on {self.host}:{port} or choose another port",
                )
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="cvload-triton-"))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_path or self.workdir / "tritonserver.log"
        self._shm_prefix = f"cvload{os.getpid()}x{next(_counter)}x"
        backends = install.backends
        if install.bundle_root is not None:
            backends = _prepare_bundle_backends(install, self.workdir)
        self._tmp_before = set(glob.glob("/tmp/python_env_*"))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(install, backends),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(install),
                start_new_session=True,  # Ctrl-C in a terminal reaches us, we stop the server in order
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Poll readiness until the deadline; fail fast if the process exits, quoting the log either way."""
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        delay = 0.02
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"tritonserver exited with code {code} before becoming ready "
                    f"(ports http {self.http_port}, grpc {self.grpc_port}, metrics {self.metrics_port}); "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"  # type: ignore[arg-type]
                )
            with contextlib.suppress(urllib.error.URLError, OSError):
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"tritonserver not ready after {self.ready_timeout:.0f} s (a model still loading usually "
                    f"means a Python-backend stub that cannot start); log {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"  # type: ignore[arg-type]
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc is not None:
            # Stubs live in the server's process group; make sure none outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the shared-memory regions and temp folders this server left behind."""
        if self._shm_prefix:
            for path in glob.glob(f"/dev/shm/{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        for path in set(glob.glob("/tmp/python_env_*")) - self._tmp_before:
            shutil.rmtree(path, ignore_errors=True)
        if self._own_workdir and self.workdir is not None:
            # Keep the log readable after a failure: only the backend links go.
            shutil.rmtree(self.workdir / "backends", ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
