"""``cvload serve``: the emulated server of an API in the foreground (``--api triton``, the default: the embedded
Triton server with the CosyVoice emulator; ``cosyvoice``: CosyVoice's Python runtime, gRPC and FastAPI;
``openai``: OpenAI-style speech) until Ctrl-C or SIGTERM. ``--emulator`` is accepted, and implied: emulating is
what ``serve`` does (``cvload bootstrap up`` serves the real model)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from cvload.apis import APIS, api_help, api_spec
from cvload.errors import UsageError


def add_emulator_options(parser: argparse.ArgumentParser, *, implied: bool = False) -> None:
    """Options shared by every command that can start the embedded server (serve, run, tui); ``implied``:
    the command always emulates (serve), so ``--emulator`` is accepted and changes nothing."""
    from cvload.emulator import PRESETS

    parser.add_argument("--emulator", action="store_true",
                        help="accepted for scripts that pass it: serve always runs the emulator" if implied else
                        "start the embedded Triton server with the CosyVoice emulator model (with --api cosyvoice "
                        "or openai: that server, emulated; needs the 'emulator' extra)")
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
    p = sub.add_parser("serve", help="run an emulated server (default: Triton with the CosyVoice emulator) in the "
                       "foreground",
                       description="Start the emulated server of an API (default: a real tritonserver with the "
                       "CosyVoice emulator model repository), print its endpoints and the `cvload run` line that "
                       "measures it once ready, and stop it cleanly on Ctrl-C or SIGTERM. For the real model, see "
                       "`cvload bootstrap up`.")
    add_emulator_options(p, implied=True)
    p.add_argument("--api", choices=APIS, default="triton",
                   help="which server to emulate: " + api_help() + ". cosyvoice serves gRPC and FastAPI on "
                        "--grpc-port and --http-port; openai serves --http-port and wants a bearer token when "
                        "CVLOAD_EMULATOR_API_KEY is set")
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
    import os

    from cvload.emulator import get_profile
    from cvload.emulator.launch import EmulatorSettings
    from cvload.emulator.openai_server import TOKEN_ENV
    from cvload.subprocesses import tail

    settings = EmulatorSettings(
        profile=get_profile(args.profile or "fixed", parse_overrides(args.profile_set)), model=args.model,
        mode=args.mode, pipeline=bool(args.pipeline), max_conc=args.max_conc, sample_rate=args.sample_rate,
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        workdir=args.workdir, server_folder="server", tritonserver=args.tritonserver,
        ready_timeout=args.ready_timeout, token=os.environ.get(TOKEN_ENV) or None)
    emulator = api_spec(args.api).emulated(settings)
    stop = threading.Event()
    serving = False

    def on_signal(signum: int, _frame: object) -> None:
        if not serving:
            raise _Stop(signal.Signals(signum).name)  # unwinds start(), which stops the half-started server
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    interrupted = False
    try:
        emulator.start()
        serving = True
        for line in emulator.ready_lines():
            print(line)
        print(f"try: {emulator.run_line()}", flush=True)
        while not stop.wait(0.5):
            if not emulator.alive():
                log = emulator.log_path
                print(f"{emulator.what} exited unexpectedly" + (f"; log tail:\n{tail(log, 25)}" if log else ""),
                      flush=True)
                code = 1
                break
        if code == 0:
            print(f"stopping {emulator.what}...", flush=True)
    except _Stop:
        code, interrupted = 130, True
        print("interrupted while starting", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        emulator.stop(keep_failed=not interrupted)
        kept = getattr(emulator, "kept", None)
        if kept is not None:
            print(f"kept {kept} (server log {emulator.log_path})", flush=True)
    if code == 0:
        print("stopped", flush=True)
    return code
