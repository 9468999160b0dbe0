"""cvload's own metrics seen by a real Prometheus server (Debian's `prometheus`) and a real Pushgateway
(`prometheus-pushgateway`), each started here on free loopback ports, against the session's embedded Triton."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cvload import subprocesses
from cvload.measure.metrics import BY_NAME, values
from cvload.results.exporter import HISTOGRAMS, bucket_of
from cvload.results.writer import read_records
from cvload.triton.launcher import accepts, free_ports
from tests.runs import load, run_cli

SCRAPE = "500ms"


def _binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        pytest.skip(f"{name} not installed (make system-deps installs it)")
    return found


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


@dataclass
class Prometheus:
    url: str
    cvload_port: int

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
        answer = json.loads(_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode(params)))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None


def _start(cmd: list[str], folder: Path, port: int, what: str) -> subprocess.Popen:
    log = (folder / "log.txt").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {(folder / 'log.txt').read_text()[-2000:]}")
        return accepts("127.0.0.1", port, timeout=0.2)

    subprocesses.wait_until(up, 20.0, what=what)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def prometheus(emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Scrapes cvload (on a port chosen here) and the embedded Triton's /metrics every 0.5 s."""
    binary = _binary("prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    web_port, cvload_port = free_ports(2)
    triton = urllib.parse.urlparse(emulator.server.metrics_url)
    (folder / "prometheus.yml").write_text(f"""
global: {{scrape_interval: {SCRAPE}, scrape_timeout: {SCRAPE}}}
scrape_configs:
  - job_name: cvload
    static_configs: [{{targets: ["127.0.0.1:{cvload_port}"]}}]
  - job_name: triton
    static_configs: [{{targets: ["{triton.netloc}"]}}]
""")
    proc = _start([binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
                   f"--web.listen-address=127.0.0.1:{web_port}"], folder, web_port, "prometheus")
    yield Prometheus(f"http://127.0.0.1:{web_port}", cvload_port)
    _stop(proc)


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _binary("prometheus-pushgateway")
    folder = tmp_path_factory.mktemp("pushgateway")
    (port,) = free_ports(1)
    proc = _start([binary, f"--web.listen-address=127.0.0.1:{port}"], folder, port, "pushgateway")
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


def _counted(families: dict, name: str, **labels: str) -> float:
    return sum(s.value for s in families[name].samples
               if s.name == f"{name}_total" and all(s.labels.get(k) == v for k, v in labels.items()))


def test_prometheus_scrapes_cvload_beside_triton(emulator, prometheus: Prometheus, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = run_cli("--server", emulator.grpc, "--num-tasks", "4", "--duration", "3s", "--out", str(out),
                   "--prometheus-port", str(prometheus.cvload_port), "--prometheus-address", "127.0.0.1",
                   "--prometheus-linger", "3s", "--metrics-url", emulator.server.metrics_url)
    assert code == 0
    summary, records = load(out)
    run = f'run_id="{out.name}"'
    # The linger is there so a scrape sees the final numbers: cvload_run_finished is 1 in it.
    subprocesses.wait_until(lambda: prometheus.value(f"max_over_time(cvload_run_finished{{{run}}}[5m])") == 1.0,
                       10.0, what="Prometheus to scrape cvload's final numbers")

    def last(metric: str, extra: str = "") -> str:
        return f"last_over_time({metric}{{{run}{extra}}}[5m])"

    measured_q, ok_q = last("cvload_requests_total", ',outcome=~"ok|failed"'), last("cvload_requests_total", ',outcome="ok"')
    measured, ok = prometheus.value(f"sum({measured_q})"), prometheus.value(f"sum({ok_q})")
    assert measured == summary["requests"]["total"] == len([r for r in records if not r["warmup"]])
    assert ok == summary["requests"]["ok"]
    assert prometheus.value(f"max({last('cvload_requested_concurrency')})") == 4
    # Prometheus' p95 is read from the buckets: it lies in the bucket of the request of rank ceil(0.95 n), which
    # is the summary's exact p95 (interpolated at 0.95 (n - 1)) where the tail is dense, not always where it is
    # sparse (a busy host once put 28 requests' 27th first chunk at 406 ms, the p95 at 315 ms).
    measured_records = [r for r in read_records(out) if not r.warmup]
    for exported in HISTOGRAMS[:2]:
        observed = sorted(v * exported.scale for v in values(measured_records, BY_NAME[exported.metric]))
        assert len(observed) == summary["metrics"][exported.metric]["count"]
        assert observed[math.floor(0.95 * (len(observed) - 1))] <= \
            summary["metrics"][exported.metric]["p95"] * exported.scale <= observed[math.ceil(0.95 * (len(observed) - 1))]
        prom_s = prometheus.value(f"histogram_quantile(0.95, sum by (le) "
                                  f"({last('cvload_' + exported.name + '_bucket')}))")
        low, high = bucket_of(observed[math.ceil(0.95 * len(observed)) - 1], exported.buckets)
        assert prom_s is not None and low <= prom_s <= high, (exported.name, prom_s, low, high)
    # Triton's own series for the same time range, from the same Prometheus.
    served = prometheus.value('max(last_over_time(nv_inference_request_success{model="cosyvoice2"}[5m]))')
    assert served is not None and served >= measured
    # The Grafana dashboard's queries are valid PromQL and find cvload's and Triton's series.
    dashboard = json.loads((Path(__file__).parents[1] / "docs/grafana/cvload-triton.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 12
    # The moment of Prometheus' last scrape of the final numbers: the instant panels are evaluated there.
    samples = prometheus.query(f"cvload_run_finished{{{run}}}[5m]")[0]["values"]
    lingering = max(float(t) for t, v in samples if v == "1")
    answered = {expr: prometheus.query(expr.replace("$run_id", out.name).replace("$model", ".*")
                                       .replace("$__rate_interval", "1m"), at=lingering) for expr in exprs}
    empty = [expr for expr, result in answered.items() if not result]  # counters of what never happened
    absent = ("errors", "stalls", "requested_rate", "sweep_level", "nv_gpu")  # no errors, closed loop, no sweep or GPU
    assert all(any(word in expr for word in absent) for expr in empty), empty


def test_pushgateway_gets_the_final_numbers(emulator, pushgateway: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_cli("--server", emulator.grpc, "--model", "cosyvoice2_instant", "--num-tasks", "2", "--requests",
                   "12", "--out", str(out), "--metrics-url", "none", "--prometheus-push", pushgateway) == 0
    summary, _ = load(out)
    families = {f.name: f for f in text_string_to_metric_families(_get(f"{pushgateway}/metrics"))}
    assert _counted(families, "cvload_requests", run_id=out.name, outcome="ok") == summary["requests"]["ok"] == 12
    first = families["cvload_first_chunk_seconds"]
    count = [s.value for s in first.samples if s.name.endswith("_count") and s.labels.get("run_id") == out.name]
    assert count == [12]
    assert summary["prometheus"] == {"run_id": out.name, "port": None, "push": pushgateway}


def _serve_until_final(cmd: list[str], port: int) -> tuple[subprocess.Popen, dict]:
    """Start ``cmd`` (a cvload command with --prometheus-port PORT) and scrape it until its numbers are final."""
    proc = subprocess.Popen([sys.executable, "-m", "cvload", *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ})

    def final() -> dict | None:
        if proc.poll() is not None:
            raise RuntimeError(f"cvload exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            families = {f.name: f for f in text_string_to_metric_families(_get(f"http://127.0.0.1:{port}/metrics"))}
        except OSError:
            return None
        done = families.get("cvload_run_finished")
        return families if done and done.samples[0].value == 1.0 else None

    return proc, subprocesses.wait_until(final, 90.0, what="the run to finish")


def test_a_fleet_serves_the_whole_run_and_ctrl_c_ends_the_linger(emulator, tmp_path: Path) -> None:
    """--processes 2: the coordinator's endpoint counts both processes' requests; the final numbers stay up until
    Ctrl-C, which ends the linger at once with the run's own exit code."""
    out = tmp_path / "run"
    (port,) = free_ports(1)
    proc, families = _serve_until_final(
        ["run", "--quiet", "--server", emulator.grpc, "--model", "cosyvoice2_instant", "--num-tasks", "4",
         "--requests", "40", "--processes", "2", "--out", str(out), "--metrics-url", "none",
         "--prometheus-port", str(port), "--prometheus-address", "127.0.0.1", "--prometheus-linger", "60s"], port)
    summary, _ = load(out)
    assert _counted(families, "cvload_requests", outcome="ok") == summary["requests"]["ok"] == 40
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert "metrics stay on" in proc.stderr.read().decode()


def test_a_sweep_exports_its_level(emulator, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    (port,) = free_ports(1)
    proc, families = _serve_until_final(
        ["sweep", "--quiet", "--server", emulator.grpc, "--model", "cosyvoice2_instant", "--num-tasks", "1,3",
         "--requests", "6", "--out", str(out), "--metrics-url", "none", "--gpu-source", "none",
         "--prometheus-port", str(port), "--prometheus-address", "127.0.0.1", "--prometheus-linger", "60s"], port)
    assert families["cvload_sweep_level"].samples[0].value == 3
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    for outcome, wanted in (("ok", lambda r: r["ok"] and not r["warmup"]), ("warmup", lambda r: r["warmup"])):
        assert _counted(families, "cvload_requests", outcome=outcome) == sum(map(wanted, records)), outcome
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_bad_prometheus_settings_fail_before_load(emulator, tmp_path: Path, capsys) -> None:
    (closed,) = free_ports(1)
    out = tmp_path / "refused"
    assert run_cli("--server", emulator.grpc, "--requests", "2", "--out", str(out), "--metrics-url", "none",
                   "--prometheus-push", f"http://127.0.0.1:{closed}") == 2
    assert "--prometheus-push" in capsys.readouterr().err
    assert not (out / "records.jsonl").exists() or not (out / "records.jsonl").read_text()
    assert run_cli("--server", emulator.grpc, "--requests", "2", "--prometheus-push", "pushgateway:9091") == 2
    assert "give the Pushgateway's URL" in capsys.readouterr().err
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert run_cli("--server", emulator.grpc, "--requests", "2", "--out", str(tmp_path / "busy"),
                       "--metrics-url", "none", "--prometheus-port", str(taken),
                       "--prometheus-address", "127.0.0.1") == 2
    assert f"--prometheus-port {taken}" in capsys.readouterr().err
