"""SVG snapshots of the dashboard on deterministic data: the committed replay folder (a real run).

Compared by pytest-textual-snapshot (``snap_compare``); the expected screens are in
``__snapshots__/test_tui_snapshots/``. A mismatch writes an HTML report with both screens side by side
(``snapshot_report.html``). After an intended change of the screen: ``pytest tests/test_tui_snapshots.py
--snapshot-update``, then look at the new SVGs before committing them. The screens depend on Textual's rendering:
pyproject pins the Textual releases they were made with.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot

from cvload.tui.app import DashboardApp
from cvload.tui.replay import ReplaySource

REPO = Path(__file__).parent.parent
REPLAY = Path("tests/fixtures/replay_run")  # relative: the header names the replayed folder as given
SIZE = (150, 46)


def dashboard() -> DashboardApp:
    return DashboardApp(ReplaySource(REPLAY), refresh_s=3600)  # no timer redraws: one frame per action


def after(*keys: str):
    """Press ``keys``, then drop the toasts they raised and draw one frame: the screen shows their effect only."""

    async def run_before(pilot: Pilot) -> None:
        await pilot.pause()
        await pilot.press(*keys)
        pilot.app.clear_notifications()
        pilot.app.draw()

    return run_before


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the header names the replayed folder: keep the path the same everywhere


def test_replay_dashboard(snap_compare):
    assert snap_compare(dashboard(), terminal_size=SIZE, run_before=after())


def test_replay_after_reset(snap_compare):
    assert snap_compare(dashboard(), terminal_size=SIZE, run_before=after("r"))


def test_help_screen(snap_compare):
    assert snap_compare(dashboard(), terminal_size=SIZE, run_before=after("question_mark"))
