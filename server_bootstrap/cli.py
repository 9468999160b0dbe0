"""``cvload bootstrap plan|up|status|logs|down|doctor`` (also ``python -m server_bootstrap``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cvload.cli import Parser, dispatch
from cvload.errors import EXIT_RUNTIME, UsageError
from cvload.settings.address import Ports, hostport
from server_bootstrap.config import TARGETS, DeploymentConfig, config_from_dict, load_config, parse_gpus
from server_bootstrap.layout import Layout, resolve_workdir
from server_bootstrap.state import State

DESCRIPTION = (
    "Bring a GPU machine from nothing to a served, smoke-tested CosyVoice on Triton + TensorRT-LLM, in 7 resumable "
    "stages (preflight, source, download, build, repo, launch, smoke). `--target emulator` runs the same flow with "
    "the CosyVoice emulator model on any machine (no GPU needed); `--target python-runtime` builds and runs CosyVoice's own gRPC or FastAPI server (runtime/python) in Docker. Exit codes: 0 ok, 1 a stage or check failed, "
    "2 bad config or flags, 130 interrupted."
)


def _common(p: argparse.ArgumentParser, *, deploy: bool = True) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE", help="deployment config (TOML)")
    p.add_argument("--target", choices=TARGETS, default=None,
                   help="trtllm (default: the real deployment), emulator (CPU, no GPU needed) or python-runtime "
                        "(CosyVoice's own gRPC/FastAPI server in its Docker image)")
    p.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="where checkpoints, engines, logs and the state file live (default: the config's "
                        "workdir, else ~/.cache/cvload/bootstrap)")
    if deploy:
        p.add_argument("--gpus", default=None, metavar="0,1",
                       help="one server per GPU (per tp*pp GPUs), on ports shifted by [server] port_stride")
        p.add_argument("--docker", action="store_true", default=None,
                       help="serve (and build) in NVIDIA's Triton TRT-LLM image through docker compose")


def _action(sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], help: str,
            *, deploy: bool = True) -> argparse.ArgumentParser:
    """One subcommand with the options every action takes (those of a deployment too, with ``deploy``)."""
    p = sub.add_parser(name, help=help)
    _common(p, deploy=deploy)
    p.set_defaults(func=func)
    return p


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the bootstrap subcommands to ``parser`` (``cvload bootstrap`` or ``python -m server_bootstrap``)."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    sub.required = True
    _action(sub, "plan", cmd_plan, "print every stage, its exact commands and whether it is done; runs nothing")
    p = _action(sub, "up", cmd_up, "run the stages that are not done; leaves the server(s) running")
    p.add_argument("--progress-every", type=float, default=10.0, metavar="S",
                   help="seconds between progress lines of long stages (default 10)")
    _action(sub, "status", cmd_status, "stages done, servers running and their endpoints (exit 1 if not ready)",
            deploy=False)
    p = _action(sub, "logs", cmd_logs, "show a stage's or a server's log", deploy=False)
    p.add_argument("what", nargs="?", default=None, help="a stage name, 'server' (all servers) or serverN; "
                   "default: list the logs and tail the servers'")
    p.add_argument("-n", "--lines", type=int, default=40, help="lines from the end (default 40)")
    p.add_argument("--path", action="store_true", help="print the log paths only")
    _action(sub, "down", cmd_down, "stop the server(s); built artifacts stay", deploy=False)
    p = _action(sub, "doctor", cmd_doctor, "diagnose a running deployment: ports, health, models, mode, GPU memory",
                deploy=False)
    p.add_argument("--server", default=None, metavar="HOST[:HTTP_PORT]",
                   help="diagnose this server instead of the recorded deployment (gRPC and metrics on the next "
                        "two ports unless given)")
    p.add_argument("--grpc-port", type=int, default=None)
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--mode", choices=("streaming", "offline"), default=None,
                   help="how clients will call the front model (default: the deployment's mode, else streaming)")
    p.add_argument("--model", default=None, help="front model name (default: the deployment's, else cosyvoice2)")
    g = p.add_argument_group("the gRPC path clients take (a load balancer or proxy; docs/tls.md)")
    g.add_argument("--grpc-via", default=None, metavar="HOST:PORT",
                   help="check one gRPC stream's body limit through this address instead of the server's gRPC port")
    g.add_argument("--tls", action="store_true", help="--grpc-via speaks TLS")
    g.add_argument("--ca-cert", default=None, metavar="FILE", help="PEM CA certificate(s) to verify it with")
    g.add_argument("--tls-server-name", default=None, metavar="NAME", help="the name to verify instead of its host")
    g.add_argument("--header", action="append", default=None, metavar='"NAME: VALUE"',
                   help='send this header as gRPC metadata, e.g. "Authorization: Bearer TOKEN" (repeatable)')


# ---- resolving config, workdir and state ---------------------------------------------------------------------
def _deploy_config(args: argparse.Namespace) -> tuple[DeploymentConfig, Layout]:
    overrides = {
        "target": args.target,
        "workdir": str(args.workdir) if args.workdir else None,
        "server.gpus": parse_gpus(args.gpus) if getattr(args, "gpus", None) else None,
        "docker.enabled": True if getattr(args, "docker", None) else None,
    }
    config = load_config(args.config, overrides)
    return config, Layout(resolve_workdir(args.workdir, config), config)


def _recorded(args: argparse.Namespace, *, required: bool = True) -> tuple[DeploymentConfig | None, Layout | None,
                                                                          State | None]:
    """Config and state of an existing deployment: --config if given, else the one the state file recorded."""
    config = None
    if args.config is not None:
        config, layout = _deploy_config(args)
        workdir = layout.workdir
    else:
        workdir = resolve_workdir(args.workdir)
    state = State.load(workdir / "bootstrap-state.json")
    if config is None and state.config:
        saved = dict(state.config)
        if args.target:
            saved["target"] = args.target
        config = config_from_dict(saved, f"{workdir}/bootstrap-state.json")
    if config is None:
        if required:
            raise UsageError(f"no deployment recorded in {workdir}",
                             hint="run `cvload bootstrap up` first, or pass the --workdir / --config it used")
        return None, None, state
    return config, Layout(workdir, config), state


# ---- actions -------------------------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    from server_bootstrap import pipeline

    config, layout = _deploy_config(args)
    ctx = pipeline.context(config, layout, sys.stdout)
    print(pipeline.plan(ctx))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from server_bootstrap import pipeline, servers
    from server_bootstrap.state import workdir_lock

    config, layout = _deploy_config(args)
    if args.progress_every <= 0:
        raise UsageError("--progress-every must be positive")
    with workdir_lock(layout.workdir):
        ctx = pipeline.context(config, layout, sys.stdout)
        ctx.progress_every = args.progress_every
        print(f"cvload bootstrap up: target {config.target}, mode {config.mode}, workdir {layout.workdir}",
              flush=True)
        records = pipeline.up(ctx)
    print(f"endpoints: {servers.endpoints_line(records)}")
    print(f"try: {servers.run_hint(records, config.mode)}")
    print("stop with: cvload bootstrap down" + (f" --workdir {layout.workdir}" if args.workdir else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from server_bootstrap import pipeline

    config, layout, state = _recorded(args)
    assert config is not None and layout is not None and state is not None
    text, ready = pipeline.status(pipeline.context(config, layout, sys.stdout, state=state))
    print(text)
    return 0 if ready else EXIT_RUNTIME


def cmd_logs(args: argparse.Namespace) -> int:
    from cvload.subprocesses import human_size, tail

    config, layout, state = _recorded(args)
    assert layout is not None and state is not None
    logs: dict[str, Path] = {}
    if layout.logs.is_dir():
        for path in sorted(layout.logs.glob("*.log")):
            logs[path.stem] = path
    for rec in state.servers:
        logs[f"server{rec.index}"] = Path(rec.log)
    if not logs:
        raise UsageError(f"no logs in {layout.logs} yet", hint="cvload bootstrap up writes them")
    if args.what is None:
        chosen = [n for n in logs if n.startswith("server")]
        for name, path in logs.items():
            size = human_size(path.stat().st_size) if path.exists() else "missing"
            print(f"{name:<10} {size:>10}  {path}")
    elif args.what == "server":
        chosen = [n for n in logs if n.startswith("server")]
    elif args.what in logs:
        chosen = [args.what]
    else:
        raise UsageError(f"no log named {args.what!r}", hint="available: " + ", ".join(logs) + " (or 'server')")
    if args.path:
        for name in chosen:
            print(logs[name])
        return 0
    containers = {f"server{r.index}": r.container for r in state.servers if r.container}
    for name in chosen:
        if name in containers:  # python-runtime: the container's output is docker's, not a file
            from server_bootstrap.servers import run_quiet

            cmd = ["docker", "logs", "--tail", str(args.lines), str(containers[name])]
            print(f"==> {' '.join(cmd)} <==")
            proc = run_quiet(cmd)
            print((proc.stdout + proc.stderr).rstrip())
            if proc.returncode != 0:
                return EXIT_RUNTIME
            continue
        print(f"==> {logs[name]} (last {args.lines} lines) <==")
        print(tail(logs[name], args.lines))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from server_bootstrap import pipeline
    from server_bootstrap.state import workdir_lock

    config, layout, state = _recorded(args)
    assert config is not None and layout is not None and state is not None
    with workdir_lock(layout.workdir):
        state = State.load(layout.state_path)  # re-read under the lock
        count = pipeline.down(pipeline.context(config, layout, sys.stdout, state=state))
    print(f"stopped {count} server(s)" if count else "nothing was running")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from server_bootstrap import doctor
    from server_bootstrap.findings import format_findings

    config, _layout, state = _recorded(args, required=args.server is None)
    if (args.target or (config.target if config else None)) == "python-runtime":
        return _doctor_runtime(args, config, state)
    expect = doctor.Expectations()
    if config is not None:
        expect = doctor.Expectations(model=config.model.name, mode=config.mode, target=config.target,
                                     max_batch_size=config.triton.max_batch_size,
                                     bls_instances=config.triton.bls_instances,
                                     token2wav_instances=config.triton.token2wav_instances,
                                     use_spk2info_cache=config.triton.use_spk2info_cache,
                                     pipeline=config.emulator.pipeline)
    if args.mode:
        expect.mode = args.mode
    if args.model:
        expect.model = args.model
    if args.server:
        ep = doctor.parse_server(args.server)
        ep.ports = Ports(ep.ports.http, args.grpc_port or ep.ports.grpc, args.metrics_port or ep.ports.metrics)
        if config is None or args.config is None:
            expect.target = None  # an arbitrary server: no deployment to compare against
        endpoints = [(f"server {hostport(ep.host, ep.ports.http)}", ep)]
    else:
        assert state is not None
        if not state.servers:
            raise UsageError("no server recorded in this deployment (it is down)",
                             hint="cvload bootstrap up, or pass --server HOST[:HTTP_PORT]")
        endpoints = [(f"server {r.index} ({r.http})", doctor.Endpoint(
            r.client_host, Ports(r.http_port, r.grpc_port, r.metrics_port), pid=r.pid, start_time=r.start_time,
            log=Path(r.log))) for r in state.servers]
    from cvload.settings.transport import Transport

    transport = Transport.of(args)
    failed = 0
    for title, ep in endpoints:
        findings = doctor.diagnose(ep, expect, grpc_via=args.grpc_via, transport=transport)
        print(f"doctor: {title}, model {expect.model}, intended mode {expect.mode}")
        print(format_findings(findings))
        failed += sum(f.status == "FAIL" for f in findings)
    print(f"{failed} check(s) failed" if failed else "all checks passed")
    return EXIT_RUNTIME if failed else 0


def _doctor_runtime(args: argparse.Namespace, config: DeploymentConfig | None, state: State | None) -> int:
    """The python-runtime target has one port and no Triton endpoints: it must answer as CosyVoice's runtime."""
    from cvload.settings.address import parse
    from server_bootstrap import runtime_probe
    from server_bootstrap.findings import fail, format_findings, ok

    kind = config.runtime.server if config else "grpc"
    if args.server:
        where = parse(args.server, default_port=config.runtime.port if config else 50000, expected="HOST[:PORT]")
        targets: list[tuple[str, str, int, str | None]] = [
            (f"server {hostport(where.host, where.port)}", where.host, where.port, None)]
    else:
        assert state is not None
        if not state.servers:
            raise UsageError("no server recorded in this deployment (it is down)",
                             hint="cvload bootstrap up, or pass --server HOST[:PORT]")
        targets = [(f"server {r.index} (container {r.container})", r.client_host,
                    r.grpc_port if r.runtime == "grpc" else r.http_port, r.container) for r in state.servers]
    failed = 0
    for title, host, port, container in targets:
        answer = runtime_probe.probe(host, port, kind)
        finding = ok("runtime api", answer.detail) if answer.ok else fail(
            "runtime api", answer.detail, answer.fix + (f"; docker logs {container}" if container else ""),
            answer.cause)
        print(f"doctor: {title}, CosyVoice runtime {kind} server")
        print(format_findings([finding]))
        failed += not answer.ok
    print(f"{failed} check(s) failed" if failed else "all checks passed")
    return EXIT_RUNTIME if failed else 0


# ---- entry point ---------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """``cvload bootstrap``: registered through the ``cvload.commands`` entry point (cvload never imports us)."""
    p = sub.add_parser("bootstrap", help="build and launch the Triton + TensorRT-LLM CosyVoice server "
                       "(or the emulator), resumably; diagnose it (doctor)", description=DESCRIPTION)
    configure(p)
    from server_bootstrap import tune  # cvload tune --bootstrap: this package's deployments, by registration

    tune.register()


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m server_bootstrap", description=DESCRIPTION)
    configure(parser)
    return dispatch(parser.parse_args(argv), name="cvload bootstrap",
                    interrupted="interrupted (the stage will be redone by the next up)")
