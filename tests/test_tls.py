"""TLS and credentials against real parts: Triton's own gRPC TLS (mutual), and nginx terminating TLS for HTTP
and gRPC, checking a bearer token and balancing over two emulated Triton servers. Every failure is one clear
error before load (exit 2, no records); secrets are written nowhere."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvload.cli import main
from cvload.emulator import EmulatedModel, build_repository, get_profile
from cvload.errors import EXIT_RUNTIME, UsageError
from cvload.results.records import PROXY_BODY_LIMIT
from cvload.settings.config import RunConfig
from cvload.settings.transport import HEADERS_ENV, INSECURE_WARNING, Transport
from cvload.triton.launcher import TritonServer
from tests.runs import records_of

TOKEN = "s3cr3t-t0ken-7f1c"  # nginx's
MODELS = [EmulatedModel(name="cosyvoice2_instant", profile=get_profile("instant"), mode="streaming"),
          EmulatedModel(name="cosyvoice2_offline", profile=get_profile("instant"), mode="offline")]
QUIET = ["--metrics-url", "none", "--gpu-source", "none", "--quiet"]


def run(*args: str) -> int:
    return main(["run", *QUIET, *args])


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def no_load(out: Path) -> bool:
    """Nothing was measured: no summary and no record (an empty records.jsonl may exist)."""
    records = out / "records.jsonl"
    return not (out / "summary.json").exists() and (not records.exists() or records.stat().st_size == 0)


def inferences(http: str, model: str = "cosyvoice2_instant") -> int:
    """Requests a Triton server has executed for ``model`` (its statistics API, asked directly)."""
    with urllib.request.urlopen(f"http://{http}/v2/models/{model}/stats", timeout=5) as resp:
        stats = json.loads(resp.read())["model_stats"]
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)


@pytest.fixture(scope="module")
def triton_tls(certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """Triton serving gRPC over mutual TLS: its certificate from the test CA, clients must show one too."""
    root = tmp_path_factory.mktemp("triton-tls")
    args = ["--exit-timeout-secs=0", "--grpc-use-ssl=true", "--grpc-use-ssl-mutual=true",
            f"--grpc-server-cert={certs('server')}", f"--grpc-server-key={certs('server.key')}",
            f"--grpc-root-cert={certs('ca')}"]
    with TritonServer(build_repository(root, MODELS), workdir=root / "server", die_with_parent=True,
                      extra_args=args) as server:
        yield server


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A second emulated server for nginx to balance over, beside the session's."""
    root = tmp_path_factory.mktemp("second")
    with TritonServer(build_repository(root, MODELS), workdir=root / "server", die_with_parent=True,
                      extra_args=["--exit-timeout-secs=0"]) as server:
        yield server


@pytest.fixture
def nginx(start_nginx, emulator, second, certs):
    return start_nginx(http=[emulator.http, second.http_url], grpc=[emulator.grpc, second.grpc_url],
                       cert=certs("server"), key=certs("server.key"), token=TOKEN)


def mutual(certs) -> list[str]:
    return ["--tls", "--ca-cert", certs("ca"), "--client-cert", certs("client"), "--client-key", certs("client.key")]


# ---- settings ---------------------------------------------------------------------------------------------------
def test_headers_from_every_source_first_wins_and_never_shown(tmp_path: Path) -> None:
    header_file = tmp_path / "headers"
    header_file.write_text("# tokens\nAuthorization: Bearer from-file\nX-Api-Key: key-from-file\n\n")
    config = RunConfig(server=["h:1"], header=["x-api-key: key-from-flag", "X-Trace: t1"],
                       header_file=str(header_file)).validate()
    env = {HEADERS_ENV: "X-Trace: from-env\nX-Env: e1", "OPENAI_API_KEY": "sk-openai"}
    transport = Transport.of(config, environ=env)
    assert transport.http_headers({"Accept-Encoding": "identity", "authorization": "x"}) == {
        "Accept-Encoding": "identity", "x-api-key": "key-from-flag", "X-Trace": "t1",
        "Authorization": "Bearer from-file", "X-Env": "e1"}
    assert transport.grpc_metadata == (("x-api-key", "key-from-flag"), ("x-trace", "t1"),
                                       ("authorization", "Bearer from-file"), ("x-env", "e1"))
    # OPENAI_API_KEY is one more source, for --api openai only, after the others
    assert "sk-openai" not in str(Transport.of(config, environ=env).http_headers())
    openai = Transport.of(RunConfig(api="openai", server=["h:1"]), environ=env)
    assert openai.http_headers()["Authorization"] == "Bearer sk-openai"
    for shown in (repr(config), repr(transport), str(config.public_json())):
        for secret in ("key-from-flag", "t1", "from-file", "key-from-file", "e1"):
            assert secret not in shown, (secret, shown)
    assert config.public_json()["header"] == ["x-api-key: ***", "X-Trace: ***"]
    with pytest.raises(UsageError, match="gRPC metadata"):
        _ = Transport.of(RunConfig(server=["h:1"], header=["grpc-timeout: 1S"]), environ={}).grpc_metadata


@pytest.mark.parametrize(("args", "message"), [
    (["--header", "Authorization Bearer hunter2"], "--header #1 is not 'Name: value'"),
    (["--ca-cert", "ca.pem"], "--ca-cert only apply with TLS"),
    (["--tls", "--ca-cert", "/nonexistent/ca.pem"], "--ca-cert /nonexistent/ca.pem: no such file"),
    (["--tls", "--client-key", "k.pem"], "--client-key without --client-cert"),
    (["--tls", "--insecure", "--ca-cert", "ca.pem"], "--insecure verifies no certificate"),
    (["--header-file", "/nonexistent/headers"], "--header-file /nonexistent/headers: cannot read it"),
])
def test_bad_tls_and_header_settings_are_usage_errors(emulator, tmp_path, capsys, args, message) -> None:
    out = tmp_path / "r"
    assert run("--server", emulator.grpc, "--model", "cosyvoice2_instant", "--requests", "1", "--out", str(out),
               *args) == 2
    err = capsys.readouterr().err
    assert message in err and "hunter2" not in err
    assert no_load(out)


def test_https_server_implies_tls_and_port_443() -> None:
    config = RunConfig(server=["https://tts.example.com"], protocol="http").validate()
    assert config.tls and config.addresses() == ["tts.example.com:443"]
    openai = RunConfig(api="openai", server=["gpu:8080"], tls=True).validate()
    assert openai.addresses() == ["https://gpu:8080/v1/audio/speech"]
    with pytest.raises(UsageError, match="http:// --server in a run with TLS"):
        RunConfig(server=["http://a:8000"], protocol="http", tls=True).validate()


# ---- Triton's own gRPC TLS --------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["cosyvoice2_instant", "cosyvoice2_offline"])
def test_triton_mutual_tls(triton_tls, certs, tmp_path, model) -> None:
    out = tmp_path / "r"
    mode = "offline" if "offline" in model else "streaming"
    assert run("--server", triton_tls.grpc_url, "--model", model, "--mode", mode, "--num-tasks", "2",
               "--requests", "6", "--out", str(out), *mutual(certs)) == 0
    summary = summary_of(out)
    assert summary["requests"]["ok"] == 6 and "warnings" not in summary
    assert summary["target"]["tls"] == {"verify": True, "ca_cert": certs("ca"), "client_cert": certs("client"),
                                        "server_name": None}


@pytest.mark.parametrize(("args", "message"), [
    (["--tls", "--ca-cert", "@ca"], "requires a client certificate (mutual TLS)"),
    (["--tls", "--ca-cert", "@other-ca", "--client-cert", "@client", "--client-key", "@client.key"],
     "is not signed by the CA in --ca-cert @other-ca"),
    (["--tls", "--ca-cert", "@ca", "--tls-server-name", "tts.example", "--client-cert", "@client",
      "--client-key", "@client.key"], "is not valid for the name 'tts.example' (it is for localhost, 127.0.0.1"),
    ([], "speaks TLS, and cvload connected without it"),
    # a certificate made for a server (serverAuth only), not accepted as a client's
    (["--tls", "--ca-cert", "@ca", "--client-cert", "@server", "--client-key", "@server.key"],
     "did not accept the client certificate --client-cert @server"),
])
def test_triton_tls_failures_are_named_before_load(triton_tls, certs, tmp_path, capsys, args, message) -> None:
    def path(text: str) -> str:  # "@name" -> that certificate's file
        return " ".join(certs(w[1:]) if w.startswith("@") else w for w in text.split(" "))

    out = tmp_path / "r"
    assert run("--server", triton_tls.grpc_url, "--model", "cosyvoice2_instant", "--requests", "4",
               "--out", str(out), *map(path, args)) == 2
    err = capsys.readouterr().err
    assert path(message) in err, err
    assert no_load(out)


def test_insecure_skips_verification_and_warns(triton_tls, certs, tmp_path, capsys) -> None:
    out = tmp_path / "r"
    assert run("--server", triton_tls.grpc_url, "--model", "cosyvoice2_instant", "--requests", "2",
               "--out", str(out), "--tls", "--insecure", "--client-cert", certs("client"),
               "--client-key", certs("client.key")) == 0
    summary = summary_of(out)
    assert summary["warnings"] == [INSECURE_WARNING] and summary["target"]["tls"]["verify"] is False
    assert "warning: --insecure" in capsys.readouterr().err


def test_tls_to_a_plain_server_says_so(emulator, certs, tmp_path, capsys) -> None:
    for protocol, address in (("grpc", emulator.grpc), ("http", emulator.http)):
        assert run("--server", address, "--protocol", protocol, "--model", "cosyvoice2_instant", "--requests", "1",
                   "--out", str(tmp_path / protocol), "--tls", "--ca-cert", certs("ca")) == 2
        err = capsys.readouterr().err
        assert "does not speak TLS" in err or "reset the connection during the TLS handshake" in err, err


# ---- nginx: TLS, a token and two servers behind it -----------------------------------------------------------
def test_nginx_balances_grpc_and_http_with_a_token(nginx, emulator, second, certs, tmp_path) -> None:
    before = inferences(emulator.http), inferences(second.http_url)
    auth = ["--header", f"Authorization: Bearer {TOKEN}", "--tls", "--ca-cert", certs("ca")]
    assert run("--server", nginx.grpcs, "--model", "cosyvoice2_instant", "--num-tasks", "2", "--requests", "8",
               "--out", str(tmp_path / "grpc"), *auth) == 0
    assert run("--server", f"https://{nginx.https}", "--protocol", "http", "--model", "cosyvoice2_instant",
               "--num-tasks", "2", "--requests", "8", "--out", str(tmp_path / "http"), *auth[:2],
               "--ca-cert", certs("ca")) == 0
    for name in ("grpc", "http"):
        summary = summary_of(tmp_path / name)
        assert summary["requests"]["ok"] == 8, (name, summary["errors"])
    after = inferences(emulator.http), inferences(second.http_url)
    counts = [a - b for a, b in zip(after, before)]
    assert sum(counts) == 16 and min(counts) >= 4, counts  # both upstreams served: round robin over the two


def test_nginx_missing_or_wrong_token_fails_before_load(nginx, certs, tmp_path, capsys) -> None:
    cases = [("grpc", nginx.grpcs, []), ("http", nginx.https, ["--header", "Authorization: Bearer wr0ng-t0ken"])]
    for protocol, address, header in cases:
        out = tmp_path / protocol
        assert run("--server", address, "--protocol", protocol, "--model", "cosyvoice2_instant", "--requests", "4",
                   "--out", str(out), "--tls", "--ca-cert", certs("ca"), *header) == 2
        err = capsys.readouterr().err
        assert "token missing or rejected" in err, err
        assert ("UNAUTHENTICATED" if protocol == "grpc" else "HTTP 401") in err
        assert "wr0ng-t0ken" not in err and no_load(out)


def test_nginx_plain_client_at_a_tls_port(nginx, tmp_path, capsys) -> None:
    for protocol, address in (("grpc", nginx.grpcs), ("http", nginx.https)):
        assert run("--server", address, "--protocol", protocol, "--model", "cosyvoice2_instant", "--requests", "1",
                   "--out", str(tmp_path / protocol), "--header", f"Authorization: Bearer {TOKEN}") == 2
        assert "speaks TLS, and cvload connected without it" in capsys.readouterr().err


def test_nginx_expired_certificate_and_server_name(start_nginx, emulator, certs, tmp_path, capsys) -> None:
    common = ["--model", "cosyvoice2_instant", "--requests", "2", "--tls", "--ca-cert", certs("ca"),
              "--header", f"Authorization: Bearer {TOKEN}"]
    expired = start_nginx(http=[emulator.http], grpc=[emulator.grpc], cert=certs("expired"),
                          key=certs("server.key"), token=TOKEN)
    named = start_nginx(http=[emulator.http], grpc=[emulator.grpc], cert=certs("other-name"),
                        key=certs("server.key"), token=TOKEN)
    for protocol, port in (("grpc", "grpcs"), ("http", "https")):
        assert run("--server", getattr(expired, port), "--protocol", protocol, *common,
                   "--out", str(tmp_path / f"expired-{protocol}")) == 2
        assert "certificate has expired" in capsys.readouterr().err
        assert run("--server", getattr(named, port), "--protocol", protocol, *common,
                   "--out", str(tmp_path / f"name-{protocol}")) == 2
        err = capsys.readouterr().err
        assert "not valid for the name '127.0.0.1' (it is for tts.internal)" in err and "--tls-server-name" in err
        out = tmp_path / f"named-{protocol}"
        assert run("--server", getattr(named, port), "--protocol", protocol, *common, "--out", str(out),
                   "--tls-server-name", "tts.internal") == 0
        assert summary_of(out)["requests"]["ok"] == 2


def test_secrets_are_written_nowhere(nginx, certs, tmp_path, capsys, monkeypatch) -> None:
    """The token from a header file (gRPC) and from CVLOAD_HEADERS (HTTP), another secret from --header: none of
    them in any file of the results folders, nor in what cvload printed."""
    flag_secret, env_secret = "fl4g-s3cret-91", "env-s3cret-52"
    header_file = tmp_path / "headers.txt"
    header_file.write_text(f"Authorization: Bearer {TOKEN}\n")
    common = ["--model", "cosyvoice2_instant", "--requests", "3", "--tls", "--ca-cert", certs("ca"),
              "--header", f"X-Extra: {flag_secret}", "--save-audio"]
    assert run("--server", nginx.grpcs, *common, "--header-file", str(header_file),
               "--out", str(tmp_path / "out-grpc")) == 0
    monkeypatch.setenv(HEADERS_ENV, f"Authorization: Bearer {TOKEN}\nX-Env: {env_secret}")
    assert main(["run", "--metrics-url", "none", "--gpu-source", "none", "--server", f"https://{nginx.https}",
                 "--protocol", "http", *common, "--out", str(tmp_path / "out-http"), "--json"]) == 0
    printed = capsys.readouterr()
    config = json.loads((tmp_path / "out-grpc" / "config.json").read_text())["config"]
    assert config["header"] == ["X-Extra: ***"] and config["header_file"] == str(header_file)
    files = [p for d in ("out-grpc", "out-http") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "records.jsonl", "summary.json", "summary.csv"}
    for secret in (TOKEN, flag_secret, env_secret):
        assert secret not in printed.out + printed.err
        for path in files:
            assert secret.encode() not in path.read_bytes(), path


def test_runtime_and_openai_targets_over_tls_with_a_token(start_nginx, certs, tmp_path, capsys,
                                                          monkeypatch) -> None:
    """The other APIs' targets (CosyVoice's runtime over gRPC and FastAPI, OpenAI-style speech) behind nginx."""
    from cvload.emulator.openai_server import OpenAIServer
    from cvload.emulator.runtime_server import RuntimeServer
    from cvload.settings.address import hostport

    instant = get_profile("instant")
    with RuntimeServer(instant, workdir=tmp_path / "runtime", die_with_parent=True) as runtime, \
            OpenAIServer(instant, workdir=tmp_path / "openai", die_with_parent=True) as openai:
        tls = ["--tls", "--ca-cert", certs("ca")]
        front = start_nginx(http=[runtime.http_url], grpc=[runtime.grpc_url], cert=certs("server"),
                            key=certs("server.key"), token=TOKEN)
        speech = start_nginx(http=[hostport(openai.host, openai.port)], grpc=[runtime.grpc_url],
                             cert=certs("server"), key=certs("server.key"), token=TOKEN)
        auth = ["--header", f"Authorization: Bearer {TOKEN}"]
        for name, args in (("grpc", ["--api", "cosyvoice", "--server", front.grpcs, *tls, *auth]),
                           ("http", ["--api", "cosyvoice", "--protocol", "http", "--server",
                                     f"https://{front.https}", "--ca-cert", certs("ca"), *auth])):
            assert run(*args, "--requests", "3", "--out", str(tmp_path / name)) == 0, capsys.readouterr().err
            assert summary_of(tmp_path / name)["requests"]["ok"] == 3
        openai_args = ["--api", "openai", "--server", f"https://{speech.https}/v1", "--ca-cert", certs("ca"),
                       "--requests", "3"]
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        assert run(*openai_args, "--out", str(tmp_path / "no-key")) == 2
        err = capsys.readouterr().err
        assert "token missing or rejected" in err and "set OPENAI_API_KEY" in err
        monkeypatch.setenv("OPENAI_API_KEY", TOKEN)  # the OpenAI way of giving the token still works
        assert run(*openai_args, "--out", str(tmp_path / "openai")) == 0
        assert summary_of(tmp_path / "openai")["requests"]["ok"] == 3


# ---- nginx with its default client_max_body_size (1 MB a stream) ----------------------------------------------
def test_nginx_default_body_limit_is_named_and_a_stream_per_request_passes(start_nginx, emulator, certs, tmp_path,
                                                                          capsys) -> None:
    """nginx counts a whole HTTP/2 stream as one request body: a ModelStreamInfer stream shared by requests with
    prompts passes 1 MB after a few and nginx resets it. The failures say so; a stream per request passes."""
    proxy = start_nginx(http=[emulator.http], grpc=[emulator.grpc], cert=certs("server"), key=certs("server.key"),
                        token=TOKEN, body_limit=None)
    auth = ["--header", f"Authorization: Bearer {TOKEN}", "--tls", "--ca-cert", certs("ca")]
    common = ["--server", proxy.grpcs, "--model", "cosyvoice2_instant", "--num-tasks", "4", "--requests", "20", *auth]
    # No objective given: exit 0, unless the resets came 8 in a row before any answer (on a busy host the four
    # streams can pass 1 MB together): then the run stops, and says why.
    code = run(*common, "--out", str(tmp_path / "shared"))
    summary = summary_of(tmp_path / "shared")
    assert code == 0 or (code == EXIT_RUNTIME and PROXY_BODY_LIMIT in summary["abort_reason"]), (code, summary)
    failed = [r for r in records_of(tmp_path / "shared") if r["error_kind"]]
    assert failed, "nginx's 1 MB a stream let every request through: nothing to recognise"
    for record in failed:
        assert record["error_kind"] == "connection", record
        assert "MB were sent on it" in record["error"] and PROXY_BODY_LIMIT in record["error"], record["error"]
    assert any(PROXY_BODY_LIMIT in w for w in summary["warnings"]), summary.get("warnings")
    assert PROXY_BODY_LIMIT in " ".join(capsys.readouterr().err.split())  # the console wraps lines
    assert run(*common, "--stream-per-request", "--out", str(tmp_path / "own")) == 0
    summary = summary_of(tmp_path / "own")
    assert summary["requests"]["ok"] == 20, summary["errors"]
    assert "warnings" not in summary or not any(PROXY_BODY_LIMIT in w for w in summary["warnings"])


def test_a_run_whose_every_stream_is_reset_says_so_not_server_unreachable(start_nginx, emulator, certs,
                                                                          tmp_path) -> None:
    """nginx's default body limit resets every shared stream (8 requests with prompts in flight on one, none
    answered within 200 ms): the run stops, and its reason says the streams were reset by the server or a proxy,
    with the proxy limit's fix, not that the server was unreachable: nginx answered every time."""
    proxy = start_nginx(http=[emulator.http], grpc=[emulator.grpc], cert=certs("server"), key=certs("server.key"),
                        token=TOKEN, body_limit=None)
    out = tmp_path / "reset"
    assert run("--server", proxy.grpcs, "--model", "cosyvoice2", "--num-tasks", "8", "--requests", "64",
               "--header", f"Authorization: Bearer {TOKEN}", "--tls", "--ca-cert", certs("ca"),
               "--out", str(out)) == EXIT_RUNTIME
    summary = summary_of(out)
    reason = summary["abort_reason"]
    assert summary["status"] == "aborted", summary["requests"]
    assert "unreachable" not in reason and "failed to connect" not in reason, reason
    assert reason.startswith("every stream was reset by the server or a proxy between cvload and it"), reason
    assert PROXY_BODY_LIMIT in reason, reason


def test_doctor_sends_more_than_a_megabyte_down_one_stream(start_nginx, emulator, certs, capsys) -> None:
    """`cvload bootstrap doctor --grpc-via` through nginx: its default body limit fails the stream check with
    the cause and the fix; with `client_max_body_size 0;` (and straight to the server) it passes."""
    tls = ["--tls", "--ca-cert", certs("ca"), "--header", f"Authorization: Bearer {TOKEN}"]
    lines = {}
    for limit in (None, "0"):
        proxy = start_nginx(http=[emulator.http], grpc=[emulator.grpc], cert=certs("server"),
                            key=certs("server.key"), token=TOKEN, body_limit=limit)
        main(["bootstrap", "doctor", "--server", emulator.http, "--grpc-port", emulator.grpc.rsplit(":", 1)[1],
              "--model", "cosyvoice2_instant", "--grpc-via", proxy.grpcs, *tls])
        out = capsys.readouterr().out
        lines[limit] = [line for line in out.splitlines() if "grpc stream body" in line]
        assert ("client_max_body_size 0;" in out) == (limit is None), out
    assert len(lines[None]) == 1 and "FAIL" in lines[None][0] and "reset after 1.0 MB" in lines[None][0], lines
    assert len(lines["0"]) == 1 and "ok" in lines["0"][0] and "carried 1.6 MB" in lines["0"][0], lines
    main(["bootstrap", "doctor", "--server", emulator.http, "--grpc-port", emulator.grpc.rsplit(":", 1)[1],
          "--model", "cosyvoice2_instant"])
    assert "no proxy limit on a stream's body" in capsys.readouterr().out
