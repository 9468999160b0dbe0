"""`cvload serve --emulator` as a user runs it: a foreground process that prints its endpoints and the `cvload run`
line that measures it, serves, and stops cleanly on Ctrl-C (SIGINT) or SIGTERM, leaving no server, stub, /dev/shm
region or temporary folder behind. `--emulator` is what `serve` does whether or not it is given."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
from runs import run_cli

from cvload import subprocesses
from cvload.triton import launcher
from cvload.triton.launcher import free_ports

ROOT = Path(__file__).resolve().parent.parent


class Serve:
    """``python -m cvload serve --emulator ...`` (without ``--emulator`` when ``emulator`` is False) with its
    output read line by line in the background."""

    def __init__(self, *args: str, emulator: bool = True) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cvload", "serve", *(["--emulator"] if emulator else []), *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} within {timeout} s; output:\n{''.join(self.output)}") from None
            if line is None:
                raise AssertionError(f"exited ({self.proc.poll()}) before {pattern!r}; output:\n{''.join(self.output)}")
            match = re.search(pattern, line)
            if match:
                return match

    def finish(self, timeout: float = 60.0) -> str:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=10)  # the output read to its end
        return "".join(self.output)


def stream_request(grpc_url: str, text: str) -> int:
    """One streaming request; returns the samples received."""
    client = grpcclient.InferenceServerClient(grpc_url)
    done: queue.Queue = queue.Queue()
    samples = 0

    def callback(result, error) -> None:
        done.put((result, error))

    client.start_stream(callback=callback)
    tensor = grpcclient.InferInput("target_text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    client.async_stream_infer("cosyvoice2", [tensor], request_id="cli-1", enable_empty_final_response=True)
    try:
        while True:
            result, error = done.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            if response.outputs:
                samples += result.as_numpy("waveform").size
            final = response.parameters.get("triton_final_response")
            if final and final.bool_param:
                return samples
    finally:
        client.stop_stream()
        client.close()


def test_serve_prints_endpoints_serves_and_stops_cleanly(tmp_path: Path) -> None:
    """Three ``cvload serve`` side by side, stopped at once (a clean stop takes seconds while Triton unloads the
    model, an offline model's instances one after another): streaming in a temporary folder, stopped with Ctrl-C
    (SIGINT) and with SIGTERM, and offline in a given folder, which stays, started without ``--emulator``
    (serving the emulator is what ``serve`` does)."""
    workdir = tmp_path / "w"
    streaming = {sig: Serve("--profile", "instant") for sig in (signal.SIGINT, signal.SIGTERM)}
    offline = Serve("--mode", "offline", "--profile", "instant", "--workdir", str(workdir), emulator=False)
    serves = [*streaming.values(), offline]
    try:
        started = {sig: serving(serve) for sig, serve in streaming.items()}
        serving_offline(offline)
        for sig, serve in streaming.items():
            serve.proc.send_signal(sig)
        offline.proc.send_signal(signal.SIGTERM)
        outputs = [serve.finish() for serve in serves]
    finally:
        for serve in serves:
            if serve.proc.poll() is None:
                serve.proc.kill()
    for (sig, serve), output in zip(streaming.items(), outputs):
        assert_stopped_cleanly(sig.name, serve, output, *started[sig])
    assert offline.proc.returncode == 0, outputs[-1]
    assert (workdir / "model_repository" / "cosyvoice2" / "config.pbtxt").is_file()
    assert (workdir / "server" / "tritonserver.log").is_file()


def serving(serve: Serve) -> tuple[int, Path]:
    """Read the endpoints ``serve`` prints, send one request; returns its server's pid and temporary folder."""
    serve.wait_for(r"cvload emulator ready: model cosyvoice2 \(streaming, profile instant\)")
    grpc_url = serve.wait_for(r"^\s+grpc\s+(\S+)").group(1)
    http_url = serve.wait_for(r"^\s+http\s+(\S+)").group(1)
    serve.wait_for(r"^\s+metrics\s+(\S+)")
    log_path = Path(serve.wait_for(r"^\s+log\s+(\S+)").group(1))
    assert http_url.startswith("http://127.0.0.1:") and grpc_url.startswith("127.0.0.1:")
    assert log_path.is_file()
    workdir = log_path.parent.parent  # <temp root>/server/tritonserver.log, the model repository beside it
    assert workdir.name.startswith("cvload-serve-")
    servers = [p.pid for p in psutil.Process(serve.proc.pid).children() if "tritonserver" in p.name()]
    assert len(servers) == 1
    assert len(subprocesses.group_members(servers[0])) >= 2, "the server and its stub"
    assert stream_request(grpc_url, "Hello from the command line, once more.") > 0
    return servers[0], workdir


def assert_stopped_cleanly(how: str, serve: Serve, output: str, server_pid: int, workdir: Path) -> None:
    assert serve.proc.returncode == 0, f"after {how}:\n{output}"
    assert "stopping tritonserver" in output and output.rstrip().endswith("stopped")
    for name in ("grpc", "http", "metrics", "log"):
        assert len(re.findall(rf"^\s+{name}\s", output, re.M)) == 1, f"{name} printed once"
    assert not subprocesses.group_members(server_pid), "no server or stub left"
    assert not subprocesses.shm_regions(f"cvload{serve.proc.pid}x"), "no shared-memory region left"
    assert not workdir.exists(), "the temporary folder is gone"


def test_serve_on_a_busy_port_fails_naming_it(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        serve = Serve("--http-port", str(port), "--workdir", str(tmp_path / "w"))
        output = serve.finish()
    assert serve.proc.returncode == 1, output
    assert f"port {port}" in output and "already in use" in output


def serving_offline(serve: Serve) -> None:
    """Wait for an offline ``serve`` to be ready and send it one request."""
    serve.wait_for(r"\(offline, profile instant\)")
    grpc_url = serve.wait_for(r"^\s+grpc\s+(\S+)").group(1)
    serve.wait_for(r"^try:")
    client = grpcclient.InferenceServerClient(grpc_url)
    tensor = grpcclient.InferInput("target_text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"Offline please."]], dtype=object))
    assert client.infer("cosyvoice2", [tensor]).as_numpy("waveform").size > 0
    client.close()


def in_flight(grpc_url: str) -> None:
    """A request the server's death cuts short."""
    with contextlib.suppress(Exception):
        stream_request(grpc_url, "A request in flight.")


def test_a_serve_restarted_at_once_after_kill_9_gets_its_ports(tmp_path: Path) -> None:
    """`kill -9` of `cvload serve` with a request in flight: its tritonserver (told to stop when its parent died)
    unloads gracefully and holds the ports meanwhile; a serve restarted at once on the same ports waits for that
    orphan of its own instead of failing with "already in use", and nothing of the first is left."""
    ports = [str(p) for p in launcher.free_ports(3)]
    flags = ["--profile", "fixed", "--grpc-port", ports[0], "--http-port", ports[1], "--metrics-port", ports[2]]
    first = Serve(*flags)
    second = None
    try:
        first.wait_for(r"^try:")
        server = next(p for p in psutil.Process(first.proc.pid).children() if "tritonserver" in p.name())
        busy = threading.Thread(target=in_flight, args=(f"127.0.0.1:{ports[0]}",), daemon=True)
        busy.start()
        time.sleep(0.05)  # sent: the fixed profile's first chunk is 200 ms away
        first.proc.kill()
        first.finish()
        assert launcher.port_busy("127.0.0.1", int(ports[0])), "the orphan still holds the port: nothing to wait for"
        assert launcher.orphan_on(int(ports[0])) == server.pid
        second = Serve(*flags)
        second.wait_for(r"^try:")
        assert stream_request(f"127.0.0.1:{ports[0]}", "Hello again.") > 0
        assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE, "the first server is gone"
        assert not subprocesses.shm_regions(f"cvload{first.proc.pid}x"), "its shared memory too"
    finally:
        for serve in (first, second):
            if serve is not None and serve.proc.poll() is None:
                serve.proc.send_signal(signal.SIGTERM)
                serve.finish()


def test_serve_on_custom_ports_prints_the_run_line_that_finds_its_metrics(tmp_path: Path) -> None:
    """With ports that are not Triton's neighbours, the metrics port cannot be guessed from the gRPC port: the
    `try:` line ``serve`` prints carries ``--metrics-url``, and a run of that very line gets the server's series;
    a run given only ``--server`` warns, naming the flag."""
    while True:
        grpc_port, http_port, metrics_port = free_ports(3)
        guess = grpc_port + 1
        # The guess must miss: not this server's port, nor one of a server another test starts meanwhile (once
        # another worker's session server had its metrics there, and the run read that server's series).
        if guess not in (http_port, metrics_port) and not launcher.port_busy("127.0.0.1", guess) \
                and launcher._reserve(guess):
            break
        launcher.release_ports([grpc_port, http_port, metrics_port])
    serve = Serve("--profile", "instant", "--grpc-port", str(grpc_port), "--http-port", str(http_port),
                  "--metrics-port", str(metrics_port))
    try:
        line = serve.wait_for(r"^try: (cvload run .*)$").group(1)
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        assert f"--server 127.0.0.1:{grpc_port} " in line and f"--metrics-url {metrics} " in line, line
        words = shlex.split(line)
        assert words[:2] == ["cvload", "run"]
        given, guessed = tmp_path / "given", tmp_path / "guessed"
        assert run_cli(*words[2:], "--telemetry-interval", "0.2", "--out", str(given)) == 0
        assert run_cli("--server", f"127.0.0.1:{grpc_port}", "--requests", "2", "--out", str(guessed)) == 0
    finally:
        serve.proc.send_signal(signal.SIGTERM)
        serve.finish()
        launcher.release_ports([guess])
    telemetry = json.loads((given / "summary.json").read_text())["telemetry"]
    assert telemetry["sources"]["metrics"]["status"] == "ok" and telemetry["sources"]["metrics"]["samples"] > 0
    assert not [w for w in telemetry["warnings"] if "metrics" in w], telemetry["warnings"]
    warnings = json.loads((guessed / "summary.json").read_text())["telemetry"]["warnings"]
    assert any(f"127.0.0.1:{grpc_port + 1}/metrics" in w and "--metrics-url" in w for w in warnings), warnings
