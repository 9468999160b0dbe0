"""Stages that need no GPU, run for real: long commands with log and progress, the CosyVoice source stage
against a local git remote, and the download stage where its tools are missing."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cvload.errors import CvloadError, UsageError
from cvload.subprocesses import run_logged
from server_bootstrap.config import load_config
from server_bootstrap.layout import Layout
from server_bootstrap.pipeline import context
from server_bootstrap.stages import Download, Source, StageLog

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "protocol.file.allow=always"]


def test_long_command_logs_everything_and_shows_progress(tmp_path: Path) -> None:
    out = io.StringIO()
    target = tmp_path / "engine"
    log = tmp_path / "logs" / "build.log"
    # a "long" command: it writes its output, then takes a few progress periods to finish
    script = ("import pathlib, sys, time\np = pathlib.Path(sys.argv[1]); p.mkdir()\n"
              "(p / 'rank0.engine').write_bytes(b'x' * 4096)\nprint('building', flush=True)\ntime.sleep(0.4)\n"
              "print('built')\n")
    elapsed = run_logged([sys.executable, "-c", script, str(target)], log, label="build", out=out, watch=[target],
                         progress_every=0.1)
    assert elapsed > 0.3
    assert "building" in log.read_text() and "built" in log.read_text()
    assert f"$ {sys.executable} -c" in log.read_text()
    progress = [line for line in out.getvalue().splitlines() if "elapsed" in line]
    assert progress and "engine 4.0 KiB" in progress[-1] and "log " in progress[-1]


def test_failing_and_missing_commands_say_what_to_do(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    with pytest.raises(CvloadError) as info:
        run_logged([sys.executable, "-c", "print('boom: no GPU'); raise SystemExit(3)"], log, label="build",
                   out=io.StringIO(), hint="read the log")
    assert "exited with code 3" in info.value.message and "boom: no GPU" in info.value.message
    assert str(log) in info.value.message and info.value.hint == "read the log"
    with pytest.raises(CvloadError) as info:
        run_logged(["huggingface-cli-not-here", "download"], log, label="download", out=io.StringIO())
    assert "`huggingface-cli-not-here` not found" in info.value.message


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, str]:
    """A local stand-in for the CosyVoice repository: two commits, the pinned one holding model_repo."""
    repo = tmp_path / "remote"
    (repo / "runtime" / "triton_trtllm" / "model_repo" / "cosyvoice2").mkdir(parents=True)
    (repo / "runtime" / "triton_trtllm" / "model_repo" / "cosyvoice2" / "config.pbtxt").write_text("name: x\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*GIT, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-q", "-m", "templates"], check=True)
    pinned = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    (repo / "README").write_text("later\n")
    subprocess.run([*GIT, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-q", "-m", "later"], check=True)
    return repo, pinned


def source_stage(tmp_path: Path, toml: str) -> tuple[Source, StageLog, io.StringIO]:
    cfg = tmp_path / "deploy.toml"
    cfg.write_text(toml)
    config = load_config(cfg)
    out = io.StringIO()
    layout = Layout(tmp_path / "w", config)
    stage = Source(context(config, layout, out))
    return stage, StageLog(layout.stage_log("source"), out), out


def test_source_clones_the_pinned_commit_and_recovers_from_a_broken_clone(tmp_path: Path,
                                                                          remote: tuple[Path, str]) -> None:
    repo, pinned = remote
    stage, log, out = source_stage(tmp_path, f'[source]\nrepo = "{repo}"\ncommit = "{pinned[:12]}"\n')
    assert not stage.done()
    (stage.layout.source / "half").mkdir(parents=True)  # what an interrupted clone leaves
    summary = stage.run(log)
    assert stage.done() and pinned[:12] in summary
    assert "removing" in out.getvalue() and "an interrupted clone" in out.getvalue()
    assert not (stage.layout.source / "README").exists()  # at the pinned commit, not the newest
    assert "$ git clone --recursive" in stage.log_path.read_text()


def test_existing_checkout_is_checked_never_changed(tmp_path: Path, remote: tuple[Path, str]) -> None:
    repo, pinned = remote
    stage, log, _ = source_stage(tmp_path, f'[source]\npath = "{repo}"\ncommit = "{pinned}"\n')
    with pytest.raises(UsageError) as info:
        stage.run(log)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert f"is at commit {head[:12]}, the config pins {pinned[:12]}" in info.value.message
    assert f'set [source] commit = "{head}"' in (info.value.hint or "")
    assert "later" in (repo / "README").read_text()  # untouched
    stage, log, _ = source_stage(tmp_path, f'[source]\npath = "{repo}"\ncommit = "{head}"\n')
    assert stage.done() and "using" in stage.run(log)


@pytest.mark.skipif(shutil.which("huggingface-cli") is not None, reason="huggingface-cli is installed here")
def test_download_without_its_tool(tmp_path: Path) -> None:
    config = load_config()
    out = io.StringIO()
    layout = Layout(tmp_path / "w", config)
    stage = Download(context(config, layout, out))
    with pytest.raises(CvloadError) as info:
        stage.run(StageLog(layout.stage_log("download"), out))
    assert "`huggingface-cli` not found" in info.value.message
    assert info.value.hint == "pip install -U 'huggingface_hub[cli]'"
