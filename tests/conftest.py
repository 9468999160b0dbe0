"""Shared real servers: one embedded Triton (CosyVoice emulator) per test session, more only where a test must
break its server. Nothing here mocks Triton or tritonclient."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cvload import subprocesses
from cvload.emulator import EmulatedModel, build_repository, get_profile
from cvload.triton.launcher import TritonServer, accepts, free_ports

# The longest test files (seconds on a quiet 2-core machine), longest first. Under pytest-xdist each file goes
# to one worker whole (--dist loadfile: its module and session servers are shared there), in collection order
# as workers free up (`make test` turns off xdist's own reordering by number of tests); handing out the long
# ones first keeps one of them from starting last and running on alone. test_compare's timing tests are the
# longest of that part.
LONGEST_FILES = ["test_listening_runs", "test_ray", "test_compare", "test_sweep", "test_outages",
                 "test_bootstrap_emulator", "test_pipeline_emulator", "test_emulator_speech", "test_drivers",
                 "test_report", "test_processes", "test_barge_in", "test_serve_cli", "test_tls",
                 "test_launcher", "test_run", "test_runtime_api", "test_prometheus", "test_server_release",
                 "test_emulator", "test_tune"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a serial run keeps the files' order
        rank = {name: i for i, name in enumerate(LONGEST_FILES)}
        items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: tests keep their order


@dataclass
class Emulator:
    """A started server, its gRPC and HTTP addresses, and the folder its repository and traces are in."""

    server: TritonServer
    root: Path
    grpc: str = field(init=False)
    http: str = field(init=False)

    def __post_init__(self) -> None:
        self.grpc, self.http = self.server.grpc_url, self.server.http_url

    def trace(self, model: str = "cosyvoice2") -> Path:
        return self.root / f"{model}.trace.jsonl"


# The session server's models: name -> (profile, mode, profile overrides)
SESSION_MODELS = [
    EmulatedModel(name="cosyvoice2", profile=get_profile("fixed"), mode="streaming"),
    EmulatedModel(name="cosyvoice2_offline", profile=get_profile("instant"), mode="offline"),
    EmulatedModel(name="cosyvoice2_instant", profile=get_profile("instant"), mode="streaming"),
    EmulatedModel(name="cosyvoice2_faulty", profile=get_profile("faulty", {"seed": 7}), mode="streaming"),
    EmulatedModel(name="cosyvoice2_demo", profile=get_profile("demo"), mode="streaming"),
]


# On stop, exit without unloading the models one by one (about a second per stub process, 5 s for this server):
# what these servers are for is serving; the clean stop itself is tested in test_launcher.py and test_serve_cli.py.
FAST_EXIT = ["--exit-timeout-secs=0"]


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    root = tmp_path_factory.mktemp("emulator")
    repo = build_repository(root, SESSION_MODELS)
    with TritonServer(repo, workdir=root / "server", die_with_parent=True, extra_args=FAST_EXIT) as server:
        yield Emulator(server, root)


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """Start a private server (for tests that kill or misconfigure it); stopped after the test."""
    started: list[TritonServer] = []

    def start(models: list[EmulatedModel], **kwargs: object) -> Emulator:
        root = tmp_path / f"emu{len(started)}"
        repo = build_repository(root, models)
        kwargs.setdefault("extra_args", FAST_EXIT)
        server = TritonServer(repo, workdir=root / "server", die_with_parent=True, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        server.start()
        return Emulator(server, root)

    yield start
    for server in started:
        server.stop()


# ---- TLS: certificates and an nginx in front of servers (tests/test_tls.py) ------------------------------------
@dataclass
class Certs:
    """PEM files made for one test session: a CA, certificates it signed, and the ones that must fail."""

    dir: Path

    def __call__(self, name: str) -> str:
        """``certs("ca")`` -> the path of ca.pem; ``certs("server.key")`` -> of server.key."""
        path = self.dir / (name if "." in name else f"{name}.pem")
        assert path.exists(), path
        return str(path)


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(cwd: Path, name: str, ca: str, key: str, *, days: int = 2, alt: str = "DNS:localhost,IP:127.0.0.1",
           usage: str = "serverAuth") -> None:
    """``name``.pem for ``key``, signed by ``ca`` (``days`` < 0: expired already)."""
    (cwd / f"{name}.ext").write_text(f"subjectAltName={alt}\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n")
    _openssl(cwd, "req", "-new", "-key", f"{key}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr")
    validity = ["-days", str(days)]
    if days < 0 and _has_explicit_dates():  # OpenSSL 3.4+ refuses a negative -days ("end date before start date")
        validity = ["-not_before", "20200101000000Z", "-not_after", "20200102000000Z"]
    _openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", *validity, "-extfile", f"{name}.ext", "-out", f"{name}.pem")


@functools.cache
def _has_explicit_dates() -> bool:
    """Whether this openssl's x509 takes -not_before/-not_after (3.4 and later; 3.0 takes a negative -days)."""
    shown = subprocess.run(["openssl", "x509", "-help"], capture_output=True, text=True)
    return "-not_after" in shown.stdout + shown.stderr


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """ca (the CA), server (localhost and 127.0.0.1), expired, other-name (only tts.internal), client (mutual
    TLS, key client.key), other-ca (a CA nobody used); server certificates share server.key. EC keys and the
    openssl command line: a few hundred milliseconds."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (make system-deps installs it)")
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl(d, "req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=cvload test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for key in ("server", "client"):
        _openssl(d, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", f"{key}.key")
    _issue(d, "server", "ca", "server")
    _issue(d, "expired", "ca", "server", days=-1)
    _issue(d, "other-name", "ca", "server", alt="DNS:tts.internal")
    _issue(d, "client", "ca", "client", alt="DNS:cvload-client", usage="clientAuth")
    return Certs(d)


@dataclass
class Nginx:
    """A running nginx: TLS with a bearer token in front of HTTP (``https``) and gRPC (``grpcs``) upstreams."""

    https: str  # 127.0.0.1:PORT, proxying HTTP/1.1
    grpcs: str  # 127.0.0.1:PORT, HTTP/2 to grpc_pass
    dir: Path
    proc: subprocess.Popen[bytes]


NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    {body_limit}
    ssl_certificate {cert}; ssl_certificate_key {key};
    upstream http_backends {{ {http_servers} keepalive 16; }}
    upstream grpc_backends {{ {grpc_servers} keepalive 16; }}
    server {{
        listen 127.0.0.1:{https_port} ssl;
        if ($http_authorization != "Bearer {token}") {{ return 401; }}
        location / {{
            proxy_pass http://http_backends; proxy_http_version 1.1; proxy_set_header Connection "";
            proxy_buffering off; proxy_request_buffering off;
        }}
    }}
    server {{
        listen 127.0.0.1:{grpcs_port} ssl http2;
        if ($http_authorization != "Bearer {token}") {{ return 401; }}
        location / {{ grpc_pass grpc://grpc_backends; }}
    }}
}}
"""


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    """Start nginx (the Debian package; skipped where it is missing) on free loopback ports, balancing round-robin
    over ``http`` and ``grpc`` upstreams (HOST:PORT lists) with ``cert``/``key``, answering 401 to any request
    without ``Authorization: Bearer <token>``; stopped after the test. ``body_limit``: its
    ``client_max_body_size`` (None: nginx's default, 1 MB a request body, a whole gRPC stream included)."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx not installed (make system-deps installs it)")
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    started: list[Nginx] = []

    def start(*, http: list[str], grpc: list[str], cert: str, key: str, token: str,
              body_limit: str | None = "0") -> Nginx:
        d = tmp_path / f"nginx{len(started)}"
        d.mkdir()
        https_port, grpcs_port = free_ports(2)
        conf = d / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            dir=d, cert=cert, key=key, token=token, https_port=https_port, grpcs_port=grpcs_port,
            body_limit="" if body_limit is None else f"client_max_body_size {body_limit};",
            http_servers=" ".join(f"server {a};" for a in http), grpc_servers=" ".join(f"server {a};" for a in grpc)))
        with open(d / "stderr.log", "wb") as log:
            proc = subprocess.Popen([binary, "-p", str(d), "-c", str(conf), "-g", "daemon off;"], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        server = Nginx(f"127.0.0.1:{https_port}", f"127.0.0.1:{grpcs_port}", d, proc)
        started.append(server)

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({proc.returncode}): {(d / 'stderr.log').read_text()}"
                                   f"{(d / 'error.log').read_text() if (d / 'error.log').exists() else ''}")
            return accepts("127.0.0.1", https_port, 0.2) and accepts("127.0.0.1", grpcs_port, 0.2)

        subprocesses.wait_until(up, 10.0, what="nginx to listen")
        return server

    yield start
    for server in started:
        subprocesses.end(server.proc, grace=5.0)
