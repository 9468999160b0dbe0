"""How every target reaches its server: TLS (which CA, a client certificate, the name to verify) and extra
headers such as a bearer token, built once from the run's settings (``Transport.of``).

Headers come from ``--header "Name: value"``, ``--header-file FILE`` (one per line), the ``CVLOAD_HEADERS``
environment variable (newline-separated) and, for ``--api openai``, ``OPENAI_API_KEY`` (as ``Authorization:
Bearer ...``); the first source that names a header wins, in that order. Their values are secrets: no repr, error
message or results file shows them (``redact_header`` gives ``Name: ***``). HTTP sends them as headers, gRPC as
call metadata with lower-cased names.

A TLS or credential failure found while a target opens becomes one error naming the cause (``explain``,
``refused``) instead of a flood of failed requests: a certificate not signed by the given CA, an expired one, a
name mismatch, a server that wants a client certificate, a plain server behind ``--tls`` (or the reverse), a token
missing or rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvload.apis import api_spec
from cvload.errors import CvloadError, UsageError
from cvload.settings.address import parse

HEADERS_ENV = "CVLOAD_HEADERS"
REDACTED = "***"
PROBE_TIMEOUT_S = 1.0
_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH  # a failed open() explains itself within this, on top of its own timeout

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
_GRPC_RESERVED = ("content-type", "te", "host", "user-agent", "connection")
TOKEN_HINT = "pass it with --header 'Authorization: Bearer TOKEN', --header-file FILE or " + HEADERS_ENV
INSECURE_WARNING = ("--insecure: the server's TLS certificate was not verified; anyone between cvload and the "
                    "server could have read or changed this run's traffic")


@dataclass(frozen=True)
class Header:
    """One header to send; ``source`` says where it came from (for errors), ``value`` is never shown."""

    name: str
    value: str = field(repr=False)
    source: str = "--header"


def parse_header(text: str, *, where: str, source: str = "--header") -> Header:
    """``Name: value`` -> Header; errors name ``where`` and never quote the value (it may be a secret)."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise UsageError(f"{where} is not 'Name: value' (its text is not shown: it may hold a secret)",
                         hint="e.g. --header 'Authorization: Bearer TOKEN'")
    if not _TOKEN.match(name):
        raise UsageError(f"{where}: {name[:40]!r} is not a header name (letters, digits and -_.!#$%&'*+^`|~ only)")
    if "\r" in value or "\n" in value or "\0" in value:
        raise UsageError(f"{where}: the value of {name} holds a line break or NUL")
    return Header(name, value, source)


def redact_header(text: str) -> str:
    """``Name: value`` -> ``Name: ***`` (what config.json keeps of a header)."""
    name, sep, _ = text.partition(":")
    return f"{name.strip()}: {REDACTED}" if sep and _TOKEN.match(name.strip()) else REDACTED


def read_header_lines(text: str, *, where: str, source: str) -> list[Header]:
    """Headers of a file or variable: one ``Name: value`` a line; blank lines and ``#`` comments skipped."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(parse_header(line, where=f"{where} line {number}", source=source))
    return out


@dataclass(frozen=True)
class Transport:
    """TLS settings and headers of one run; ``Transport()`` is plain TCP with no extra headers."""

    tls: bool = False
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None
    insecure: bool = False
    headers: tuple[Header, ...] = field(default=(), repr=False)
    # Made on first use: client contexts by ALPN list, and (--insecure gRPC) each address's pinned certificate.
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict, repr=False, compare=False)
    _pins: dict[str, tuple[bytes | None, list[str]]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, options: Any = None, *, token_env: str | None = None,
           environ: Mapping[str, str] | None = None) -> Transport:
        """From a RunConfig (or None: plain, headers from the environment only). Reads the header file, the
        environment and the certificate files now, so a bad one is a UsageError before any load.

        ``token_env``: an environment variable whose value goes as a bearer token, after the other sources
        (default: the run's API's, e.g. ``OPENAI_API_KEY`` for ``--api openai``)."""
        env = os.environ if environ is None else environ
        if token_env is None and options is not None:
            token_env = api_spec(getattr(options, "api", None)).token_env
        found: list[Header] = []
        for i, text in enumerate(getattr(options, "header", None) or [], 1):
            found.append(parse_header(text, where=f"--header #{i}"))
        header_file = getattr(options, "header_file", None)
        if header_file:
            try:
                text = Path(header_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"--header-file {header_file}: cannot read it ({exc.__class__.__name__}: "
                                 f"{getattr(exc, 'strerror', None) or exc})") from None
            found += read_header_lines(text, where=f"--header-file {header_file}", source=f"--header-file {header_file}")
        if env.get(HEADERS_ENV):
            found += read_header_lines(env[HEADERS_ENV], where=HEADERS_ENV, source=HEADERS_ENV)
        if token_env and env.get(token_env):
            found.append(Header("Authorization", f"Bearer {env[token_env]}", token_env))
        headers: dict[str, Header] = {}
        for header in found:  # the first source naming a header wins
            headers.setdefault(header.name.lower(), header)
        transport = cls(tls=bool(getattr(options, "tls", False)), ca_cert=getattr(options, "ca_cert", None),
                        client_cert=getattr(options, "client_cert", None),
                        client_key=getattr(options, "client_key", None),
                        server_name=getattr(options, "tls_server_name", None),
                        insecure=bool(getattr(options, "insecure", False)), headers=tuple(headers.values()))
        if transport.tls:
            transport.ssl_context()  # a missing or unreadable certificate fails here, naming the file
        return transport

    # ---- headers ---------------------------------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def header_names(self) -> list[str]:
        return [h.name for h in self.headers]

    def http_headers(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (a target's own headers) with the run's headers added; the run's win."""
        out = dict(base or {})
        for header in self.headers:
            for key in [k for k in out if k.lower() == header.name.lower()]:
                del out[key]
            out[header.name] = header.value
        return out

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The headers as gRPC call metadata (lower-cased names), or None when there are none."""
        if not self.headers:
            return None
        for header in self.headers:
            name = header.name.lower()
            if name in _GRPC_RESERVED or name.startswith("grpc-") or name.endswith("-bin"):
                raise UsageError(f"header {header.name} ({header.source}) cannot be sent as gRPC metadata "
                                 "(a name gRPC reserves, or binary metadata)",
                                 hint="leave it out for --protocol grpc")
        return tuple((h.name.lower(), h.value) for h in self.headers)

    # ---- TLS -------------------------------------------------------------------------------------------------
    def ssl_context(self, *, alpn: Sequence[str] | None = None) -> ssl.SSLContext | None:
        """The client context (None without TLS): --ca-cert or the system's CAs, the client certificate, the
        server name to verify (--tls-server-name) on every connection it makes; unverified with --insecure."""
        if not self.tls:
            return None
        key = ",".join(alpn or ())
        if key not in self._contexts:
            self._contexts[key] = self._make_context(alpn)
        return self._contexts[key]

    def _make_context(self, alpn: Sequence[str] | None) -> ssl.SSLContext:
        context = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
        context.server_name = self.server_name
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ca_cert:
            try:
                context.load_verify_locations(cafile=self.ca_cert)
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(f"--ca-cert {self.ca_cert}: {_file_problem(exc)}",
                                 hint="give a PEM file with the CA certificate(s) that signed the server's") from None
        else:
            context.load_default_certs()
        if self.client_cert:
            try:
                context.load_cert_chain(self.client_cert, self.client_key)
            except (OSError, ssl.SSLError) as exc:
                files = self.client_cert + (f" / --client-key {self.client_key}" if self.client_key else "")
                raise UsageError(f"--client-cert {files}: {_file_problem(exc)}",
                                 hint="give PEM files: the client certificate and its private key (the key "
                                      "must match the certificate)") from None
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    def http_session(self, headers: Mapping[str, str] | None = None) -> Any:
        """An aiohttp session with the run's TLS context and headers (``headers``: the target's own)."""
        import aiohttp

        context = self.ssl_context()
        connector = aiohttp.TCPConnector(limit=0, ssl=context if context is not None else True)
        return aiohttp.ClientSession(connector=connector, headers=self.http_headers(headers))

    def grpc_channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> Any:
        """A ``grpc.aio`` channel to ``address``: secure with the run's CA and client certificate, or plain."""
        import grpc

        if not self.tls:
            return grpc.aio.insecure_channel(address, options=list(options))
        options = list(options)
        root = self._read(self.ca_cert) if self.ca_cert else None
        name = self.server_name
        if self.insecure:  # gRPC cannot skip verification: trust whatever certificate the server shows
            root, names = self._pinned(address)
            name = name or (names[0] if names else None)
        if name:
            options.append(("grpc.ssl_target_name_override", name))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=self._read(self.client_key or self.client_cert) if self.client_cert else None,
            certificate_chain=self._read(self.client_cert) if self.client_cert else None)
        return grpc.aio.secure_channel(address, credentials, options=options)

    def _read(self, path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    def _pinned(self, address: str) -> tuple[bytes | None, list[str]]:
        """The certificate the server at ``address`` shows (as the one to trust) and the names it holds."""
        if address not in self._pins:
            target = parse(address, urls=False)
            try:
                pem = ssl.get_server_certificate((target.host, target.port), timeout=2.0)
            except (OSError, ssl.SSLError):
                self._pins[address] = (None, [])  # unreachable: open() says so
            else:
                self._pins[address] = (pem.encode(), _certificate_names(pem))
        return self._pins[address]

    # ---- explaining failures ---------------------------------------------------------------------------------
    async def explain(self, address: str, protocol: str) -> CvloadError | None:
        """Why a target could not open, when the cause is TLS: a handshake of our own with the same settings
        (Python's ssl names the cause, gRPC's errors do not). None: not a TLS problem (unreachable, ...)."""
        target = parse(address, urls=True, paths=True, default_port=443 if self.tls else 80)
        host, port = target.host, target.port
        alpn = ["h2"] if protocol == "grpc" else None
        if not self.tls:
            return await self._speaks_tls(host, port, alpn, address)
        context = self.ssl_context(alpn=alpn)
        name = self.server_name or host
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, server_hostname=name), PROBE_TIMEOUT_S)
        except ssl.SSLCertVerificationError as exc:
            names: list[str] = []
            if exc.verify_code in _NAME_MISMATCH and ":" not in host:  # say which names it holds
                names = (await asyncio.to_thread(self._pinned, f"{host}:{port}"))[1]
            return self._unverified(address, name, exc, names)
        except ssl.SSLError as exc:
            return self._handshake_failed(address, exc)
        except ConnectionResetError:
            return UsageError(f"{address} reset the connection during the TLS handshake",
                              hint="does it speak TLS on this port? if not, leave out --tls (and use http://)")
        except (OSError, asyncio.TimeoutError):
            return None
        try:
            # HTTP/2 servers speak first (SETTINGS); one that closes right after the handshake refused our
            # certificate or wanted one; an HTTP/1 server waits for a request: a timeout here is fine.
            data = await asyncio.wait_for(reader.read(1), 0.3)
            if not data and protocol == "grpc":
                return self._client_refused(address, "closed the connection right after the TLS handshake")
        except ssl.SSLError as exc:
            return self._handshake_failed(address, exc)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return None

    async def explain_error(self, address: str, protocol: str, exc: BaseException) -> CvloadError | None:
        """``explain`` for a connection that failed with ``exc``; a timeout is not looked into (the server is
        silent: one more wait would only push the error past open()'s deadline)."""
        if isinstance(exc, asyncio.TimeoutError | TimeoutError):
            return None
        return await self.explain(address, protocol)

    async def _speaks_tls(self, host: str, port: int, alpn: list[str] | None, address: str) -> CvloadError | None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if alpn:
            context.set_alpn_protocols(alpn)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context,
                                                                       server_hostname=host), PROBE_TIMEOUT_S)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            return None
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return UsageError(f"{address} speaks TLS, and cvload connected without it",
                          hint="pass --tls (with --ca-cert FILE when a private CA signed its certificate), or "
                               "give the server as https://HOST:PORT")

    def _unverified(self, address: str, name: str, exc: ssl.SSLCertVerificationError,
                    names: list[str]) -> UsageError:
        code, reason = exc.verify_code, exc.verify_message
        skip = "; --insecure skips verification (tests only)"
        if code in _NAME_MISMATCH:
            held = f" (it is for {', '.join(names)})" if names else ""
            return UsageError(f"certificate verify failed: the certificate of {address} is not valid for the name "
                              f"{name!r}{held}",
                              hint="use --tls-server-name NAME with a name the certificate holds" + skip)
        if code in (9, 10):  # not yet valid, expired
            return UsageError(f"certificate verify failed for {address}: {reason}",
                              hint="renew the server's certificate (or check this machine's clock)" + skip)
        if code in (2, 18, 19, 20, 21):  # no issuer, self-signed, unknown CA
            trusted = f"the CA in --ca-cert {self.ca_cert}" if self.ca_cert else "a CA this system trusts"
            return UsageError(f"certificate verify failed: the certificate of {address} is not signed by {trusted} "
                              f"({reason})",
                              hint="pass --ca-cert FILE with the CA that signed the server's certificate" + skip)
        return UsageError(f"certificate verify failed for {address}: {reason}", hint=skip[2:])

    def _handshake_failed(self, address: str, exc: ssl.SSLError) -> UsageError:
        reason = (exc.reason or str(exc)).upper()
        if "WRONG_VERSION_NUMBER" in reason or "HTTP_REQUEST" in reason or "RECORD_LAYER" in reason:
            return UsageError(f"{address} does not speak TLS (the TLS handshake got a plain answer)",
                              hint="leave out --tls, or give the server as http://HOST:PORT")
        if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason or "BAD_CERTIFICATE" in reason \
                or "UNKNOWN_CA" in reason or "CERTIFICATE_UNKNOWN" in reason:
            return self._client_refused(address, f"refused the TLS handshake ({exc.reason})")
        return UsageError(f"TLS handshake with {address} failed: {exc.reason or exc}")

    def _client_refused(self, address: str, what: str) -> UsageError:
        if not self.client_cert:
            return UsageError(f"{address} {what}: it requires a client certificate (mutual TLS)",
                              hint="pass --client-cert FILE and --client-key FILE")
        return UsageError(f"{address} {what}: it did not accept the client certificate --client-cert "
                          f"{self.client_cert}", hint="use a client certificate signed by a CA the server trusts")

    def refused(self, where: str, status: str, *, token_env: str | None = None) -> UsageError:
        """HTTP 401/403 or gRPC UNAUTHENTICATED/PERMISSION_DENIED while opening: the token is missing or
        rejected (the message names the headers sent, never their values)."""
        auth = next((h for h in self.headers if h.name.lower() == "authorization"), None)
        others = ", ".join(h.name for h in self.headers)
        sent = f" (headers sent: {others})" if others else " (no headers sent)"
        if auth is not None:
            hint = f"the Authorization header from {auth.source} was not accepted: check the token"
        else:
            hint = "the server wants a token: " + TOKEN_HINT + (f", or set {token_env}" if token_env else "")
        return UsageError(f"{where} refused the request ({status}): token missing or rejected{sent}", hint=hint)

    async def grpc_refusal(self, address: str, exc: Any) -> CvloadError | None:
        """The user-facing error for a gRPC call of open() that failed over credentials or TLS, else None."""
        import grpc

        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return self.refused(address, f"gRPC {code.name}: {exc.details()}")
        if code == grpc.StatusCode.UNAVAILABLE:
            return await self.explain(address, "grpc")
        return None

    def describe(self) -> dict[str, Any] | None:
        """What the summary says of the connection: None without TLS."""
        if not self.tls:
            return None
        return {"verify": not self.insecure, "ca_cert": self.ca_cert, "client_cert": self.client_cert,
                "server_name": self.server_name}


class _NamedContext(ssl.SSLContext):
    """An SSLContext that verifies (and sends as SNI) ``server_name`` whatever host an asyncio client connects
    to: --tls-server-name for aiohttp, which takes a name only per request."""

    server_name: str | None = None

    def wrap_bio(self, incoming: Any, outgoing: Any, server_side: bool = False, server_hostname: Any = None,
                 session: Any = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name or server_hostname, session)


def _file_problem(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "not readable (permission denied)"
    if isinstance(exc, ssl.SSLError):
        return f"not a usable PEM file ({exc.reason or exc})"
    return str(exc)


def _certificate_names(pem: str) -> list[str]:
    """DNS names and IP addresses a PEM certificate is for (its subjectAltName, else its common name)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)  # stdlib, private but long-standing
    if decode is None:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
        f.write(pem)
        f.flush()
        try:
            cert = decode(f.name)
        except (ssl.SSLError, OSError, ValueError):
            return []
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
    if not names:
        names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names
