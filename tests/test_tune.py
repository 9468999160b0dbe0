"""`cvload tune --emulator` end to end on tiny spaces: a real tritonserver with the pipeline emulator, reconfigured
through Triton's repository API between candidates, each candidate measured by the sweep's bisect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvload.cli import main
from cvload.errors import EXIT_OK, EXIT_SLO_FAILED
from server_bootstrap.config import load_config

# Two chunks a request, 0.3 s of token2wav each: with a token2wav instance per stream the first chunk takes one
# vocoder job (~0.3 s); a stream queued behind the other's job on one instance waits for it (~0.6 s): two streams
# pass with 2 instances and fail with 1.
HEAD = """profile = "instant"
profile_set = { vocoder_base_s = 0.3, hop_growth = 8.0 }
slo = ["first_chunk.p95<450ms"]
duration = "1s"
warmup = 2
drain = "3s"
"""


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, *args: str) -> tuple[int, str, str]:
    path = tmp_path / "space.toml"
    path.write_text(HEAD + text)
    code = main(["tune", str(path), "--emulator", "--out", str(tmp_path / "out"), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# Candidate 1 must meet first_chunk.p95<450ms at 2 streams on a pipeline emulator computing on this host's CPUs
# (and candidate 2 must not): beside busy xdist workers it measured 736 ms in a fresh-clone CI run; beside one other
# paired test, 316-335 ms (and 605-615 ms), as alone.
@pytest.mark.paired
def test_tune_prunes_reloads_remeasures_writes_the_best_and_resumes(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    space = ("[sweep]\nnum_tasks = \"2\"\n[tune]\nbaseline = false\nrepeat = 1\n[tune.knobs]\ntoken2wav_instances = [2, 1]\n"
             "bls_instances = 4\n")
    code, out, err = run(tmp_path, capsys, space)
    assert code == EXIT_OK, out + err
    result = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert result["schema"] == "cvload.tune/1" and result["status"] == "completed"
    assert result["search"]["method"] == "exhaustive"
    first, second = result["candidates"]
    assert first["knobs"] == {"token2wav_instances": 2, "bls_instances": 4}
    assert first["status"] == "measured" and first["capacity"] == 2 and first["bracket"] == [2, None]
    assert first["change"]["launch"] is True
    assert first["cost"] == {"instances": 6.0}
    # Early stopping: the second starts at the best capacity so far (2), fails there and is not bisected.
    assert second["status"] == "pruned", second
    assert [lv["value"] for lv in second["levels"]] == [2]
    assert second["change"] == {"launch": False, "reload": ["token2wav"], "rebuild": False, "engine": None,
                                "reason": "token2wav_instances 2 -> 1"}
    sweep = json.loads((tmp_path / "out" / "candidate-002" / "sweep.json").read_text())
    assert sweep["plan"] == [2, 4] and len(sweep["levels"]) == 1  # 4: twice the bar, past the space's levels
    # The best, re-measured once with the space's levels, and written out as a ready config.
    best = result["best"]
    assert best["number"] == 1 and len(best["repeats"]) == 1 and best["spread"]["n"] == 2
    assert (tmp_path / "out" / best["repeats"][0]["folder"] / "sweep.json").is_file()
    assert result["pareto"] == [1]
    config = load_config(tmp_path / "out" / "best" / "bootstrap.toml")
    assert config.target == "emulator" and config.emulator.pipeline
    assert (config.triton.token2wav_instances, config.triton.bls_instances) == (2, 4)
    token2wav = (tmp_path / "out" / "best" / "model_repository" / "token2wav" / "config.pbtxt").read_text()
    assert "count: 2" in token2wav
    assert "best: candidate 1 (token2wav_instances=2, bls_instances=4): capacity 2" in out
    assert "candidate 2: token2wav_instances=1, bls_instances=4: reload token2wav" in err
    # The report: capacity against cost with the Pareto front, every candidate, the best one's sweep.
    assert main(["report", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "cvload tune report" in report and "Capacity against cost" in report
    assert "| **1** | **2** | **4** | **2** | **[2, -]** |" in report and "| 2 | 1 | 4 | - | [-, 2] |" in report
    capsys.readouterr()
    # --resume: both candidates were measured, so nothing is measured again but the best's repeat.
    code, out, err = run(tmp_path, capsys, space, "--resume", "--repeat", "0")
    assert code == EXIT_OK, out + err
    again = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert [c["status"] for c in again["candidates"]] == ["measured", "pruned"]
    assert "candidate 1:" not in err and "candidate 2:" not in err


# Paired: beside four busy xdist workers in a fresh-clone CI run, the measurable candidate once came out "failed"
# instead of "no_capacity" (not reproduced since, even beside three busy-looping processes; the assertion now
# prints its reason). Its server launches and reloads a pipeline emulator computing on this host's CPUs.
@pytest.mark.paired
def test_objectives_no_candidate_meets_exit_3_naming_the_closest(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # max_batch_size beyond int32: Triton cannot parse the model configs (at launch or at reload, as TPE orders them).
    space = ("[sweep]\nnum_tasks = \"1\"\n[tune]\nbaseline = false\nrepeat = 0\nsearch = \"tpe\"\ntrials = 2\n[tune.knobs]\n"
             "max_batch_size = [16, 1000000000000]\n")
    code, out, err = run(tmp_path, capsys, space, "--slo", "first_chunk.p95<100ms")
    assert code == EXIT_SLO_FAILED, out + err
    result = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert result["search"]["method"] == "tpe"
    measured, broken = sorted(result["candidates"], key=lambda c: c["knobs"]["max_batch_size"])
    assert measured["status"] == "no_capacity" and measured["capacity"] is None, (measured, err)
    # A candidate whose server cannot serve its knobs is recorded with Triton's reason, not skipped.
    assert broken["status"] == "failed" and "Integer out of range (1000000000000)" in broken["reason"]
    assert result["best"] is None and result["closest"]["number"] == measured["number"]
    assert f"no candidate met the objectives; closest: candidate {measured['number']} (max_batch_size=16): " \
           "first_chunk.p95<100ms measured" in out
    assert not (tmp_path / "out" / "best").exists()
