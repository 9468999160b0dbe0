"""`cvload tune`'s input: the space file, its expressions, the search order, and every bad-input error (no server
starts in this module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvload.cli import main
from cvload.errors import EXIT_USAGE, UsageError
from cvload.tune.expr import parse_expr
from cvload.tune.search import TPE, Exhaustive
from cvload.tune.space import load_space

HEAD = 'profile = "instant"\nslo = ["first_chunk.p95<700ms"]\nduration = "1s"\n[sweep]\nnum_tasks = "1,2"\n'


def space(tmp_path: Path, text: str, head: str = HEAD) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(head + text)
    return path


def tune(capsys: pytest.CaptureFixture[str], path: Path, *args: str) -> tuple[int, str]:
    code = main(["tune", str(path), "--out", str(path.parent / "out"), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_ranges_values_costs_and_constraints(tmp_path: Path) -> None:
    sp = load_space(space(tmp_path, "[tune]\nconstraints = [\"mem <= 9\"]\n[tune.knobs]\n"
                                    "token2wav_instances = {min = 1, max = 3}\nbls_instances = [2, 8, 2]\n"
                                    "max_batch_size = 16\n[tune.cost]\nmem = \"2 + 2.5 * token2wav_instances\"\n"))
    assert sp.knobs == {"token2wav_instances": [1, 2, 3], "bls_instances": [2, 8], "max_batch_size": [16]}
    assert sp.size == 6
    assert sp.cost({"token2wav_instances": 3, "bls_instances": 2, "max_batch_size": 16}) == {"mem": 9.5}
    feasible = sp.feasible()
    assert len(feasible) == 4 and all(k["token2wav_instances"] < 3 for k in feasible)
    assert sp.method() == "exhaustive" and sp.pareto_cost == "mem"
    assert sp.scenario["slo"] == ["first_chunk.p95<700ms"] and sp.scenario["duration"] == 1.0


def test_expressions_are_data_not_code() -> None:
    expr = parse_expr("max(a, 2) * 3 <= 9 and not a == 5", "here", ["a"])
    assert expr({"a": 1}) is True and expr({"a": 4}) is False
    for bad in ("__import__('os')", "a.real", "[a]", "'text' < a", "open(a)"):
        with pytest.raises(UsageError):
            parse_expr(bad, "here", ["a"])


def test_exhaustive_puts_the_baseline_first_and_never_repeats(tmp_path: Path) -> None:
    sp = load_space(space(tmp_path, "[tune.knobs]\ntoken2wav_instances = [1, 2]\nbls_instances = [2, 4]\n"))
    search = Exhaustive(sp, first=[{"token2wav_instances": 1, "bls_instances": 4}])
    order = []
    while (knobs := search.ask()) is not None:
        order.append((knobs["token2wav_instances"], knobs["bls_instances"]))
        search.tell(knobs, 1.0)
    assert order == [(1, 4), (1, 2), (2, 2), (2, 4)]


def test_tpe_is_seeded_and_respects_the_constraints(tmp_path: Path) -> None:
    sp = load_space(space(tmp_path, "[tune]\nconstraints = [\"token2wav_instances + bls_instances <= 12\"]\n"
                                    "[tune.knobs]\ntoken2wav_instances = {min = 1, max = 4}\n"
                                    "bls_instances = {min = 1, max = 10}\n"))

    def proposals(seed: int) -> list[tuple]:
        search = TPE(sp, trials=8, seed=seed)
        seen = []
        while (knobs := search.ask()) is not None:
            seen.append(tuple(knobs.values()))
            assert not sp.violated(knobs)
            search.tell(knobs, knobs["token2wav_instances"] * 2.0)  # a made-up capacity, same for both runs
        return seen

    first = proposals(3)
    assert len(first) == 8 and len(set(first)) == 8
    assert proposals(3) == first


@pytest.mark.parametrize(("text", "expected"), [
    ("[tune.knobs]\ntoken2wav_instance = [1, 2]\n",
     "'token2wav_instance' is not a knob of this deployment (did you mean 'token2wav_instances'?)"),
    ("", "no [tune] table: an empty space"),
    ("[tune]\nseed = 1\n", "[tune.knobs] is empty: an empty space"),
    ("[tune.knobs]\nbls_instances = []\n", "bls_instances: no values: an empty space"),
    ("[tune.knobs]\nbls_instances = {min = 4, max = 2}\n", "max 2 is below min 4"),
    ("[tune]\nconstraints = [\"bls_instances > 4\", \"bls_instances < 3\"]\n[tune.knobs]\n"
     "bls_instances = {min = 2, max = 8}\n",
     "the constraints exclude every candidate ('bls_instances > 4' admits 4 of 7; 'bls_instances < 3' admits 1 of "
     "7; together none)"),
    ("[tune]\nconstraints = [\"bls_instance > 4\"]\n[tune.knobs]\nbls_instances = [2]\n",
     "names 'bls_instance', which is no knob or cost (did you mean 'bls_instances'?)"),
    ("[tune]\nserch = \"tpe\"\n[tune.knobs]\nbls_instances = [2]\n", "unknown key 'serch' in [tune] (did you mean "
     "'search'?)"),
    ("[tune]\nbudget = \"3s\"\n[tune.knobs]\nbls_instances = [2]\n",
     "budget 3 s is too small for one candidate"),
])
def test_bad_spaces_exit_2_naming_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                              expected: str) -> None:
    code, output = tune(capsys, space(tmp_path, text))
    assert code == EXIT_USAGE, output
    assert expected in output
    assert "Traceback" not in output
    assert not (tmp_path / "out").exists()  # nothing started


def test_no_objectives_and_budget_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = space(tmp_path, "[tune.knobs]\nbls_instances = [2]\n", head='profile = "instant"\n')
    code, output = tune(capsys, path)
    assert code == EXIT_USAGE and "no objectives" in output
    code, output = tune(capsys, space(tmp_path, "[tune.knobs]\nbls_instances = [2]\n"), "--budget", "2s")
    assert code == EXIT_USAGE and "budget 2 s is too small for one candidate" in output


def test_plan_shows_reloads_not_relaunches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = space(tmp_path, "[tune.knobs]\ntoken2wav_instances = [1, 2]\nmax_batch_size = [8, 16]\n")
    code, output = tune(capsys, path, "--plan")
    assert code == 0, output
    lines = output.splitlines()
    assert "4 candidate(s)" in lines[0]  # the baseline (1, 16) first, then the rest of the grid
    assert lines[1] == "  1. token2wav_instances=1, max_batch_size=16: launch server (no server running)"
    assert lines[2].startswith("  2. token2wav_instances=1, max_batch_size=8: reload audio_tokenizer, "
                               "speaker_embedding, tensorrt_llm, token2wav, cosyvoice2")
    assert lines[3].startswith("  3. token2wav_instances=2, max_batch_size=8: reload token2wav (")
    assert not (tmp_path / "out").exists()


def test_the_shipped_pipeline_space_plans_21_candidates(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parent.parent
    code = main(["tune", str(root / "scenarios" / "tune-pipeline.toml"), "--plan"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].endswith("on the emulator, 21 candidate(s)")
    assert out[1] == "  1. token2wav_instances=1, bls_instances=4: launch server (no server running)"
    assert all("launch" not in line for line in out[2:])  # every later candidate is a reload


def test_tpe_measures_a_baseline_outside_the_space_first(tmp_path: Path) -> None:
    sp = load_space(space(tmp_path, "[tune.knobs]\nbls_instances = {min = 5, max = 9}\n"))
    search = TPE(sp, trials=3, seed=0, first=[{"bls_instances": 4}])
    assert search.ask() == {"bls_instances": 4}
    search.tell({"bls_instances": 4}, 2.0)  # outside TPE's distributions: kept, never a trial
    seen = set()
    while (knobs := search.ask()) is not None:
        seen.add(knobs["bls_instances"])
        search.tell(knobs, 1.0)
    assert len(seen) == 2 and seen <= {5, 6, 7, 8, 9}


def test_sweep_settings_are_checked_before_anything_starts(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, output = tune(capsys, space(tmp_path, "[tune.knobs]\nbls_instances = [2]\n"),
                        "--slo", "first_chunk.p95<<700ms")
    assert code == EXIT_USAGE and "first_chunk.p95<<700ms" in output
    bad = HEAD.replace('duration = "1s"', 'duration = "1s"\nmode = "sideways"')
    code, output = tune(capsys, space(tmp_path, "[tune.knobs]\nbls_instances = [2]\n", head=bad))
    assert code == EXIT_USAGE and "sideways" in output
    assert not (tmp_path / "out").exists()


def test_the_emulator_baseline_is_the_profile_as_configured(tmp_path: Path) -> None:
    from cvload.tune.deployments import EmulatorDeployment

    plain = EmulatorDeployment("l20_pipeline", {}, tmp_path)
    assert plain.defaults() == {"bls_instances": 4, "token2wav_instances": 1, "max_batch_size": 16}
    configured = EmulatorDeployment("l20_pipeline", {"token2wav_instances": 2}, tmp_path)
    assert configured.defaults()["token2wav_instances"] == 2
    assert plain.plan({"token2wav_instances": 2}).launch  # nothing serves yet
    plain.pretend(plain.defaults(), plain.plan(plain.defaults()))
    change = plain.plan({"bls_instances": 4, "token2wav_instances": 1, "max_batch_size": 8})
    assert change.reload == ("audio_tokenizer", "speaker_embedding", "tensorrt_llm", "token2wav", "cosyvoice2")


def test_one_cell_format_and_one_tune_file_reader_for_the_tuner_and_the_report(tmp_path: Path) -> None:
    """The console, the dashboard and the report write a candidate's cells alike (a whole float as an integer:
    the report used to write 1e+06), and `cvload report` and `--resume` read tune.json through one reader."""
    from cvload.report.tune import candidates_table
    from cvload.results.tune_file import TUNE_SCHEMA, cell_text, read_tune

    cells = [cell_text(v) for v in (None, True, 1e6, 0.25, 8, "fp16")]
    assert cells == ["-", "true", "1000000", "0.25", "8", "fp16"]
    candidate = {"number": 1, "knobs": {"max_batch": 1e6}, "capacity": 12.0, "bracket": [8.0, 16.0], "cost": {},
                 "status": "measured"}
    table = candidates_table({"space": {"knobs": {"max_batch": [1e6]}, "costs": {}}, "candidates": [candidate]})
    assert table.rows[0][:4] == ["1", "1000000", "12", "[8, 16]"]
    assert read_tune(tmp_path) is None
    (tmp_path / "tune.json").write_text('{"schema": "cvload.tune/0"}')
    with pytest.raises(UsageError, match=f"tune.json: schema 'cvload.tune/0', expected '{TUNE_SCHEMA}'"):
        read_tune(tmp_path)
