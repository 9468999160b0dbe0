"""``cvload serve --emulator``: run the embedded Triton server with the CosyVoice emulator in the foreground."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from cvload.errors import UsageError


def add_emulator_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that can start the embedded server (serve, run, tui)."""
    from server_bootstrap.emulator import PRESETS

    parser.add_argument("--emulator", action="store_true", help="start the embedded Triton server with the "
                        "CosyVoice emulator model (needs the 'emulator' extra)")
    parser.add_argument("--profile", default=None, choices=sorted(PRESETS),
                        help="emulator latency profile (default: fixed for serve, demo for run/tui)")
    parser.add_argument("--profile-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one profile setting, e.g. --profile-set error_rate=0.1 (repeatable)")
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


def run(args: argparse.Namespace) -> int:
    from server_bootstrap.emulator import EmulatedModel, build_repository, get_profile
    from server_bootstrap.launcher import TritonServer

    if not args.emulator:
        raise UsageError("cvload serve only runs the embedded emulator for now: add --emulator",
                         hint="for the real TensorRT-LLM server use `cvload bootstrap up`")
    profile = get_profile(args.profile or "fixed", parse_overrides(args.profile_set))
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cvload-serve-"))
    repo = build_repository(workdir, [EmulatedModel(name=args.model, profile=profile, mode=args.mode)])
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = TritonServer(repo, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, tritonserver=args.tritonserver, workdir=workdir,
                          ready_timeout=args.ready_timeout)
    with server:
        ep = server.endpoints()
        print(f"cvload emulator ready: model {args.model} ({args.mode}, profile {profile.name})")
        print(f"  grpc     {ep['grpc']}")
        print(f"  http     {ep['http']}")
        print(f"  metrics  {ep['metrics']}")
        print(f"  log      {ep['log']}")
        print(f"try: cvload run --server {ep['grpc']} --mode {args.mode} --requests 20", flush=True)
        while not stop.wait(0.5):
            if not server.alive():
                from server_bootstrap.launcher import log_tail

                print(f"tritonserver exited unexpectedly; log tail:\n{log_tail(server.log_path)}", flush=True)
                return 1
        print("stopping tritonserver...", flush=True)
    print("stopped", flush=True)
    return 0
