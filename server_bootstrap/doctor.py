"""``doctor``: diagnose a running deployment the way an ops engineer would by hand, one check at a time.

Ports reachable, live/ready, server version, every model's state, the front model's config against the mode
clients will use (including the HTTP 501 a decoupled model answers to ``/infer``), batch size and instance
counts, whether a cancelled streaming request stops (``cancel_check``), GPU metrics with memory headroom, and
(streaming) whether one gRPC stream carries more than a proxy's default request-body limit. Every failed check
says its likely cause and the fix.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvload import subprocesses
from cvload.results.records import PROXY_BODY_LIMIT
from cvload.settings import address
from cvload.settings.transport import Transport
from cvload.targets.checks import decoupled_of
from cvload.telemetry.prometheus import MalformedScrape, parse_metrics
from cvload.triton.launcher import accepts
from server_bootstrap import cancel_check
from server_bootstrap.findings import Finding

GIB = 1 << 30


@dataclass
class Endpoint:
    """A server to diagnose: where it listens, and its process and log when the bootstrap started it."""

    host: str
    ports: address.Ports
    pid: int | None = None
    start_time: int | None = None
    log: Path | None = None

    @property
    def http(self) -> str:
        return f"http://{address.hostport(self.host, self.ports.http)}"


@dataclass
class Expectations:
    """What the deployment is meant to be (from the state file's config, or from flags)."""

    model: str = "cosyvoice2"
    mode: str = "streaming"
    target: str | None = None  # trtllm | emulator | None (unknown server)
    max_batch_size: int | None = None
    bls_instances: int | None = None
    token2wav_instances: int | None = None
    use_spk2info_cache: bool | None = None
    pipeline: bool = False  # the emulator's five-model repository (its cross-model checks are the trtllm ones)

    @property
    def sub_models(self) -> bool:
        """Whether the deployment has the real shape: a front model calling tensorrt_llm and token2wav."""
        return self.target == "trtllm" or (self.target == "emulator" and self.pipeline)


def parse_server(text: str) -> Endpoint:
    """``HOST[:HTTP_PORT]``: gRPC and metrics are assumed on the next two ports, as in Triton's 8000/8001/8002."""
    where = address.parse(text, default_port=address.TRITON_PORTS.http, expected="HOST or HOST:HTTP_PORT",
                          hint=f"e.g. localhost:{address.TRITON_PORTS.http} (gRPC and metrics are the next two "
                               "ports unless --grpc-port / --metrics-port say otherwise)")
    return Endpoint(where.host, address.Ports.beside(where.port, "http"))


def _http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc).encode()


def _json(body: bytes) -> Any:
    """The parsed body, or None when it is not JSON (an ordinary web server, a proxy's error page)."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _not_triton(url: str) -> Finding:
    return Finding("triton api", "FAIL", f"{url}: not a Triton server (HTTP answered but not with Triton's JSON)",
                   "another HTTP service (or a proxy) listens on that port",
                   "give the Triton HTTP port with --server HOST:HTTP_PORT (Triton's default is 8000)")


def _instances(config: Any) -> int:
    groups = config.get("instance_group", []) if isinstance(config, dict) else []
    try:
        return sum(int(g.get("count", 1)) for g in groups if isinstance(g, dict))
    except (TypeError, ValueError):
        return 0


def _loading_models(log: Path | None) -> list[str]:
    """Models the server log shows loading and never finishing (loaded or failed)."""
    if log is None:
        return []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    loading = re.findall(r'loading: ([^:"\s]+):\d+', text)
    finished = set(re.findall(r"successfully loaded '([^']+)'", text))
    finished |= set(re.findall(r"failed to load '([^']+)'", text))
    return [m for m in dict.fromkeys(loading) if m not in finished]


def diagnose(ep: Endpoint, expect: Expectations, *, grpc_via: str | None = None,
             transport: Transport | None = None) -> list[Finding]:
    """Every check of one server. ``grpc_via``: the gRPC address clients reach it through (a load balancer or
    proxy; ``transport``: its TLS and headers), where the stream-body check runs instead of the gRPC port."""
    findings: list[Finding] = []
    add = findings.append
    base = ep.http
    ports = {"http": ep.ports.http, "grpc": ep.ports.grpc, "metrics": ep.ports.metrics}
    reach = {kind: accepts(ep.host, port) for kind, port in ports.items()}
    proc_alive = subprocesses.alive(ep.pid, ep.start_time) if ep.pid else None
    for kind, port in ports.items():
        if reach[kind]:
            add(Finding(f"{kind} port", "ok", f"{ep.host}:{port} accepts connections"))
            continue
        if proc_alive:
            stuck = _loading_models(ep.log)
            cause = (f"the server process (pid {ep.pid}) runs but does not listen yet: Triton opens its ports only "
                     "after loading every model" + (f"; still loading: {', '.join(stuck)}" if stuck else ""))
            fix = ("a model stuck loading usually means a Python-backend stub that cannot start (missing "
                   "package, wrong Python, libpython mismatch) or a TensorRT engine that does not load; read "
                   f"the log: {ep.log}") if stuck else f"wait, then read the log: {ep.log}"
            add(Finding(f"{kind} port", "FAIL", f"{ep.host}:{port} refuses connections", cause, fix))
        elif ep.pid:
            add(Finding(f"{kind} port", "FAIL", f"{ep.host}:{port} refuses connections",
                        f"the recorded server process (pid {ep.pid}) is not running: it exited or was killed",
                        f"read the end of its log ({ep.log}) then run `cvload bootstrap up`"))
        else:
            add(Finding(f"{kind} port", "FAIL", f"{ep.host}:{port} refuses connections",
                        "no server listens there (not started, exited, another host or port, or a firewall)",
                        "start it (cvload bootstrap up) or give the right --server HOST:HTTP_PORT"))
    if not reach["http"]:
        return findings

    code, _ = _http("GET", f"{base}/v2/health/live")
    add(Finding("live", "ok", "/v2/health/live 200") if code == 200 else
        Finding("live", "FAIL", f"/v2/health/live answered {code}", "the server is shutting down or broken",
                f"read the server log{f' ({ep.log})' if ep.log else ''}"))
    code, _ = _http("GET", f"{base}/v2/health/ready")
    ready = code == 200
    add(Finding("ready", "ok", "/v2/health/ready 200") if ready else
        Finding("ready", "FAIL", f"/v2/health/ready answered {code}",
                "a model is not READY (see the model list below)", "fix the model that failed to load, then "
                "restart (cvload bootstrap up)"))
    code, body = _http("GET", f"{base}/v2")
    if code == 200:
        meta = _json(body)
        if not isinstance(meta, dict):
            add(_not_triton(f"{base}/v2"))
            return findings
        add(Finding("server version", "info", f"{meta.get('name', '?')} {meta.get('version', '?')}"))
    _models(findings, base, expect)
    _front_model(findings, base, expect)
    if reach["grpc"] and ready and cancel_check.applies(expect):
        add(cancel_check.check_cancellation(base, address.hostport(ep.host, ep.ports.grpc), expect.model))
    if reach["metrics"]:
        _gpu(findings, address.metrics_url(ep.host, ep.ports.metrics), expect)
    if expect.mode == "streaming" and (grpc_via or reach["grpc"]):
        findings.append(stream_body(grpc_via or address.hostport(ep.host, ep.ports.grpc), transport or Transport()))
    return findings


PROBE_BYTES = 256 * 1024  # padding of each probe request
PROBE_REQUESTS = 6  # 1.5 MB down one stream: past nginx's default client_max_body_size (1 MB)
PROBE_MODEL = "cvload-doctor-stream-probe"  # no such model: each request costs the server a lookup, no inference


def stream_body(where: str, transport: Transport, *, timeout_s: float = 10.0) -> Finding:
    """Send ``PROBE_REQUESTS`` requests of ``PROBE_BYTES`` down one ``ModelStreamInfer`` stream, each to a model
    that does not exist, and read each answer (an error naming the model). cvload shares a stream between
    requests and prompts make them large: a proxy counting a whole HTTP/2 stream as one request body (nginx's
    ``client_max_body_size``, 1 MB by default) resets the stream part way, failing every request on it."""
    import asyncio

    return asyncio.run(_stream_body(where, transport, timeout_s))


async def _stream_body(where: str, transport: Transport, timeout_s: float) -> Finding:
    import asyncio

    import grpc
    from tritonclient.grpc import service_pb2 as pb

    from cvload.targets.grpc_errors import CHANNEL_OPTIONS
    from cvload.targets.grpc_stream import GRPC_FRAME_BYTES, PROXY_SUSPECT_BYTES

    request = pb.ModelInferRequest(model_name=PROBE_MODEL)
    request.inputs.add(name="padding", datatype="UINT8", shape=[PROBE_BYTES])
    request.raw_input_contents.append(bytes(PROBE_BYTES))
    name = "grpc stream body"
    channel = transport.grpc_channel(where, CHANNEL_OPTIONS)
    sent = 0
    try:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                     request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=pb.ModelStreamInferResponse.FromString)(
            metadata=transport.grpc_metadata)
        for i in range(PROBE_REQUESTS):
            request.id = f"probe-{i}"
            sent += GRPC_FRAME_BYTES + request.ByteSize()  # counted as it goes: a reset comes mid-write
            await asyncio.wait_for(call.write(request), timeout_s)
            response = await asyncio.wait_for(call.read(), timeout_s)
            if response is grpc.aio.EOF:
                return Finding(name, "FAIL", f"{where}: the gRPC stream ended after {sent / 1e6:.1f} MB with "
                               "requests unanswered", "the server or a proxy closed it", "read their logs")
        await call.done_writing()
        call.cancel()
    except grpc.aio.AioRpcError as exc:
        what = f"{exc.code().name}: {exc.details()}"
        if sent > PROXY_SUSPECT_BYTES and exc.code() != grpc.StatusCode.UNAVAILABLE:
            return Finding(name, "FAIL", f"{where}: one gRPC stream was reset after {sent / 1e6:.1f} MB ({what})",
                           PROXY_BODY_LIMIT.split(":")[0] + " (cvload, like upstream's client, sends several "
                           "requests with their prompts down one stream)",
                           "nginx: `client_max_body_size 0;` in the gRPC location (docs/tls.md); or run cvload "
                           "with --stream-per-request")
        return Finding(name, "FAIL" if sent else "warn", f"{where}: the stream failed after {sent / 1e6:.1f} MB "
                       f"({what})", "the gRPC endpoint refused a stream (TLS, a token, or not Triton)",
                       "check the address, --tls and --header")
    except TimeoutError:
        return Finding(name, "warn", f"{where}: no answer within {timeout_s:g} s after {sent / 1e6:.1f} MB",
                       "the server or a proxy holds the stream", "read the server's and the proxy's logs")
    finally:
        await channel.close()
    return Finding(name, "ok", f"{where}: one gRPC stream carried {sent / 1e6:.1f} MB "
                   f"({PROBE_REQUESTS} requests): no proxy limit on a stream's body in the way")


def _models(findings: list[Finding], base: str, expect: Expectations) -> None:
    code, body = _http("POST", f"{base}/v2/repository/index", b"{}")
    if code != 200:
        findings.append(Finding("models", "warn", f"repository index answered {code}", "model control API disabled",
                                "look at the log's model table instead"))
        return
    index = _json(body)
    if not isinstance(index, list) or not all(isinstance(m, dict) and "name" in m for m in index):
        findings.append(_not_triton(f"{base}/v2/repository/index"))
        return
    states = {m["name"]: m for m in index}
    listed = ", ".join(f"{m['name']} {m.get('state', '?')}" for m in index) or "none"
    findings.append(Finding("models", "ok" if index else "FAIL", listed,
                            "" if index else "the model repository is empty or unreadable",
                            "" if index else "check --model-repository"))
    wanted = [expect.model]
    if expect.sub_models:
        wanted += ["tensorrt_llm", "token2wav"]
        if expect.use_spk2info_cache is False:
            wanted += ["audio_tokenizer", "speaker_embedding"]
    for name in wanted:
        m = states.get(name)
        if m is None:
            findings.append(Finding(f"model {name}", "FAIL", "not in the repository",
                                    "the repository was built without it (wrong model name or an incomplete copy)",
                                    "cvload bootstrap up rebuilds the repository"))
        elif m.get("state") != "READY":
            reason = m.get("reason", "")
            stuck = m.get("state") in ("LOADING", "UNLOADING")
            findings.append(Finding(
                f"model {name}", "FAIL", f"{m.get('state')} {reason}".strip(),
                "a model stuck loading means a backend stub that cannot start" if stuck else
                "it failed to load: " + (reason or "see the server log"),
                "read the server log (cvload bootstrap logs server); common: missing Python packages in the "
                "image, an engine built by another TensorRT version ('Serialized Engine Version')"))


def _front_model(findings: list[Finding], base: str, expect: Expectations) -> None:
    model = expect.model
    code, body = _http("GET", f"{base}/v2/models/{model}/config")
    if code != 200:
        findings.append(Finding("front model config", "FAIL", f"{model}: config answered {code}",
                                f"no model named {model} is loaded", "pass --model NAME or fix the repository"))
        return
    config = _json(body)
    if not isinstance(config, dict):
        findings.append(_not_triton(f"{base}/v2/models/{model}/config"))
        return
    decoupled = decoupled_of(config)
    served = "streaming" if decoupled else "offline"
    if served == expect.mode:
        findings.append(Finding("mode", "ok", f"{model} is {'decoupled' if decoupled else 'not decoupled'}: serves "
                                f"{served} clients, as intended"))
    else:
        findings.append(Finding(
            "mode", "FAIL", f"{model} is {'decoupled (streaming only)' if decoupled else 'not decoupled (offline only)'}"
            f" but clients will call it {expect.mode}",
            "decoupled_mode was filled for the other client mode" if decoupled else
            "a non-decoupled model answers once, after the whole synthesis: no chunks, no first-chunk latency",
            f"redeploy with mode = \"{expect.mode}\" (cvload bootstrap up), or run clients with --mode {served}"))
    # HTTP infer: a decoupled model refuses it with 501 before running anything, so probing is free
    code, body = _http("POST", f"{base}/v2/models/{model}/infer", b"{}")
    if code == 501:
        status = "ok" if expect.mode == "streaming" else "FAIL"
        findings.append(Finding("http infer", status, "HTTP /infer answers 501 (decoupled transaction policy)",
                                "" if status == "ok" else "HTTP 501 on infer = a streaming-only deployment",
                                "HTTP clients must stream through /generate_stream; offline callers need a "
                                "deployment with mode = \"offline\"" if status == "FAIL" else
                                "HTTP clients stream through /generate_stream (or use gRPC)"))
    elif code:  # an empty request gets a parse error, not the 501: the model takes HTTP /infer
        findings.append(Finding("http infer", "ok", f"HTTP /infer accepts requests for {model} (an empty probe "
                                f"got {code}, not 501)"))
    batch = config.get("max_batch_size")
    batch_status, batch_cause, batch_fix = "info", "", ""
    if expect.max_batch_size is not None and batch != expect.max_batch_size:
        batch_status = "warn"
        batch_cause = f"the config asks for {expect.max_batch_size}: the server runs an older repository"
        batch_fix = "cvload bootstrap up (rebuilds the repository and restarts)"
    findings.append(Finding("max batch size", batch_status, f"{model} max_batch_size {batch}", batch_cause, batch_fix))
    instances = _instances(config)
    if expect.sub_models and expect.bls_instances is not None and instances != expect.bls_instances:
        findings.append(Finding("instances", "warn", f"{model} runs {instances} instance(s), the config asks for "
                                f"{expect.bls_instances}", "the server runs an older repository",
                                "cvload bootstrap up"))
    else:
        findings.append(Finding("instances", "info",
                                f"{model}: {instances} instance(s): "
                                + ("a decoupled model serves concurrent streams from its threads" if decoupled else
                                   f"at most {instances} request(s) synthesize at once, more wait in the queue")))
    if expect.sub_models:
        _llm_decoupled(findings, base, model, decoupled)
        code, body = _http("GET", f"{base}/v2/models/token2wav/config")
        if code == 200:
            count = _instances(_json(body))
            if expect.token2wav_instances is not None and count != expect.token2wav_instances:
                findings.append(Finding("token2wav instances", "warn", f"{count}, the config asks for "
                                        f"{expect.token2wav_instances}", "the server runs an older repository",
                                        "cvload bootstrap up"))
            else:
                findings.append(Finding("token2wav instances", "info", f"{count} (the vocoder every stream waits on)"))


def _llm_decoupled(findings: list[Finding], base: str, model: str, front_decoupled: bool | None) -> None:
    """tensorrt_llm must be decoupled exactly when the front model is: the front streams its tokens with
    ``exec(decoupled=True)`` only then, and a mismatch fails every request, not the server's start."""
    code, body = _http("GET", f"{base}/v2/models/tensorrt_llm/config")
    config = _json(body) if code == 200 else None
    if not isinstance(config, dict):
        return  # reported by the model list
    llm = decoupled_of(config)
    if bool(llm) == bool(front_decoupled):
        findings.append(Finding("llm decoupled", "ok", f"tensorrt_llm is {'decoupled' if llm else 'not decoupled'}, "
                                f"as {model}"))
        return
    findings.append(Finding(
        "llm decoupled", "FAIL", f"{model} is {'decoupled' if front_decoupled else 'not decoupled'} but "
        f"tensorrt_llm is {'decoupled' if llm else 'not decoupled'}",
        "the two templates were filled with different decoupled_mode values (or one was edited by hand): "
        + ("the front asks for a token stream the LLM does not send, every request fails" if front_decoupled else
           "the front waits for one answer from a model that streams, every request fails"),
        "fill both from one decoupled_mode (cvload bootstrap up rebuilds the repository)"))


def _scrape_gpu(url: str, wait_s: float) -> tuple[int, dict[str, dict[str, float]] | None]:
    """GPU readings by UUID (None: not Prometheus text). Triton's GPU gauges read 0 until its first metrics
    refresh (--metrics-interval-ms): wait that long."""
    last: list[tuple[int, dict[str, dict[str, float]] | None]] = []

    def sampled() -> bool:
        code, body = _http("GET", url)
        if code != 200:
            last.append((code, {}))
            return True
        try:
            gpus = parse_metrics(body.decode(errors="replace")).gpus
        except MalformedScrape:
            last.append((code, None))
            return True
        last.append((code, gpus))
        return all(g.get("mem_total_bytes", 0.0) > 0 for g in gpus.values())

    with contextlib.suppress(subprocesses.WaitTimeout):
        subprocesses.wait_until(sampled, wait_s, what="GPU metrics", first_delay=0.2, max_delay=0.2)
    return last[-1]


def _gpu(findings: list[Finding], url: str, expect: Expectations) -> None:
    code, gpus = _scrape_gpu(url, wait_s=3.0)
    if code != 200:
        findings.append(Finding("metrics", "FAIL", f"{url} answered {code}", "metrics disabled (--allow-metrics)",
                                "start tritonserver with --allow-metrics=true"))
        return
    if gpus is None:
        findings.append(Finding("metrics", "FAIL", f"{url}: not Prometheus metrics",
                                "another service answers on the metrics port",
                                "give Triton's metrics port with --metrics-port (Triton's default is 8002)"))
        return
    findings += gpu_findings(gpus, url, expect)


def gpu_findings(gpus: dict[str, dict[str, float]], url: str, expect: Expectations) -> list[Finding]:
    """Memory headroom of each GPU the server reports (``telemetry.prometheus`` readings, keyed by UUID)."""
    findings: list[Finding] = []
    gpus = {uuid: g for uuid, g in gpus.items() if "mem_total_bytes" in g}
    if not gpus:
        if expect.target == "emulator":
            findings.append(Finding("gpu metrics", "skip", "the emulator runs without a GPU"))
        else:
            findings.append(Finding("gpu metrics", "FAIL" if expect.target == "trtllm" else "warn",
                                    "no nv_gpu_* metrics at " + url,
                                    "the server runs without --allow-gpu-metrics=true or sees no GPU "
                                    "(CUDA_VISIBLE_DEVICES, container without --gpus)",
                                    "restart with GPU metrics on (cvload bootstrap up does) and the GPU visible"))
    for uuid, gpu in gpus.items():
        tot = gpu["mem_total_bytes"]
        if tot <= 0:
            findings.append(Finding("gpu memory", "info", f"{uuid[:12]}: not sampled yet (the server refreshes GPU "
                                    "metrics every --metrics-interval-ms)"))
            continue
        use = gpu.get("mem_used_bytes", 0.0)
        free = tot - use
        detail = f"{uuid[:12]}: {use / GIB:.1f} of {tot / GIB:.1f} GiB used, {free / GIB:.1f} GiB free"
        if "util" in gpu:
            detail += f", utilization {gpu['util'] * 100:.0f}%"
        if free < 1 * GIB or free < 0.03 * tot:
            findings.append(Finding("gpu memory", "warn", detail,
                                    "little headroom: long streams or more concurrency may fail to allocate",
                                    "lower [triton] kv_cache_free_gpu_mem_fraction or max_batch_size, or move "
                                    "other processes off this GPU"))
        else:
            findings.append(Finding("gpu memory", "ok", detail))
    return findings
