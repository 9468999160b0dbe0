"""Server addresses: one parser for ``HOST[:PORT]`` and URLs, Triton's default ports, and the metrics endpoint
that belongs to a server.

A Triton server listens on three neighbouring ports: HTTP, gRPC = HTTP + 1, metrics = HTTP + 2 (8000/8001/8002
by default; CosyVoice3 images use 18000/18001/18002). So the metrics endpoint of a server given by its gRPC port
is that port + 1, and by its HTTP port that port + 2, whatever the layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cvload.errors import UsageError


@dataclass(frozen=True)
class Ports:
    """One server's HTTP, gRPC and metrics ports."""

    http: int
    grpc: int
    metrics: int

    @classmethod
    def beside(cls, port: int, protocol: str) -> Ports:
        """The layout a server's ``protocol`` port belongs to (gRPC = HTTP + 1, metrics = HTTP + 2)."""
        http = port - 1 if protocol == "grpc" else port
        return cls(http, http + 1, http + 2)

    def of(self, protocol: str) -> int:
        return self.grpc if protocol == "grpc" else self.http


TRITON_PORTS = Ports(8000, 8001, 8002)
COSYVOICE3_PORTS = Ports(18000, 18001, 18002)
RUNTIME_PORT = 50000  # CosyVoice's Python runtime (gRPC or FastAPI), as its deployment guide starts it


def server_hint(protocol: str = "grpc") -> str:
    """What to write instead of a bad server address."""
    return (f"e.g. localhost:{TRITON_PORTS.of(protocol)} (Triton serves gRPC on {TRITON_PORTS.grpc} and HTTP on "
            f"{TRITON_PORTS.http} by default; CosyVoice3 images on {COSYVOICE3_PORTS.grpc} and "
            f"{COSYVOICE3_PORTS.http})")


_ADDRESS = re.compile(r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?"
                      r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::(?P<port>\d{1,5}))?(?P<path>/.*)?$")


@dataclass(frozen=True)
class Address:
    """A parsed address; ``host`` without IPv6 brackets, ``scheme`` and ``path`` as written (URLs only)."""

    host: str
    port: int
    scheme: str = ""
    path: str = ""

    def __str__(self) -> str:
        return hostport(self.host, self.port)


def hostport(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def claimed(port: int | None) -> int:
    """A local server's port, which its ``start()`` claims (``claim_ports``): asking for it before is a bug."""
    if port is None:
        raise RuntimeError("the server has no port yet: it claims its ports when it starts")
    return port


def parse(text: str, *, what: str = "--server", default_port: int | None = None, urls: bool = True,
          paths: bool = False, expected: str = "HOST:PORT", hint: str | None = None) -> Address:
    """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` or a URL (``http://``, ``https://``, ``grpc://``) -> Address.

    Without a port in ``text``, ``default_port`` applies (None: a port is required). A scheme is allowed only
    with ``urls``, a path after the address only with ``paths`` (a metrics URL, not a server). Anything else is
    a UsageError naming ``what`` and the address, with ``hint`` (default: a server example) saying what to write.
    """
    raw = text
    text = text.strip()
    if not paths:
        text = text.rstrip("/")
    m = _ADDRESS.match(text)
    scheme = (m.group("scheme") or "").lower() if m else ""
    port = int(m.group("port")) if m and m.group("port") else default_port
    if (not m or port is None or not 0 < port < 65536 or scheme not in ("", "http", "https", "grpc")
            or (scheme and not urls) or (m.group("path") and not paths)):
        raise UsageError(f"{what} {raw!r} is not {expected}", hint=hint or server_hint())
    return Address(m.group("host").strip("[]"), port, scheme, m.group("path") or "")


def server_address(text: str, protocol: str, *, what: str = "--server", default_port: int | None = None) -> str:
    """A server as ``HOST:PORT``, ``default_port`` (else Triton's port of the protocol) filled in (a scheme
    such as ``http://`` dropped)."""
    return str(parse(text, what=what, default_port=default_port or TRITON_PORTS.of(protocol),
                     expected="HOST[:PORT]", hint=server_hint(protocol)))


def metrics_url(host: str, port: int) -> str:
    return f"http://{hostport(host, port)}/metrics"


def default_metrics_url(server: str, protocol: str) -> str:
    """The metrics endpoint of a server given by its ``protocol`` port: gRPC port + 1, HTTP port + 2."""
    address = parse(server, default_port=TRITON_PORTS.of(protocol), expected="HOST[:PORT]")
    return metrics_url(address.host, Ports.beside(address.port, protocol).metrics)


def normalize_metrics_url(text: str) -> str:
    """``host:9400`` -> ``http://host:9400/metrics`` (a bare host: Triton's metrics port); a URL is kept as
    given, ``/metrics`` added when it has no path."""
    url = "://" in text
    address = parse(text, what="--metrics-url", default_port=_SCHEME_PORTS.get(text.split("://")[0].lower(), 0)
                    if url else TRITON_PORTS.metrics, paths=True,
                    expected="a metrics endpoint (HOST[:PORT] or an http:// URL)",
                    hint=f"e.g. localhost:{TRITON_PORTS.metrics} (Triton's metrics port) or "
                         "http://gpu-box:9400/metrics (a DCGM exporter); 'none' turns scraping off")
    if address.scheme == "grpc":
        raise UsageError(f"--metrics-url {text!r}: metrics are served over HTTP",
                         hint=f"e.g. {metrics_url(address.host, address.port)}")
    if not url:
        return metrics_url(address.host, address.port)
    return text.strip() if address.path else f"{text.strip()}/metrics"


_SCHEME_PORTS = {"http": 80, "https": 443}

SPEECH_ROUTE = "/v1/audio/speech"  # OpenAI-style speech endpoint


def speech_url(text: str, *, what: str = "--server") -> str:
    """The OpenAI-style speech endpoint of ``--server`` as a full URL.

    ``HOST[:PORT]`` or ``http(s)://HOST[:PORT]`` -> ``/v1/audio/speech`` on it (port 8000 without a scheme, the
    scheme's port with one); a path ending in ``/v1`` (``http://h:8080/v1``, ``/openai/v1``) gets
    ``/audio/speech`` appended; any other path is the route itself (``http://h:8080/tts/speech``).
    """
    url = "://" in text
    address = parse(text, what=what, default_port=_SCHEME_PORTS.get(text.split("://")[0].lower(), 0) if url
                    else TRITON_PORTS.http, paths=True, expected="HOST[:PORT] or an http(s):// URL",
                    hint=f"e.g. gpu-host:8080 or http://gpu-host:8080 (POST {SPEECH_ROUTE} there), "
                         "http://gpu-host:8080/v1 or a full route such as http://gpu-host:8080/tts/speech")
    if address.scheme == "grpc":
        raise UsageError(f"{what} {text!r}: the OpenAI-style speech API is HTTP", hint="use http:// or https://")
    path = address.path.rstrip("/")
    if not path:
        path = SPEECH_ROUTE
    elif path.endswith("/v1"):
        path += "/audio/speech"
    return f"{address.scheme or 'http'}://{address}{path}"
