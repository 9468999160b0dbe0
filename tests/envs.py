"""Real Python environments for the stub tests: venvs without pip, with chosen files in their site-packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cvload.triton import stub_python


def make_env(path: Path, site: dict[str, str], python: str | Path = sys.executable) -> Path:
    """A venv made by ``python`` (no pip) with ``site`` written into its site-packages; returns its python3."""
    subprocess.run([str(python), "-m", "venv", "--without-pip", str(path)], check=True)
    packages = next(path.glob("lib/python3*/site-packages"))
    for name, text in site.items():
        (packages / name).parent.mkdir(parents=True, exist_ok=True)
        (packages / name).write_text(text)
    return path / "bin" / "python3"


def numpy2_env(path: Path) -> Path:
    """An environment whose numpy says 2.2.6 (all the check reads)."""
    return make_env(path, {"numpy/__init__.py": '__version__ = "2.2.6"\n'})


def fitting_env(path: Path, site: dict[str, str] | None = None) -> Path:
    """A second environment the stub works with: made by the interpreter the launcher would choose here (this one
    on Python 3.10-3.12, the private one on 3.13), seeing that one's numpy 1.x through a .pth."""
    chosen = stub_python.choose()
    assert chosen.numpy_path is not None
    pth = {"chosen.pth": f"{Path(chosen.numpy_path).parent}\n"}
    return make_env(path, {**pth, **(site or {})}, python=chosen.python)
