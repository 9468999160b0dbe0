"""Where the embedded server can run, and which Python its Python-backend stub gets (cvload.triton.stub_python).

Other platforms are shown through the platform parameters (nothing here pretends to be a server); interpreters
are real venvs of this Python, one with a stand-in numpy whose version is all the check reads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy
import pytest
from envs import fitting_env, numpy2_env

from cvload.errors import ServerError
from cvload.triton import launcher, stub_python
from cvload.triton.stub_python import StubPython

OTHER_PLATFORMS = [("Darwin", "arm64"), ("Darwin", "x86_64"), ("Windows", "AMD64"), ("Linux", "aarch64")]


# ---- platforms without the bundle ----------------------------------------------------------------------------
@pytest.mark.parametrize(("system", "machine"), OTHER_PLATFORMS)
def test_other_platforms_get_one_sentence_pointing_to_server(system: str, machine: str) -> None:
    message = stub_python.unsupported_platform(system, machine)
    assert message is not None
    assert message.count(". ") == 0 and message.endswith("."), "one sentence"
    assert f"{system} {machine.lower()}" in message and "Linux x86_64" in message and "--server" in message


def test_linux_x86_64_is_supported() -> None:
    assert stub_python.unsupported_platform("Linux", "x86_64") is None


@pytest.mark.parametrize(("system", "machine"), OTHER_PLATFORMS[:1] + OTHER_PLATFORMS[-1:])
def test_emulator_start_elsewhere_says_so_instead_of_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                system: str, machine: str) -> None:
    if Path("/opt/tritonserver/bin/tritonserver").exists():
        pytest.skip("this machine has /opt/tritonserver")
    monkeypatch.setenv("PATH", str(tmp_path))  # no tritonserver on PATH, as on a laptop
    with pytest.raises(ServerError) as err:
        launcher.find_tritonserver(system=system, machine=machine)
    assert str(err.value) == stub_python.unsupported_platform(system, machine), "the sentence, nothing more"


@pytest.mark.parametrize(("system", "machine"), OTHER_PLATFORMS)
def test_setup_elsewhere_says_so_and_succeeds(system: str, machine: str) -> None:
    said: list[str] = []
    assert stub_python.setup(system=system, machine=machine, log=said.append) == 0
    assert said == [stub_python.unsupported_platform(system, machine)]


def test_setup_here_keeps_an_environment_that_fits(tmp_path: Path) -> None:
    said: list[str] = []
    assert stub_python.setup(log=said.append) == 0
    assert said and said[-1].startswith("Python-backend stub: ")
    assert "numpy 1." in said[-1]


# ---- which interpreter, and why not ----------------------------------------------------------------------------
def fact(**changes: object) -> StubPython:
    base = {"python": Path("/env/bin/python3"), "version": "3.12", "numpy": "1.26.4",
            "numpy_path": "/env/lib/python3.12/site-packages/numpy", "libdir": "/usr/lib", "libpython": "/usr/lib/libpython3.12.so.1.0"}
    return StubPython(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, None),
    ({"version": "3.10"}, None),
    ({"numpy": "2.5.2"}, "imports numpy 2.5.2"),
    ({"numpy": None}, "has no numpy"),
    ({"version": "3.13", "numpy": "2.2.6"}, "only with numpy 1.x (numpy 1.x has no wheels for Python 3.13)"),
    ({"version": "3.13", "numpy": "1.26.4"}, None),
    ({"version": "3.13", "numpy": "1.26.4", "libpython": None}, "apt-get install libpython3.13"),
    ({"version": "3.7"}, "the bundle has stubs for Python 3.8, 3.9, 3.10, 3.11, 3.12, 3.13"),
    ({"libpython": None}, "apt-get install libpython3.12"),
])
def test_problem_names_the_version_and_the_fix(changes: dict, expected: str | None) -> None:
    problem = fact(**changes).problem()
    assert problem is None if expected is None else expected in problem  # type: ignore[operator]


def test_inspect_sees_what_the_stub_would() -> None:
    here = stub_python.inspect(sys.executable)
    assert here.version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert here.numpy == numpy.__version__ and here.libdir


def test_inspect_ignores_pythonpath_as_the_stub_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shadow = tmp_path / "shadow"
    (shadow / "numpy").mkdir(parents=True)
    (shadow / "numpy" / "__init__.py").write_text('__version__ = "0.0.1"\n')
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    assert stub_python.inspect(sys.executable).numpy == numpy.__version__


def test_choose_falls_back_to_the_private_environment(tmp_path: Path) -> None:
    running = numpy2_env(tmp_path / "project")
    private = fitting_env(stub_python.private_env(tmp_path / "project"))
    chosen = stub_python.choose(running=running, prefix=tmp_path / "project")
    assert chosen.python == private and chosen.problem() is None


def test_choose_without_a_fitting_environment_names_both_versions_and_the_fix(tmp_path: Path) -> None:
    running = numpy2_env(tmp_path / "project")
    with pytest.raises(ServerError) as err:
        stub_python.choose(running=running, prefix=tmp_path / "project")
    message = str(err.value)
    assert "imports numpy 2.2.6" in message and "works only with numpy 1.x" in message
    assert stub_python.SETUP_COMMAND in message and str(tmp_path / "project" / stub_python.PRIVATE_ENV) in message


def test_explicit_interpreter_that_does_not_run_is_named(tmp_path: Path) -> None:
    with pytest.raises(ServerError) as err:
        stub_python.choose(tmp_path / "nope" / "python3")
    assert str(tmp_path / "nope" / "python3") in str(err.value)
