"""The server's side of a barge-in on a real Triton server (--triton-trace, token2wav statistics): the pipeline
emulator's BLS front, honouring cancellation or ignoring it, seen only through Triton's own trace and statistics
(``--server``, not the emulator's private trace)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cvload.emulator import build_pipeline_repository, get_profile
from cvload.errors import EXIT_USAGE
from cvload.telemetry.server_release import parse_trace, read_trace
from cvload.triton.launcher import TritonServer, trace_args
from tests.conftest import FAST_EXIT, Emulator
from tests.runs import load, run_cli


def test_parse_trace_reads_a_file_being_written(tmp_path: Path) -> None:
    """Triton leaves its JSON array open until the file is closed; a half-written object is skipped."""
    text = ('[{"id":1,"model_name":"cosyvoice2","model_version":1,"request_id":"r-0"},'
            '{"id":1,"timestamps":[{"name":"REQUEST_END","ns":2000000000}]},'
            '{"id":2,"model_name":"token2wav","model_version":1,"request_id":"r-0","parent_id":1},{"id":2,"ti')
    assert [o["id"] for o in parse_trace(text)] == [1, 1, 2]
    (tmp_path / "t.json.0").write_text(text)
    traced = read_trace(tmp_path / "t.json")
    assert traced[1].request_id == "r-0" and traced[1].last("REQUEST_END") == 2.0 and traced[2].parent == 1


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path]]:
    """One server, two fronts over the same token2wav: ``cosyvoice2`` honours cancellation, ``ignoring`` does
    not; started as a deployment that names its trace file (tracing off until a run switches it on)."""
    root = tmp_path_factory.mktemp("traced")
    build_pipeline_repository(root, get_profile("demo", {"ignore_cancel": True}), name="ignoring",
                              prompt_models=False)
    repo = build_pipeline_repository(root, get_profile("demo"), prompt_models=False)
    with TritonServer(repo, workdir=root / "server", extra_args=[*FAST_EXIT, *trace_args(root / "trace.json")]) \
            as server:
        yield server, root


def _run(tmp_path: Path, address: str, model: str, *args: str) -> dict[str, Any]:
    out = tmp_path / model
    assert run_cli("--server", address, "--model", model, "--spk-cache", "--num-tasks", "4",
                   "--requests", "12", "--barge-in", "50%@first_chunk", "--triton-trace", "--out", str(out),
                   *args) == 0
    summary, records = load(out)
    requests = summary["requests"]
    assert requests["ok"] + requests["failed"] + requests["cancelled"] + requests["barged_in"] == 12
    rows = [json.loads(line) for line in (out / "barge_in.jsonl").read_text().splitlines()]
    section = summary["barge_in"]
    assert section["abandoned"] == len(rows) == requests["barged_in"] > 0
    assert section["server_release_source"] == "triton_trace"
    # Triton 2.51 loses the odd request tree's trace (docs/barge-in.md); the others are all there
    assert section["server_traced"] >= len(rows) - 1 and all(r["server_release_ms"] >= 0 for r in rows
                                                             if "server_release_ms" in r)
    assert section["release_source"] == ("server" if section["server_traced"] == len(rows) else "client")
    # the statistics: every call made a chunk someone received, or nobody received it
    calls = section["server_token2wav"]
    assert calls["token2wav_calls"] == calls["chunks_received"] + calls["token2wav_unreceived"]
    assert calls["chunks_received"] == sum(len(r["chunk_offsets"]) for r in records)
    return section


def _trace_level(server: TritonServer) -> list[str]:
    with urllib.request.urlopen(f"http://{server.http_url.split('://')[-1]}/v2/trace/setting", timeout=5) as resp:
        return json.loads(resp.read())["trace_level"]


def test_honouring_front_stops(traced: tuple[TritonServer, Path], tmp_path: Path) -> None:
    """Abandoned after the first chunk, a front that checks is_cancelled() makes at most the token2wav call
    already under way; the run leaves the server's tracing as it found it (off); the dashboard's replay of the
    run shows the release from Triton's trace."""
    server, _ = traced
    section = _run(tmp_path, server.grpc_url, "cosyvoice2")
    assert section["server_token2wav_after_abandon"] <= section["abandoned"]
    assert section["server_token2wav"]["token2wav_unreceived"] <= section["abandoned"]
    assert _trace_level(server) == ["OFF"]
    shown = asyncio.run(_throughput_panel(tmp_path / "cosyvoice2"))
    expected = "(triton trace)" if section["release_source"] == "server" else "(client)"
    assert f"barge-in 50%@first_chunk: {section['abandoned']} abandoned" in shown and expected in shown


async def _throughput_panel(folder: Path) -> str:
    """The dashboard's Throughput panel replaying a results folder."""
    from cvload.tui.app import DashboardApp
    from cvload.tui.panels import Panel
    from cvload.tui.replay import ReplaySource

    app = DashboardApp(ReplaySource(folder))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        shown = app.query_one("#throughput", Panel).plain()
        await pilot.press("q")
    return shown


def test_ignoring_front_is_exposed(traced: tuple[TritonServer, Path], tmp_path: Path) -> None:
    """A front that ignores cancellation makes the rest of each abandoned request: more than one token2wav call
    per abandoned request after its abandon, audio nobody received, a release past the client's (HTTP: the
    trace API and generate_stream)."""
    server, _ = traced
    section = _run(tmp_path, server.http_url, "ignoring", "--protocol", "http")
    assert section["server_token2wav_after_abandon"] > section["abandoned"]
    assert section["server_token2wav"]["token2wav_unreceived"] > section["abandoned"]
    assert section["server_audio_after_abandon_s"] > 0 and section["server_token2wav"]["audio_unreceived_s"] > 0
    assert section["server_release_ms"]["p50"] > section["client_release_ms"]["p50"]


def test_server_without_trace_file(emulator: Emulator, tmp_path: Path) -> None:
    """A server started without a trace file: said in the section, the release is the client's."""
    out = tmp_path / "o"
    assert run_cli("--server", emulator.grpc, "--model", "cosyvoice2_instant", "--num-tasks", "2", "--requests",
                   "4", "--barge-in", "50%@first_chunk", "--triton-trace", "--out", str(out)) == 0
    section = json.loads((out / "summary.json").read_text())["barge_in"]
    assert section["release_source"] == "client" and "--trace-config" in section["triton_trace_problem"]
    assert "server_token2wav" not in section  # no token2wav model: no aggregate


def test_triton_trace_needs_barge_in(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--server", "127.0.0.1:1", "--triton-trace") == EXIT_USAGE
    assert "add --barge-in" in capsys.readouterr().err
