"""Plan and run the stages against the state file: skip what is done, redo what changed or was interrupted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from cvload.errors import CvloadError
from cvload.subprocesses import human_duration, show
from server_bootstrap import servers
from server_bootstrap.config import DeploymentConfig
from server_bootstrap.layout import Layout
from server_bootstrap.stages import Context, Stage, StageLog, build_stages, stop_recorded
from server_bootstrap.state import DONE, FAILED, INTERRUPTED, RUNNING, ServerRecord, State, stable_hash


@dataclass
class Decision:
    stage: Stage
    status: str  # what plan/status print
    run: bool


def context(config: DeploymentConfig, layout: Layout, out: TextIO, *, state: State | None = None) -> Context:
    state = state or State.load(layout.state_path)
    return Context(config=config, layout=layout, state=state, out=out)


def _decide(stage: Stage, hashes: dict[str, str], will_run: set[str], ctx: Context) -> Decision:
    own = stage.inputs()
    deps = list(stage.deps)
    stage.inputs_hash = stable_hash({"inputs": own, "deps": [hashes.get(d, "") for d in deps]})
    hashes[stage.name] = stage.inputs_hash
    if stage.always:
        return Decision(stage, "runs on every up", True)
    rerun_deps = [d for d in deps if d in will_run]
    if rerun_deps:
        return Decision(stage, f"will redo: after {', '.join(rerun_deps)}", True)
    rec = ctx.state.stage(ctx.config.target, stage.name)
    if rec is not None and rec.status == DONE and rec.inputs_hash == stage.inputs_hash:
        if stage.done():
            return Decision(stage, "done", False)
        return Decision(stage, "done before, outputs gone: will redo", True)
    if rec is None:
        if stage.trust_files and stage.done():
            return Decision(stage, "done (files already there)", False)
        return Decision(stage, "pending", True)
    if rec.status in (RUNNING, INTERRUPTED):
        return Decision(stage, "interrupted: will redo", True)
    if rec.status == FAILED:
        return Decision(stage, "failed last time: will redo", True)
    return Decision(stage, "inputs changed: will redo", True)


def decisions(ctx: Context) -> list[Decision]:
    hashes: dict[str, str] = {}
    will_run: set[str] = set()
    out = []
    for stage in build_stages(ctx):
        d = _decide(stage, hashes, will_run, ctx)
        if d.run and not stage.always:
            will_run.add(stage.name)
        out.append(d)
    ctx.will_run = {d.stage.name for d in out if d.run}
    return out


def plan(ctx: Context) -> str:
    """Every stage with its exact commands and whether it would run; runs nothing."""
    c = ctx.config
    if c.target == "python-runtime":
        head = (f"cvload bootstrap plan: target python-runtime, server {c.runtime.server} on port {c.runtime.port}, "
                f"image {c.runtime.image}, workdir {ctx.layout.workdir}")
    else:
        head = (f"cvload bootstrap plan: target {c.target}, mode {c.mode} (decoupled={str(c.decoupled).lower()}), "
                f"{len(c.server_gpus())} server(s), workdir {ctx.layout.workdir}"
                + (f", docker image {c.docker.image}" if c.docker.enabled else ""))
    lines = [head,
             f"  config: {c.origin}"]
    ds = decisions(ctx)
    for d in ds:
        lines.append(f"{numbers(c.target)[d.stage.name]}. {d.stage.name:<9} [{d.status}] {d.stage.title}")
        for cmd in d.stage.commands():
            lines.append(f"     $ {show(cmd)}")
        for text in d.stage.describe():
            lines.append(f"     {text}")
    if c.target == "emulator":
        lines.append("   (stages 2-4, source, download and build, are the real deployment's: the emulator target "
                     "serves the CosyVoice emulator model instead)")
    return "\n".join(lines)


# Stage numbers are the real deployment's, also for the emulator target (which has no stages 2-4); the
# python-runtime target has its own five.
NUMBERS = {name: i + 1 for i, name in enumerate(("preflight", "source", "download", "build", "repo", "launch",
                                                    "smoke"))}
RUNTIME_NUMBERS = {name: i + 1 for i, name in enumerate(("preflight", "source", "download", "image", "container"))}


def numbers(target: str) -> dict[str, int]:
    return RUNTIME_NUMBERS if target == "python-runtime" else NUMBERS


def up(ctx: Context) -> list[ServerRecord]:
    """Run every stage that is not done; return the running servers."""
    c, state, out = ctx.config, ctx.state, ctx.out
    state.target = c.target
    state.config = c.to_dict()
    state.save()
    ds = decisions(ctx)
    ran: set[str] = set()
    hashes: dict[str, str] = {}
    for planned in ds:
        stage = planned.stage
        # decide again now: an earlier stage may have changed the inputs (e.g. templates after a clone)
        d = _decide(stage, hashes, ran, ctx)
        order = numbers(c.target)
        head = f"[{order[stage.name]}/{len(order)}] {stage.name}"
        if not d.run:
            print(f"{head}: {d.status}, skipped", file=out, flush=True)
            continue
        print(f"{head}: {stage.title}" + ("" if stage.always else f" ({d.status})"), file=out, flush=True)
        log = StageLog(stage.log_path, out)
        state.mark(c.target, stage.name, RUNNING, stage.inputs_hash)
        try:
            summary = stage.run(log)
        except KeyboardInterrupt:
            state.mark(c.target, stage.name, INTERRUPTED, stage.inputs_hash, "interrupted")
            raise
        except CvloadError as exc:
            state.mark(c.target, stage.name, FAILED, stage.inputs_hash, exc.message[:2000])
            log.note(f"FAILED: {exc}")
            raise
        except OSError as exc:
            state.mark(c.target, stage.name, FAILED, stage.inputs_hash, str(exc))
            raise CvloadError(f"{stage.name}: {exc}", hint=f"stage log {stage.log_path}") from None
        except Exception as exc:  # a bug or an unforeseen input: still a failed stage and a message, no traceback
            detail = f"{type(exc).__name__}: {exc}"
            state.mark(c.target, stage.name, FAILED, stage.inputs_hash, detail[:2000])
            log.note(f"FAILED: {detail}")
            raise CvloadError(f"{stage.name} failed unexpectedly ({detail})",
                              hint=f"stage log {stage.log_path}; please report this if the cause is unclear") from exc
        state.mark(c.target, stage.name, DONE, stage.inputs_hash, summary)
        log.note(f"done: {summary}")
        if not stage.always:
            ran.add(stage.name)
        if stage.echo_summary:
            print(f"    {stage.name}: {summary}", file=out, flush=True)
    return state.servers


def status(ctx: Context) -> tuple[str, bool]:
    """Stages and servers as the state file and the processes tell; True when every server is ready."""
    c, state = ctx.config, ctx.state
    lines = [f"deployment in {ctx.layout.workdir}: target {c.target}, mode {c.mode}, config {c.origin}"]
    for d in decisions(ctx):
        rec = state.stage(c.target, d.stage.name)
        when = ""
        if rec is not None and rec.finished:
            detail = rec.detail.splitlines()[0] if rec.detail else ""
            detail = detail if len(detail) <= 100 else detail[:97] + "..."
            when = f" ({human_duration(rec.finished - rec.started)}; {detail})" if detail else ""
        shown = d.status if not d.stage.always else (
            f"last {rec.status}" if rec is not None else "not run yet")
        lines.append(f"  {d.stage.name:<9} {shown}{when}")
    up_all = bool(state.servers) and all(servers.ready(r) for r in state.servers)
    if not state.servers:
        lines.append("servers: none running (cvload bootstrap up)")
    else:
        lines.append(f"servers ({state.servers_target}):")
        lines += [f"  {servers.describe(r)}" for r in state.servers]
        if up_all:
            lines.append(f"endpoints: {servers.endpoints_line(state.servers)}")
            lines.append(f"try: {servers.run_hint(state.servers, c.mode)}")
    return "\n".join(lines), up_all


def down(ctx: Context) -> int:
    """Stop every recorded server; the built artifacts stay, so the next up only relaunches."""
    state = ctx.state
    count = stop_recorded(state, ctx.layout)
    for target in list(state.stages):
        for stage in ("launch", "smoke", "container"):
            state.stages[target].pop(stage, None)
    state.save()
    return count
