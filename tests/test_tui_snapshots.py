"""SVG snapshots of the dashboard on deterministic data: the committed replay folder (a real run).

A snapshot that differs is written beside the expected one as ``<name>.actual.svg`` (open both in a browser).
After an intended change of the screen: ``CVLOAD_UPDATE_SNAPSHOTS=1 pytest tests/test_tui_snapshots.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cvload.tui.app import DashboardApp
from cvload.tui.replay import ReplaySource

HERE = Path(__file__).parent / "snapshots"
REPO = Path(__file__).parent.parent
SIZE = (150, 46)


async def screenshot(keys: tuple[str, ...] = ()) -> str:
    app = DashboardApp(ReplaySource(Path("tests/snapshots/replay_run")), refresh_s=3600)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
        app.clear_notifications()
        app.draw()
        await pilot.pause()
        return app.export_screenshot(title="cvload tui")


def compare(name: str, svg: str) -> None:
    expected = HERE / f"{name}.svg"
    actual = HERE / f"{name}.actual.svg"
    if os.environ.get("CVLOAD_UPDATE_SNAPSHOTS") or not expected.exists():
        expected.write_text(svg, encoding="utf-8")
        actual.unlink(missing_ok=True)
        if not os.environ.get("CVLOAD_UPDATE_SNAPSHOTS"):
            pytest.fail(f"no snapshot {expected.name} yet: written now, check it and commit it")
        return
    if svg != expected.read_text(encoding="utf-8"):
        actual.write_text(svg, encoding="utf-8")
        pytest.fail(f"screen differs from {expected}; see {actual}")
    actual.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the header names the replayed folder: keep the path the same everywhere


async def test_replay_dashboard():
    compare("replay_dashboard", await screenshot())


async def test_replay_after_reset():
    compare("replay_reset", await screenshot(("r",)))


async def test_help_screen():
    compare("help_screen", await screenshot(("question_mark",)))
