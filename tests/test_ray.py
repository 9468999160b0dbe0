"""``--ray-address``: a real local Ray cluster of two nodes (a head and a second raylet, one CPU each), the load
processes placed one per node, their records merged into one results folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvload import process
from cvload.cli import main

ray = pytest.importorskip("ray", reason="Ray is the optional extra cvload[ray]")
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_node(args: list[str], tmp: Path, name: str) -> subprocess.Popen[bytes]:
    """One ``ray start --block`` in its own process group: ending the group ends that node's Ray processes."""
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the node's life
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus", "1", "--object-store-memory", "80000000",
                             "--disable-usage-stats", *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("ray")
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [ray_node(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                       f"--temp-dir={tmp / 'r'}"], tmp, "head")]
    try:
        process.wait_until(lambda: _gcs_up(port) or _dead(nodes), 90, what="the Ray head")
        assert not _dead(nodes), (tmp / "head.log").read_text()[-2000:]
        nodes.append(ray_node([f"--address={address}", "--node-ip-address=127.0.0.1"], tmp, "worker"))
        process.wait_until(lambda: _alive_nodes(address) >= 2 or _dead(nodes), 120, what="two Ray nodes")
        assert not _dead(nodes), (tmp / "worker.log").read_text()[-2000:]
        yield address
    finally:
        for node in reversed(nodes):
            process.end(node, grace=15.0, sigterm="group")


def _dead(nodes: list[subprocess.Popen[bytes]]) -> bool:
    return any(n.poll() is not None for n in nodes)


def _gcs_up(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive_nodes(address: str) -> int:
    out = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, text=True, timeout=30)
    return out.stdout.count("node_") if out.returncode == 0 else 0


def test_two_nodes_one_results_folder(ray_cluster, emulator, tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["run", "--quiet", "--server", emulator.grpc, "--num-tasks", "4", "--requests", "24",
                 "--ramp", "0.2s", "--ray-address", ray_cluster, "--processes", "2", "--metrics-url", "none",
                 "--gpu-source", "none", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert summary["requests"]["total"] == 24 and summary["requests"]["ok"] == 24
    assert sorted(r["index"] for r in records) == list(range(24))
    assert {r["worker"] for r in records} == set(range(4))
    assert 200 <= summary["metrics"]["first_chunk_latency_ms"]["p50"] < 300
    placement = summary["client"]["placement"]
    assert len({p["node_id"] for p in placement}) == 2  # spread: one load process per node
    assert all(p["clock_offset_ms"] == 0.0 for p in placement)  # one kernel: the same monotonic clock
    assert err.count("clock offset") == 2
    assert summary["concurrency"]["achieved_mean"] == pytest.approx(4, abs=0.5)


def test_more_processes_than_cluster_cpus_is_a_usage_error(ray_cluster, emulator, tmp_path, capsys):
    code = main(["run", "--quiet", "--server", emulator.grpc, "--num-tasks", "8", "--ray-address", ray_cluster,
                 "--processes", "3", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "has 2 CPUs" in capsys.readouterr().err
