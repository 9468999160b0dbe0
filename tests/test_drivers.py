"""`run`, `tui` and `sweep` with the local load drivers: one process (``Engine``) and `--processes 2`
(``ProcessFleet``), against the session's emulator; the Ray row of the matrix is in tests/test_ray.py."""

from __future__ import annotations

import pytest
from drivers import COMMANDS, check_run, check_sweep, command, reference_run_keys, tui

DRIVERS = {"one": {}, "processes": {"processes": 2}}


@pytest.fixture(scope="module")
def run_keys(emulator, tmp_path_factory):
    return reference_run_keys(emulator.grpc, tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_with_every_local_driver(emulator, tmp_path, run_keys, name, driver):
    out = tmp_path / "r"
    options = DRIVERS[driver]
    if name == "tui":
        tui(emulator.grpc, out, **options)
        check_run(out)
        return
    args = [a for key, value in options.items() for a in (f"--{key}", str(value))]
    done = command(name, emulator.grpc, args, out)
    assert done.returncode == 0, done.stderr[-3000:]
    if name == "run":
        check_run(out)
    else:
        check_sweep(out, run_keys)
