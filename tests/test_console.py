"""The console's end-of-run warnings, from summaries as a run writes them."""

from __future__ import annotations

from cvload.console import summary_warnings


def summary(total: int, requested: int, achieved: float) -> dict:
    return {"requests": {"total": total}, "concurrency": {"requested": requested, "achieved_mean": achieved}}


def test_achieved_concurrency_is_judged_only_where_the_load_had_a_steady_state() -> None:
    short = [w for w in summary_warnings(summary(1, 1, 0.6)) if "fell short" in w]
    assert short == []  # one request: its start and end are most of the run
    assert summary_warnings(summary(6, 4, 2.0)) == []  # fewer than three rounds a stream
    warned = summary_warnings(summary(40, 4, 2.0))
    assert len(warned) == 1 and "achieved concurrency 2.0 fell short of the 4 requested" in warned[0]
    assert summary_warnings(summary(40, 4, 3.9)) == []
