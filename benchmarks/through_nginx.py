"""cvload through a stock nginx (TLS, a bearer token, nginx's default ``client_max_body_size``) against the same
server reached directly: failures and first-chunk latency of each way, same run.

One embedded server (the emulator's ``fixed`` profile: the first chunk leaves the model 200 ms after the request
reached it), one nginx (the Debian package) on free loopback ports in front of its gRPC port. Runs, one after
another, each ``--num-tasks`` streams for ``--seconds`` with the built-in prompts:

- ``nginx shared``: through nginx, streams shared by requests (the default): nginx resets each stream after 1 MB;
- ``nginx own``: through nginx with ``--stream-per-request``;
- ``direct own`` and ``direct shared``: straight to the server's gRPC port.

Printed per run: requests ok/failed, the failures' messages (first of each), first-chunk p50/p99 and the
overhead of nginx against the direct run of the same stream mode.

    .venv/bin/python -m benchmarks.through_nginx --num-tasks 64 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cvload import subprocesses
from cvload.cli import main as cvload_main
from cvload.triton.launcher import accepts, free_ports

TOKEN = "bench-token"
CONF = """
worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    upstream grpc_backends {{ server {grpc}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;
        if ($http_authorization != "Bearer {token}") {{ return 401; }}
        location / {{ grpc_pass grpc://grpc_backends; }}
    }}
}}
"""


def certificates(d: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-new", *ec, "-keyout", "server.key", "-subj", "/CN=localhost", "-out", "server.csr")
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days",
            "2", "-extfile", "server.ext", "-out", "server.pem")


def run(name: str, server: str, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    folder = out / name.replace(" ", "-")
    cvload_main(["run", "--quiet", "--server", server, "--num-tasks", str(args.num_tasks), "--duration",
                 f"{args.seconds}s", "--warmup", "2s", "--metrics-url", "none", "--gpu-source", "none",
                 "--out", str(folder), *extra])
    summary = json.loads((folder / "summary.json").read_text())
    errors: dict[str, int] = {}
    for line in (folder / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("error"):
            key = record["error"].split(" after ")[0][:60] + " ... " + record["error"][-90:]
            errors[key] = errors.get(key, 0) + 1
    first = summary["metrics"]["first_chunk_latency_ms"]
    row = {"run": name, "ok": summary["requests"]["ok"], "failed": summary["requests"]["failed"],
           "p50_ms": first.get("p50"), "p99_ms": first.get("p99"), "errors": errors,
           "loop_lag_p99_ms": summary["client"]["loop_lag_ms"]["p99"]}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-tasks", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    from cvload.emulator import EmulatedModel, build_repository, get_profile
    from cvload.triton.launcher import TritonServer

    with tempfile.TemporaryDirectory(prefix="cvload-nginx-") as tmp:
        root = Path(tmp)
        certificates(root)
        repo = build_repository(root, [EmulatedModel("cosyvoice2", get_profile("fixed"), "streaming")])
        with TritonServer(repo, workdir=root / "server") as server:
            (port,) = free_ports(1)
            (root / "nginx.conf").write_text(CONF.format(d=root, grpc=server.grpc_url, port=port, token=TOKEN))
            proc = subprocess.Popen([nginx, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                subprocesses.wait_until(lambda: accepts("127.0.0.1", port, 0.2), 10.0, what="nginx")
                tls = ["--tls", "--ca-cert", str(root / "ca.pem"), "--header", f"Authorization: Bearer {TOKEN}"]
                rows = {name: run(name, where, root, args, extra) for name, where, extra in [
                    ("nginx shared", f"127.0.0.1:{port}", tls),
                    ("nginx own", f"127.0.0.1:{port}", [*tls, "--stream-per-request"]),
                    ("direct own", server.grpc_url, ["--stream-per-request"]),
                    ("direct shared", server.grpc_url, []),
                ]}
            finally:
                subprocesses.end(proc, grace=5.0)
    for mode in ("own", "shared"):
        a, b = rows[f"nginx {mode}"], rows[f"direct {mode}"]
        if a["p50_ms"] is not None and b["p50_ms"] is not None:
            print(f"nginx over direct ({mode} streams): first chunk p50 {a['p50_ms'] - b['p50_ms']:+.2f} ms, "
                  f"p99 {a['p99_ms'] - b['p99_ms']:+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
