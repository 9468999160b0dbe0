"""``cvload run [SCENARIO]``: a headless load test for CI; results folder, summary, objectives, exit code."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from cvload.apis import APIS, PROTOCOLS, api_help, api_spec
from cvload.commands.serve import add_emulator_options, parse_overrides
from cvload.errors import UsageError
from cvload.settings.config import (
    ARRIVALS,
    INFERENCES,
    MODES,
    RESPONSE_FORMATS,
    SERVER_LOSS,
    RunConfig,
    parse_duration,
)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except Exception as exc:  # argparse turns this into a one-line usage error
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``tui``; every default is None so a scenario file can supply it."""
    p.add_argument("scenario", nargs="?", default=None,
                   help="scenario TOML file or name (smoke, streaming-8, offline-http, open-loop, ci); "
                        "flags given on the command line override it")
    g = p.add_argument_group("target")
    g.add_argument("--server", action="append", default=None, metavar="HOST[:PORT]",
                   help="server address (repeat to spread requests round-robin); default ports 8001 gRPC, "
                        "8000 HTTP")
    g.add_argument("--protocol", choices=PROTOCOLS, default=None, help="grpc (default) or http")
    g.add_argument("--mode", choices=MODES, default=None,
                   help="streaming (decoupled model, default) or offline; must match the deployment")
    g.add_argument("--model", default=None, help="front model name (default cosyvoice2)")
    g.add_argument("--requests-per-stream", type=int, default=None, metavar="N",
                   help="Triton gRPC streaming: requests one ModelStreamInfer stream carries before another "
                        "opens (0: no bound; default 0, docs/tls.md says why)")
    g.add_argument("--stream-per-request", dest="requests_per_stream", action="store_const", const=1,
                   help="a gRPC stream per request (--requests-per-stream 1): what clients behind a proxy that "
                        "limits a stream's request body (nginx's client_max_body_size) need")
    g.add_argument("--api", choices=APIS, default=None, help="server API: " + api_help())
    g = p.add_argument_group("requests of the cosyvoice and openai APIs")
    g.add_argument("--inference", choices=INFERENCES, default=None,
                   help="cosyvoice: request kind (upstream's route names; default zero_shot with prompts, sft without)")
    g.add_argument("--spk-id", default=None, metavar="ID", help="cosyvoice sft/instruct: the server's speaker id")
    g.add_argument("--instruct-text", default=None, metavar="TEXT", help="cosyvoice instruct/instruct2: the instruction")
    g.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                   help="rate of audio the server sends without saying it (cosyvoice, openai pcm; default 24000: "
                        "CosyVoice2/3; CosyVoice-300M speaks at 22050)")
    g.add_argument("--voice", default=None, help="openai: the voice")
    g.add_argument("--response-format", choices=RESPONSE_FORMATS, default=None,
                   help="openai: pcm (raw int16, may stream; default) or wav (a whole file)")
    add_emulator_options(p)
    g = p.add_argument_group("load shape")
    g.add_argument("--num-tasks", type=int, default=None, metavar="N",
                   help="closed loop: N workers, each sending its next request when the last ends (default 1)")
    g.add_argument("--rate", type=float, default=None, metavar="R", help="open loop: R requests per second")
    g.add_argument("--arrival", choices=ARRIVALS, default=None, help="open-loop arrivals (default poisson)")
    g.add_argument("--max-inflight", type=int, default=None, help="open loop: cap on requests in flight (256)")
    g.add_argument("--requests", type=int, default=None, metavar="N", help="stop after N requests")
    g.add_argument("--duration", type=_duration, default=None, metavar="T", help="stop after T (e.g. 60s, 2m)")
    g.add_argument("--warmup", default=None, metavar="N|T",
                   help="exclude the first N requests or T (e.g. 10s) from statistics")
    g.add_argument("--ramp", type=_duration, default=None, metavar="T",
                   help="spread closed-loop worker starts over T (default 1s; 0 = all at once)")
    g.add_argument("--seed", type=int, default=None)
    g = p.add_argument_group("inputs")
    g.add_argument("--inputs", default=None, metavar="FILE",
                   help="manifest (utt|prompt_text|prompt_wav|target_text) or .jsonl; default: built-in set")
    g.add_argument("--spk-cache", action="store_true", default=None,
                   help="send target_text only (server's cached speaker, use_spk2info_cache)")
    g.add_argument("--pad-prompt", action="store_true", default=None,
                   help="zero-pad prompts like the upstream client (10 s streaming, 1 s offline)")
    g.add_argument("--request-timeout", type=_duration, default=None, metavar="T",
                   help="fail a request not finished after T (default 60s)")
    g.add_argument("--drain", type=_duration, default=None, metavar="T",
                   help="when the run's window ends, wait at most T for requests in flight, then record them "
                        "incomplete (default: each its --request-timeout)")
    g.add_argument("--on-server-loss", choices=SERVER_LOSS, default=None,
                   help="when the server goes away mid-run: abort (default) stops the run (exit 1); continue "
                        "rides out the outage (requests fail fast as connection errors, reconnects with backoff, "
                        "measures again once it is back; outages listed in the summary)")
    g = p.add_argument_group("barge-in: listeners that interrupt (docs/barge-in.md)")
    g.add_argument("--barge-in", default=None, metavar="SHARE@WHEN",
                   help="abandon SHARE of the streaming requests: 30%%@1.5s (1.5 s after the first chunk), "
                        "50%%@first_chunk, 20%%@uniform(0.5s,3s), 30%%@audio(2s) (after 2 s of audio); the call is "
                        "cancelled or the connection closed, as a voice agent does when its caller talks over it")
    g.add_argument("--barge-in-baseline", action="store_true", default=None,
                   help="first run the same load without barge-in (results in OUT/baseline): the summary compares "
                        "the survivors' first chunk with it")
    g.add_argument("--triton-trace", nargs="?", const="", default=None, metavar="FILE",
                   help="the server's side of each abandoned request from Triton's request trace: switched on "
                        "for the run through the trace API (the server must have been started with --trace-config "
                        "triton,file=F); FILE: where this host reads F (default: F itself, cvload beside the server)")
    g = p.add_argument_group("results and objectives")
    g.add_argument("--out", default=None, metavar="DIR", help="results folder (default results/<time>-<mode>)")
    g.add_argument("--save-audio", action="store_true", default=None, help="write one 24 kHz WAV per request")
    g.add_argument("--slo", action="append", default=None, metavar="OBJECTIVE",
                   help='objective, e.g. "first_chunk.p95<300ms", "error_rate<1%%", "rtf.p50<0.5" (repeatable)')
    g.add_argument("--metrics-url", default=None,
                   help="Prometheus metrics endpoint to scrape (default: the first server's, on its gRPC port + 1 "
                        "or HTTP port + 2 as in Triton's 8000/8001/8002; 'none')")
    g.add_argument("--telemetry-interval", type=_duration, default=None, metavar="T")
    g.add_argument("--gpu-source", choices=("auto", "server", "nvml", "none"), default=None)
    g = p.add_argument_group("listening: speech onset, playback, content (docs/speech.md)")
    g.add_argument("--onset", action="store_true", default=None,
                   help="find where speech starts in every response (a VAD in helper processes): first_audible, "
                        "leading_silence")
    g.add_argument("--prebuffer", type=_duration, default=None, metavar="T",
                   help="the imagined player starts once it holds more than T of audio (default 0: at the first "
                        "chunk); stalls and first audible are counted for it")
    g.add_argument("--check-content", nargs="?", const="100%", default=None, metavar="SHARE",
                   help="transcribe responses (helper processes) and score the words: SHARE of requests (100%%, "
                        "25%%) or a budget like 8s/s; implies --onset")
    g.add_argument("--asr", default=None, metavar="NAME[:MODEL|URL]",
                   help="recogniser: moonshine (default, English), whisper[:MODEL], paraformer:DIR, "
                        "sensevoice:DIR, openai:URL[#MODEL]")
    g.add_argument("--max-content-error", default=None, metavar="SHARE",
                   help="a request whose word/character error rate is above this gets content_mismatch "
                        "(default 30%%)")
    g.add_argument("--check-workers", type=int, default=None, metavar="N", help="recogniser processes (default 1)")
    g.add_argument("--language", default=None, choices=("en", "zh"),
                   help="the items' language (default: from each text's script)")
    g = p.add_argument_group("Prometheus: cvload's own live metrics (docs/prometheus.md)")
    g.add_argument("--prometheus-port", type=int, default=None, metavar="PORT",
                   help="serve cvload_* metrics (latency histograms, request counters, in-flight, loop lag) on "
                        "http://ADDRESS:PORT/metrics while the run lasts (0: any free port)")
    g.add_argument("--prometheus-address", default=None, metavar="ADDRESS",
                   help="the address the metrics endpoint listens on (default 0.0.0.0)")
    g.add_argument("--prometheus-linger", type=_duration, default=None, metavar="T",
                   help="keep the endpoint up T after the run so the last scrape sees the final numbers "
                        "(default 15s; Ctrl-C ends it)")
    g.add_argument("--prometheus-push", default=None, metavar="URL",
                   help="push the metrics to a Pushgateway (every 5 s and at the end; job cvload, label run_id): "
                        "for short CI runs nothing scrapes")
    g = p.add_argument_group("TLS and credentials (docs/tls.md)")
    g.add_argument("--tls", action="store_true", default=None,
                   help="connect over TLS (gRPC and HTTP; an https:// --server implies it)")
    g.add_argument("--ca-cert", default=None, metavar="FILE",
                   help="PEM CA certificate(s) to verify the server with (default: the system's)")
    g.add_argument("--client-cert", default=None, metavar="FILE", help="mutual TLS: the client certificate (PEM)")
    g.add_argument("--client-key", default=None, metavar="FILE", help="mutual TLS: its private key (PEM)")
    g.add_argument("--tls-server-name", default=None, metavar="NAME",
                   help="the name to verify in the server's certificate (and send as SNI) instead of its host")
    g.add_argument("--insecure", action="store_true", default=None,
                   help="do not verify the server's certificate (tests only; the summary warns)")
    g.add_argument("--header", action="append", default=None, metavar='"NAME: VALUE"',
                   help='send a header with every request, e.g. "Authorization: Bearer TOKEN" (gRPC: as metadata; '
                        "repeatable; values are written nowhere)")
    g.add_argument("--header-file", default=None, metavar="FILE",
                   help="headers from a file, one 'Name: value' a line (also: CVLOAD_HEADERS, newline-separated)")
    g = p.add_argument_group("scale-out (docs/scale.md)")
    g.add_argument("--processes", default=None, metavar="N|auto",
                   help="run the load in N processes, each with its own event loop and connections (auto: from "
                        "--num-tasks or --rate and the CPUs, one core left for the dashboard); default 1")
    g.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="place the load processes on a Ray cluster's nodes (auto, HOST:6379 or ray://HOST:10001; "
                        "pip install 'cvload[ray]'), one CPU each, spread")
    g.add_argument("--ray-resource", default=None, metavar="NAME",
                   help="only on Ray nodes offering this custom resource (e.g. started with "
                        "--resources '{\"cvload\": 8}')")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a headless load test (CI): results folder, summary, objectives, exit code",
        description="Run a load test against a CosyVoice server and write a results folder. Exit codes: 0 all "
                    "objectives met, 3 an objective failed, 2 bad usage or configuration, 1 runtime failure "
                    "(server unreachable or died).",
    )
    add_run_options(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults < scenario file < flags given on the command line."""
    config = RunConfig()
    if args.scenario:
        from cvload.settings.scenario import load_scenario

        config = config.merged(load_scenario(args.scenario))
    flags: dict[str, Any] = {}
    for name in config.to_json():
        if name in ("scenario", "name", "profile_set", "emulator"):
            continue
        value = getattr(args, name, None)
        if value is not None:
            flags[name] = value
    if getattr(args, "emulator", False):
        flags["emulator"] = True
    if getattr(args, "profile_set", None):
        flags["profile_set"] = {**config.profile_set, **parse_overrides(args.profile_set)}
    if args.scenario:
        flags["scenario"] = str(args.scenario)
    if flags.get("server") and config.emulator and "emulator" not in flags:
        flags["emulator"] = False  # an explicit --server replaces a scenario's embedded server
        flags["pipeline"] = False
    return checked(config.merged(flags).validate())


def checked(config: RunConfig) -> RunConfig:
    """``config`` after the checks that live beside their option (--barge-in's in cvload/load/barge_in.py)."""
    from cvload.load import barge_in

    barge_in.check(config.barge_in, mode=config.mode, seed=config.seed)
    if config.barge_in_baseline and config.barge_in is None:
        raise UsageError("--barge-in-baseline compares with a barge-in run: add --barge-in SHARE@WHEN")
    if config.triton_trace is not None and config.barge_in is None:
        raise UsageError("--triton-trace reads the server's side of abandoned requests: add --barge-in SHARE@WHEN")
    if config.triton_trace is not None and not api_spec(config.api).triton_telemetry:
        raise UsageError(f"--triton-trace reads a Triton server's request trace, not --api {config.api}'s",
                         hint="leave --triton-trace out: the release comes from the client (or an emulator's trace)")
    return config


def run(args: argparse.Namespace) -> int:
    from cvload.console import ConsoleView

    return run_headless(config_from_args(args), ConsoleView(json_output=args.json, quiet=args.quiet))


class _BaselineView:
    """The baseline run of ``--barge-in-baseline`` says one line when it is done (its summary is in its folder)."""

    def preparing(self, config: RunConfig) -> None: ...

    def attach(self, session: Any) -> None: ...

    def detach(self, session: Any) -> None: ...

    def final(self, session: Any, summary: dict[str, Any]) -> None:
        first = (summary.get("metrics") or {}).get("first_chunk_latency_ms") or {}
        p95 = first.get("p95")
        sys.stderr.write(f"barge-in baseline: {summary['requests']['ok']} ok, first chunk p95 "
                         f"{'-' if p95 is None else f'{p95:.1f} ms'}\n")


def run_headless(config: RunConfig, view: Any) -> int:
    """One run in this process, as ``Session.run`` runs it, with ``view`` (the console) listening.

    ``--barge-in-baseline``: the same load without barge-in runs first, into ``OUT/baseline``."""
    from cvload.load.session import Session

    try:
        baseline = None
        if config.barge_in_baseline:
            from cvload.results.writer import default_out_dir

            out = config.out or str(default_out_dir("barge-in"))
            config = config.merged({"out": out})
            first = Session(config.merged({"out": f"{out}/baseline"}))
            first.config.barge_in, first.config.barge_in_baseline = None, False
            sys.stderr.write(f"barge-in baseline: the same load without barge-in, into {out}/baseline\n")
            asyncio.run(first.run(_BaselineView()))
            assert first.summary is not None
            baseline = (first.summary, f"{out}/baseline")
        return asyncio.run(Session(config, baseline=baseline).run(view))
    finally:
        sys.stdout.flush()
