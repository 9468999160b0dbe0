"""A fresh `make install` prints nothing but errors: the build backend (setuptools, what pip runs for
`pip install -e .`) must not warn about the project's metadata or its layout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BUILD = """
import sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import setuptools.build_meta as backend
    backend.build_editable(sys.argv[1])
for w in caught:
    print(f"caught {w.category.__name__}: {str(w.message).strip().splitlines()[0]}")
"""


def test_an_editable_build_warns_about_nothing(tmp_path: Path) -> None:
    """The PEP 660 build pip runs for `make install`, on a copy of the project (the build writes egg-info)."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    for package in ("cvload", "server_bootstrap"):
        shutil.copytree(ROOT / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "wheel").mkdir()
    done = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path / "wheel")], cwd=project,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((tmp_path / "wheel").glob("cvload-*.whl")), done.stderr[-2000:]
    caught = [line for line in done.stdout.splitlines() if line.startswith("caught ")]
    assert caught == [], caught  # e.g. "`project.license` as a TOML table is deprecated"
    assert "Warning" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]
