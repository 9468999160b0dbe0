"""``cvload serve --emulator``: run the embedded Triton server with the CosyVoice emulator in the foreground, or
(``--api cosyvoice``) the emulated CosyVoice Python runtime (gRPC and FastAPI)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from cvload.config import APIS
from cvload.errors import UsageError


def add_emulator_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that can start the embedded server (serve, run, tui)."""
    from cvload.emulator import PRESETS

    parser.add_argument("--emulator", action="store_true", help="start the embedded Triton server with the "
                        "CosyVoice emulator model (needs the 'emulator' extra)")
    parser.add_argument("--profile", default=None, choices=sorted(PRESETS),
                        help="emulator latency profile (default: fixed for serve, demo for run/tui)")
    parser.add_argument("--profile-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one profile setting, e.g. --profile-set error_rate=0.1 (repeatable)")
    parser.add_argument("--pipeline", action="store_true", default=None,
                        help="emulate the real repository's five models (cosyvoice2 calling audio_tokenizer, "
                        "speaker_embedding, tensorrt_llm and token2wav), each with its own queue and instances "
                        "(--profile-set bls_instances=N, token2wav_instances=N, max_batch_size=N)")
    parser.add_argument("--tritonserver", default=None, metavar="PATH", help="tritonserver binary to use")
    parser.add_argument("--max-conc", type=int, default=None, metavar="N",
                        help="--api cosyvoice or openai emulators: refuse calls past N in flight (cosyvoice: its "
                             "--max_conc, default 4, RESOURCE_EXHAUSTED/503; openai: HTTP 429, default no cap)")


def parse_overrides(items: list[str]) -> dict[str, object]:
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--profile-set {item!r}: expected KEY=VALUE, e.g. error_rate=0.1")
        overrides[key.strip()] = value.strip()
    return overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the embedded Triton server (CosyVoice emulator) in the foreground",
                       description="Start a real tritonserver with the CosyVoice emulator model repository, print "
                       "its endpoints once ready, and stop it cleanly on Ctrl-C or SIGTERM.")
    add_emulator_options(p)
    p.add_argument("--api", choices=APIS, default="triton",
                   help="triton (default: tritonserver with the emulator model), cosyvoice (CosyVoice's Python "
                        "runtime: a gRPC server and a FastAPI server, on --grpc-port and --http-port) or openai "
                        "(POST /v1/audio/speech on --http-port; needs a bearer token when CVLOAD_EMULATOR_API_KEY "
                        "is set)")
    p.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                   help="cosyvoice: the rate the emulated model speaks at (24000 CosyVoice2/3, 22050 CosyVoice-300M)")
    p.add_argument("--mode", choices=("streaming", "offline"), default="streaming",
                   help="decoupled (streaming) or offline front model, as the real deployment's decoupled_mode")
    p.add_argument("--model", default="cosyvoice2", help="model name to serve (default cosyvoice2)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=None)
    p.add_argument("--grpc-port", type=int, default=None)
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--workdir", type=Path, default=None, help="where the model repository and log go")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.set_defaults(func=run)


class _Stop(Exception):
    """SIGTERM (or SIGINT) arrived while the server was still starting."""


def run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from cvload.emulator import (
        EmulatedModel,
        build_pipeline_repository,
        build_repository,
        get_profile,
        pipeline_models,
    )
    from cvload.process import tail
    from cvload.triton.launcher import TritonServer

    if not args.emulator:
        raise UsageError("cvload serve only runs the embedded emulator for now: add --emulator",
                         hint="for the real TensorRT-LLM server use `cvload bootstrap up`")
    profile = get_profile(args.profile or "fixed", parse_overrides(args.profile_set))
    if args.api == "openai":
        return run_openai(args, profile)
    if args.api == "cosyvoice":
        return _serve_runtime(args, profile)
    own_root = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="cvload-serve-")) if own_root else args.workdir
    if args.pipeline:
        repo = build_pipeline_repository(root, profile, name=args.model, mode=args.mode)
    else:
        repo = build_repository(root, [EmulatedModel(name=args.model, profile=profile, mode=args.mode)])
    server = TritonServer(repo, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, tritonserver=args.tritonserver, workdir=root / "server",
                          ready_timeout=args.ready_timeout, die_with_parent=True)
    stop = threading.Event()
    serving = False

    def on_signal(signum: int, _frame: object) -> None:
        if not serving:
            raise _Stop(signal.Signals(signum).name)  # unwinds start(), which stops the half-started server
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        with server:
            serving = True
            ep = server.endpoints()
            shape = (f", pipeline: {args.model} calling {', '.join(pipeline_models(args.model)[1:])}"
                     if args.pipeline else "")
            print(f"cvload emulator ready: model {args.model} ({args.mode}, profile {profile.name}{shape})")
            print(f"  grpc     {ep['grpc']}")
            print(f"  http     {ep['http']}")
            print(f"  metrics  {ep['metrics']}")
            print(f"  log      {ep['log']}")
            print(f"try: cvload run --server {ep['grpc']} --mode {args.mode} --requests 20", flush=True)
            while not stop.wait(0.5):
                if not server.alive():
                    print(f"tritonserver exited unexpectedly; log tail:\n{tail(server.log_path, 25)}", flush=True)
                    code = 1
                    break
            if code == 0:
                print("stopping tritonserver...", flush=True)
    except _Stop:
        code = 130
        print("interrupted while starting", flush=True)
    except BaseException:
        code = -1
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # A temporary folder goes, unless the server failed: then its log stays for a look.
        failed = code != 130 and server.clean_exit is False
        if own_root and failed and server.log_path is not None and server.log_path.exists():
            print(f"kept {root} (server log {server.log_path})", flush=True)
        elif own_root:
            shutil.rmtree(root, ignore_errors=True)
    if code == 0:
        print("stopped", flush=True)
    return code


def run_openai(args: argparse.Namespace, profile: object) -> int:
    """The OpenAI-style speech emulator in the foreground until Ctrl-C or SIGTERM."""
    import os

    from cvload.emulator.openai_server import TOKEN_ENV, OpenAIServer

    max_conc = args.max_conc or 0
    if max_conc < 0:
        raise UsageError(f"--max-conc must not be negative, got {max_conc}")
    server = OpenAIServer(profile, model=args.model, host=args.host, port=args.http_port,  # type: ignore[arg-type]  # profile: a Profile, typed object here
                          max_conc=max_conc, token=os.environ.get(TOKEN_ENV) or None, workdir=args.workdir,
                          ready_timeout=args.ready_timeout, die_with_parent=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with server:
            ep = server.endpoints()
            cap = f", at most {max_conc} in flight" if max_conc else ""
            token = f", bearer token from {TOKEN_ENV}" if server.token else ""
            print(f"cvload openai emulator ready: model {args.model} (profile {profile.name}{cap}{token})")  # type: ignore[attr-defined]  # as above
            print(f"  speech   POST {ep['speech']}")
            print(f"  log      {ep['log']}")
            print(f"try: cvload run --api openai --server {server.url} --requests 20", flush=True)
            while not stop.wait(0.5):
                if not server.alive():
                    print("the OpenAI-style emulator exited unexpectedly", flush=True)
                    return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped", flush=True)
    return 0


def _serve_runtime(args: argparse.Namespace, profile: object) -> int:
    """The emulated CosyVoice Python runtime in the foreground until Ctrl-C or SIGTERM."""
    from cvload.emulator.runtime_server import DEFAULT_MAX_CONC, RuntimeServer
    from cvload.process import tail

    max_conc = args.max_conc or DEFAULT_MAX_CONC
    if max_conc < 1:
        raise UsageError(f"--max-conc must be at least 1, got {max_conc}")
    server = RuntimeServer(profile, host=args.host, grpc_port=args.grpc_port,  # type: ignore[arg-type]  # profile: a Profile, typed object here
                           http_port=args.http_port, max_conc=max_conc, sample_rate=args.sample_rate or 24000,
                           workdir=args.workdir, ready_timeout=args.ready_timeout, die_with_parent=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        with server:
            ep = server.endpoints()
            print(f"cvload emulator ready: CosyVoice Python runtime (profile {profile.name}, "  # type: ignore[attr-defined]  # as above
                  f"max_conc {max_conc}, {server.sample_rate} Hz; one response per sentence)")
            print(f"  grpc     {ep['grpc']}")
            print(f"  http     {ep['http']}  (FastAPI: /inference_sft, _zero_shot, _cross_lingual, _instruct, "
                  "_instruct2)")
            print(f"  log      {ep['log']}")
            print(f"try: cvload run --api cosyvoice --server {ep['grpc']} --requests 20", flush=True)
            while not stop.wait(0.5):
                if not server.alive():
                    print(f"the emulated runtime exited unexpectedly; log tail:\n{tail(server.log_path, 25)}",
                          flush=True)
                    code = 1
                    break
            if code == 0:
                print("stopping the emulated runtime...", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 0:
        print("stopped", flush=True)
    return code
