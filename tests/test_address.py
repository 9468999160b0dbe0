"""The one address parser and the metrics endpoint derived from a server's port (pure functions)."""

from __future__ import annotations

import pytest

from cvload.errors import UsageError
from cvload.settings.address import (
    COSYVOICE3_PORTS,
    TRITON_PORTS,
    Address,
    Ports,
    default_metrics_url,
    normalize_metrics_url,
    parse,
    server_address,
)
from cvload.settings.config import RunConfig


@pytest.mark.parametrize("text, expected", [
    ("localhost:8001", Address("localhost", 8001)),
    ("  10.0.0.5:18001/ ", Address("10.0.0.5", 18001)),
    ("http://gpu-box:8000", Address("gpu-box", 8000, "http")),
    ("grpc://gpu-box:8001/", Address("gpu-box", 8001, "grpc")),
    ("[::1]:8001", Address("::1", 8001)),
    ("my_host.example-1.com:1", Address("my_host.example-1.com", 1)),
])
def test_parse(text: str, expected: Address) -> None:
    assert parse(text) == expected


def test_an_address_prints_as_host_port_with_ipv6_in_brackets() -> None:
    assert str(parse("[::1]:8001")) == "[::1]:8001"
    assert str(parse("http://h:8000")) == "h:8000"


@pytest.mark.parametrize("text", ["", "   ", "h:", "h:x", "h:0", "h:65536", "h:99999", "::1", "h:8001/v2",
                                  "ftp://h:8001", "a b:8001", "h:8001:2"])
def test_bad_server_addresses_are_usage_errors_naming_them(text: str) -> None:
    with pytest.raises(UsageError) as err:
        server_address(text, "grpc")
    assert f"--server {text!r} is not HOST[:PORT]" in str(err.value)
    assert "e.g. localhost:8001" in (err.value.hint or "")


def test_a_port_is_required_where_no_default_applies() -> None:
    with pytest.raises(UsageError, match="'localhost' is not HOST:PORT"):
        parse("localhost")
    with pytest.raises(UsageError, match="is not HOST:PORT"):
        parse("http://localhost:8000", urls=False)


@pytest.mark.parametrize("protocol, port", [("grpc", 8001), ("http", 8000)])
def test_server_address_fills_in_the_protocols_default_port(protocol: str, port: int) -> None:
    assert server_address("gpu-box", protocol) == f"gpu-box:{port}"
    assert server_address("http://gpu-box:18000/", protocol) == "gpu-box:18000"
    assert server_address("[fe80::1]", protocol) == f"[fe80::1]:{port}"


def test_run_config_addresses_use_the_one_parser() -> None:
    assert RunConfig(server=["a", "b:9001"], protocol="http").addresses() == ["a:8000", "b:9001"]
    with pytest.raises(UsageError, match="--server 'b:x'"):
        RunConfig(server=["b:x"]).addresses()


@pytest.mark.parametrize("layout", [TRITON_PORTS, COSYVOICE3_PORTS, Ports(54836, 54837, 54838)])
def test_ports_beside_either_server_port_give_the_layout(layout: Ports) -> None:
    assert Ports.beside(layout.grpc, "grpc") == layout
    assert Ports.beside(layout.http, "http") == layout
    assert layout.metrics == layout.grpc + 1 == layout.http + 2


@pytest.mark.parametrize("server, protocol, url", [
    ("h:8001", "grpc", "http://h:8002/metrics"),
    ("h:8000", "http", "http://h:8002/metrics"),
    ("h:18001", "grpc", "http://h:18002/metrics"),
    ("h:18000", "http", "http://h:18002/metrics"),
    ("h:54837", "grpc", "http://h:54838/metrics"),  # not :8002: a server on its own ports has its own metrics
    ("h:54837", "http", "http://h:54839/metrics"),
    ("h", "grpc", "http://h:8002/metrics"),
    ("[::1]:8001", "grpc", "http://[::1]:8002/metrics"),
])
def test_metrics_endpoint_follows_the_servers_port(server: str, protocol: str, url: str) -> None:
    assert default_metrics_url(server, protocol) == url


@pytest.mark.parametrize("text, url", [
    ("gpu-box:9400", "http://gpu-box:9400/metrics"),
    ("gpu-box", "http://gpu-box:8002/metrics"),
    ("http://h:8002/metrics", "http://h:8002/metrics"),
    ("https://h/custom/path", "https://h/custom/path"),
    ("http://h:9400", "http://h:9400/metrics"),
])
def test_metrics_url_as_given(text: str, url: str) -> None:
    assert normalize_metrics_url(text) == url


@pytest.mark.parametrize("text, message", [
    ("grpc://h:8002", "metrics are served over HTTP"),
    ("h:port", "is not a metrics endpoint"),
    ("ftp://h/metrics", "is not a metrics endpoint"),
])
def test_bad_metrics_urls_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        normalize_metrics_url(text)
    assert "--metrics-url" in str(err.value) and err.value.hint
