"""Which Python runs the Python-backend stub of the bundled tritonserver, and whether it can.

The stub (``triton_python_backend_stub``, one build per Python minor version in nvidia-pytriton 0.7.0) embeds the
interpreter that ``python3`` on its ``PATH`` resolves to, with that environment's site-packages; it ignores
``PYTHONPATH`` and the user site. Every stub of the bundle was built with a pybind11 that predates numpy 2: with
numpy 2 it misreads tensors (FP32 ``[1, 2, 3]`` arrives as ``[1, 1, 1]``, BYTES crash the stub and the server
answers "Stub process ... is not healthy" on the first request). So the stub needs an environment with numpy 1.x.
numpy 1.x has no wheels for Python 3.13: there that environment is a second, private one, made from a Python
3.10-3.12 found on the machine or, failing that, from 3.13 itself with numpy 1.26.4 built from source
(docs/local-triton.md has the measurements).

This module picks that interpreter (an explicit one, the running one, or the private environment made by
``python -m cvload.triton.stub_python``), checks it before the server starts, and makes the private environment.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cvload.errors import CvloadError, ServerError

BUNDLE = "nvidia-pytriton==0.7.0"
STUB_NUMPY = "1.26.4"  # the last numpy 1.x release; its wheels cover CPython 3.9-3.12
BUNDLE_STUBS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")  # python_backend_stubs/ of nvidia-pytriton 0.7.0
WHEEL_VERSIONS = ("3.10", "3.11", "3.12")  # Pythons of cvload's range where numpy 1.x installs from a wheel
ENV_VAR = "CVLOAD_STUB_PYTHON"  # a python3 to run the stub with, overriding the choice below
PRIVATE_ENV = "cvload-stub-python"  # the private environment, under the running environment's sys.prefix
SETUP_COMMAND = "python -m cvload.triton.stub_python"


def unsupported_platform(system: str | None = None, machine: str | None = None) -> str | None:
    """Why the bundled server cannot run here, in one sentence, or None on Linux x86_64 (``system`` and
    ``machine`` stand in for this machine's, to show the message of another)."""
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    if system == "Linux" and machine in ("x86_64", "amd64"):
        return None
    return (f"The embedded Triton server runs only on Linux x86_64 (nvidia-pytriton bundles no tritonserver for "
            f"{system} {machine}): measure a running server with --server HOST:PORT instead.")


@dataclass(frozen=True)
class StubPython:
    """An interpreter as the stub would see it: run with ``-E -s`` as the embedded one ignores the environment's
    PYTHON* variables and the user site."""

    python: Path
    version: str  # "3.12"
    numpy: str | None  # what ``import numpy`` gives it, None when it has none
    numpy_path: str | None
    libdir: str  # sysconfig LIBDIR: where its libpython3.X.so.1.0 is, for the stub's LD_LIBRARY_PATH
    libpython: str | None  # the libpython3.X.so.1.0 it loads (Debian/Ubuntu package libpython3.X), if any

    def problem(self) -> str | None:
        """Why the bundle's stub cannot run with this interpreter, or None."""
        if self.version not in BUNDLE_STUBS:
            return f"{self.python} is Python {self.version}; the bundle has stubs for Python {', '.join(BUNDLE_STUBS)}"
        if self.numpy is None:
            return f"{self.python} (Python {self.version}) has no numpy; the stub needs numpy 1.x"
        if int(self.numpy.split(".")[0]) >= 2:
            extra = " (numpy 1.x has no wheels for Python 3.13)" if self.version not in WHEEL_VERSIONS else ""
            return (f"{self.python} imports numpy {self.numpy} ({self.numpy_path}); the bundle's Python {self.version} "
                    f"stub works only with numpy 1.x{extra} (with numpy 2 it misreads every tensor)")
        if not self.libpython:
            return (f"{self.python} has no shared libpython{self.version}.so.1.0, which the stub runs on (Debian/Ubuntu: "
                    f"apt-get install libpython{self.version})")
        return None


_PROBE = r"""
import ctypes, json, os, sys, sysconfig
v = "%d.%d" % sys.version_info[:2]
libdir = sysconfig.get_config_var("LIBDIR") or ""
name = "libpython%s.so.1.0" % v
lib = None
for candidate in (os.path.join(libdir, name), name):
    try:
        ctypes.CDLL(candidate)
    except OSError:
        continue
    with open("/proc/self/maps") as maps:
        lib = next((line.split()[-1] for line in maps if line.rstrip().endswith("/" + name)), candidate)
    break
try:
    import numpy
    np, where = numpy.__version__, os.path.dirname(numpy.__file__)
except Exception:
    np = where = None
print(json.dumps({"version": v, "numpy": np, "numpy_path": where, "libdir": libdir, "libpython": lib}))
"""


def inspect(python: str | os.PathLike[str]) -> StubPython:
    """Ask ``python`` what the stub would find in it (about 0.1 s: it imports numpy)."""
    path = Path(python)
    try:
        out = subprocess.run([str(path), "-E", "-s", "-c", _PROBE], capture_output=True, text=True, timeout=60,
                             check=True).stdout
        facts = json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise ServerError(f"cannot run {path} to check it for the Python-backend stub: {exc}",
                          hint=f"point {ENV_VAR} at a working python3, or run `{SETUP_COMMAND}`") from None
    return StubPython(python=path, **facts)


def private_env(prefix: str | os.PathLike[str] | None = None) -> Path:
    """Where ``python -m cvload.triton.stub_python`` puts the private environment: inside the running one, so it
    goes when that goes."""
    return Path(prefix or sys.prefix) / PRIVATE_ENV


def _env_python(env: Path) -> Path:
    return env / "bin" / "python3"


def choose(explicit: str | os.PathLike[str] | None = None, *, running: str | os.PathLike[str] | None = None,
           prefix: str | os.PathLike[str] | None = None) -> StubPython:
    """The interpreter to run the stub with: ``explicit`` (or $CVLOAD_STUB_PYTHON) if given, else the running one
    (``running``, default this interpreter) if it fits, else the private environment under ``prefix`` (default
    this environment's); a clear error naming versions and the fix when none fits."""
    source = "the given python" if explicit else f"${ENV_VAR}"
    explicit = explicit or os.environ.get(ENV_VAR)
    hint = _fix_hint(private_env(prefix))
    if explicit:
        chosen = inspect(explicit)
        why = chosen.problem()
        if why:
            raise ServerError(f"cannot run the Python-backend stub with {source}: {why}", hint=hint)
        return chosen
    current = inspect(running or sys.executable)
    why = current.problem()
    if why is None:
        return current
    private = _env_python(private_env(prefix))
    if private.exists():
        chosen = inspect(private)
        if chosen.problem() is None:
            return chosen
        why += f"; the private environment does not fit either: {chosen.problem()}"
    raise ServerError(f"the bundled tritonserver's Python backend cannot run here: {why}", hint=hint)


def _fix_hint(private: Path) -> str:
    return (f"run `{SETUP_COMMAND}` (makes {private} with numpy {STUB_NUMPY}), or point {ENV_VAR} at a python3 of "
            f"an environment with numpy<2, or measure a running server with --server HOST:PORT")


# ---- making the private environment -------------------------------------------------------------------------
def say(line: str) -> None:
    """Progress as it happens (a numpy build takes minutes; stdout is a pipe under make)."""
    print(line, flush=True)


def _running_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _base_python() -> Path:
    """The interpreter this environment was made from (a venv's python is only a link to it)."""
    return Path(getattr(sys, "_base_executable", None) or sys.executable)


def base_candidates() -> list[Path]:
    """Interpreters a private environment with a numpy 1.x wheel could be made from: the running one (when it is
    3.10-3.12), then python3.12, python3.11, python3.10 on PATH."""
    found: list[Path] = []
    if _running_version() in WHEEL_VERSIONS:
        found.append(_base_python())
    for version in reversed(WHEEL_VERSIONS):
        on_path = shutil.which(f"python{version}")
        if on_path:
            found.append(Path(on_path))
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def make_private_env(base: Path, target: Path, *, from_source: bool = False,
                     log: Callable[[str], None] = say) -> StubPython:
    """A venv at ``target`` made by ``base`` with numpy STUB_NUMPY: a wheel, or built from source when
    ``from_source`` (Python 3.13, where no wheel exists)."""
    if target.exists():
        shutil.rmtree(target)
    how = "built from source (no wheel exists for this Python; this takes minutes)" if from_source else "(a wheel)"
    log(f"making {target} from {base} with numpy {STUB_NUMPY} {how} for the Python-backend stub")
    binary = [] if from_source else ["--only-binary=:all:"]
    install = ["install", "-q", "--disable-pip-version-check", *binary, f"numpy=={STUB_NUMPY}"]
    if _pip_takes_python():  # this pip installs into the new venv: no pip of its own to install first (~3 s)
        steps = [[str(base), "-m", "venv", "--without-pip", str(target)],
                 [sys.executable, "-m", "pip", "--python", str(_env_python(target)), *install]]
    else:
        steps = [[str(base), "-m", "venv", str(target)], [str(_env_python(target)), "-m", "pip", *install]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise ServerError(f"`{' '.join(step)}` failed (exit {done.returncode}):\n"
                              f"{(done.stdout + done.stderr).strip()[-1500:]}",
                              hint="Debian/Ubuntu: apt-get install python3.X-venv for that Python")
    return inspect(_env_python(target))


def _pip_takes_python() -> bool:
    """Whether this interpreter's pip can install into another environment (``pip --python``, pip 22.3+)."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("pip").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (22, 3)


def ensure_bundle(*, log: Callable[[str], None] = say) -> None:
    """Install the tritonserver bundle without its Python-side requirements when it is missing (Python 3.13, where
    the ``emulator`` extra leaves it out: its numpy<2 pin has no wheel there)."""
    if importlib.util.find_spec("pytriton") is not None:
        return
    log(f"installing {BUNDLE} without its Python requirements (only its tritonserver is used)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    BUNDLE], check=True)
    importlib.invalidate_caches()


def source_build_missing() -> str | None:
    """What building numpy here lacks (a C compiler, this Python's headers), or None."""
    missing = []
    if not (shutil.which("cc") or shutil.which("gcc")):
        missing.append("a C compiler")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        missing.append(f"the headers of Python {_running_version()}")
    return " and ".join(missing) or None


def setup(*, system: str | None = None, machine: str | None = None,
          log: Callable[[str], None] = say) -> int:
    """Make the embedded server runnable here: the bundle, then an interpreter its stub works with. Returns an
    exit code; on a platform without the bundle it says so and succeeds (nothing to set up)."""
    why = unsupported_platform(system, machine)
    if why:
        log(why)
        return 0
    ensure_bundle(log=log)
    try:
        chosen = choose()
    except ServerError as err:
        first = err.message
    else:
        log(f"Python-backend stub: {chosen.python} (Python {chosen.version}, numpy {chosen.numpy})")
        return 0
    target = private_env()
    failures = []
    attempts = [(base, False) for base in base_candidates()]
    if _running_version() not in WHEEL_VERSIONS and _running_version() in BUNDLE_STUBS:
        attempts.append((_base_python(), True))  # 3.13 without another Python: numpy 1.26 from source
    for base, from_source in attempts:
        if from_source and source_build_missing():
            failures.append(f"building numpy {STUB_NUMPY} for Python {_running_version()} needs "
                            f"{source_build_missing()} (Debian/Ubuntu: apt-get install build-essential python3-dev)")
            continue
        try:
            made = make_private_env(base, target, from_source=from_source, log=log)
        except ServerError as err:
            failures.append(err.message)
            lines = err.message.splitlines()
            log(f"  did not work: {lines[1] if len(lines) > 1 else lines[0]}")
            continue
        problem = made.problem()
        if problem is None:
            log(f"Python-backend stub: {made.python} (Python {made.version}, numpy {made.numpy})")
            return 0
        failures.append(problem)
        shutil.rmtree(target, ignore_errors=True)
    tried = "; ".join(failures) or "no python3.10, python3.11 or python3.12 on PATH"
    log(f"error: {first}.\n  Cannot make a private environment for it: {tried}.\n"
        f"  Install a Python 3.10-3.12 with venv and its shared libpython (Debian/Ubuntu: python3.12-venv "
        f"libpython3.12) or, on Python 3.13, a C compiler and its headers (build-essential python3-dev), then "
        f"run `{SETUP_COMMAND}` again; or measure a running server with --server HOST:PORT.")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=SETUP_COMMAND, description=(
        "Make the embedded tritonserver (nvidia-pytriton) runnable with this environment: install the bundle if "
        "missing and give its Python-backend stub a Python with numpy 1.x (a private venv when this one does not "
        "fit)."))
    parser.parse_args(argv)
    try:
        return setup()
    except (CvloadError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
