"""``cvload serve --emulator``: run the embedded Triton server with the CosyVoice emulator in the foreground."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

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
