"""`cvload tune --tui`: the dashboard shows a tune live (the candidate measured now, its sweep's levels, the table
of candidates so far with the best marked), driven by Textual's Pilot while a real tritonserver with the pipeline
emulator is reconfigured between candidates in the measuring process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from cvload.cli import main
from cvload.errors import EXIT_OK, EXIT_USAGE
from cvload.tui.app import DashboardApp
from cvload.tui.panels import Panel
from cvload.tui.tune_source import TuneSource
from cvload.tune.setup import TuneRequest, make_tuner

# Two candidates, one level each at first: the second starts at the first's capacity (1) and bisects up to 2.
SPACE = """profile = "instant"
slo = ["first_chunk.p95<2000ms"]
duration = "1s"
warmup = 1
drain = "2s"
[sweep]
num_tasks = "1"
[tune]
baseline = false
repeat = 0
[tune.knobs]
token2wav_instances = [1, 2]
bls_instances = 2
"""


async def until(pilot: Pilot, cond: Callable[[], bool], what: str, shown: Callable[[], str],
                timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{shown()}")
        await pilot.pause(0.05)


def rows(panel: str) -> dict[int, str]:
    """The tune panel's candidate rows by number."""
    out = {}
    for line in panel.splitlines():
        first = line.split()[0] if line.split() else ""
        if first.isdigit():
            out[int(first)] = line
    return out


# Timing: candidate 1's level must meet its objective on an emulated pipeline computing on this host's CPUs;
# beside three busy pytest-xdist workers it did not; beside one other paired test it does (docs/testing.md).
@pytest.mark.paired
async def test_dashboard_shows_the_tune_live(tmp_path: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    request = TuneRequest(space=str(space), out=str(tmp_path / "out"))
    source = TuneSource(make_tuner(request).base, request)
    app = DashboardApp(source)

    def tune() -> str:
        return app.query_one("#tune", Panel).plain()

    def sweep() -> str:
        return app.query_one("#sweep", Panel).plain()

    def both() -> str:
        return tune() + "\n" + sweep() + "\n" + str(app.query_one("#header").render())

    async with app.run_test(size=(160, 48)) as pilot:
        assert not app.query("#gpu") and not app.query("#recent")  # the tune and sweep panels take their place
        await until(pilot, lambda: "measuring ..." in rows(tune()).get(1, ""), "candidate 1 measuring", both)
        assert tune().startswith("candidate 1: token2wav_instances=1, bls_instances=2")
        await until(pilot, lambda: "1  measuring" in sweep(), "candidate 1's level in the sweep panel", both)
        # Candidate 2 measures while candidate 1's row holds its capacity, marked as the best so far.
        await until(pilot, lambda: "measuring ..." in rows(tune()).get(2, ""), "candidate 2 measuring", both)
        first = rows(tune())[1]
        assert "measured" in first and "◀ best" in first and "[1, -]" in first, both()
        assert "candidate 2;" in str(app.query_one("#header").render())
        await until(pilot, lambda: "measuring" in sweep(), "candidate 2's sweep in the sweep panel", both)
        await until(pilot, lambda: source.done, "the tune's end", both, timeout=90)
        await until(pilot, lambda: source.tune is not None and source.tune["status"] == "completed",
                    "the final table", both)
        await pilot.pause(0.5)  # a frame after the last message
        final = tune()
        await pilot.press("q")
    assert source.exit_code() == EXIT_OK
    result = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert [c["status"] for c in result["candidates"]] == ["measured", "measured"]
    best = result["best"]["number"]
    shown = rows(final)
    assert set(shown) == {1, 2}, final
    for number, line in shown.items():
        assert ("◀ best" in line) == (number == best), final
        capacity = result["candidates"][number - 1]["capacity"]
        assert f" {capacity} " in line, final
    assert final.startswith("tune completed: every candidate measured"), final
    assert source.tune_result is not None and source.tune_result["best"]["number"] == best


def test_tui_and_json_are_one_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    assert main(["tune", str(space), "--tui", "--json", "--out", str(tmp_path / "out")]) == EXIT_USAGE
    assert "--tui and --json" in capsys.readouterr().err
