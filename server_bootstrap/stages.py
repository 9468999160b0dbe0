"""The seven stages of a deployment, each an object that can say what it would run, from which inputs, whether
its outputs are there, and run.

``commands()`` are the exact argument lists a stage runs (what ``plan`` prints); in-process stages (preflight,
repository, launch bookkeeping, smoke) ``describe()`` their work instead. ``inputs()`` are hashed into the state
file: a stage is skipped only when it finished from the same inputs (and those of the stages it depends on) and
``done()`` still finds its outputs.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cvload import subprocesses
from cvload.errors import CvloadError, UsageError
from server_bootstrap import compose, model_repository, preflight, servers
from server_bootstrap.config import DeploymentConfig
from server_bootstrap.findings import WARN, failures, format_findings
from server_bootstrap.layout import Layout
from server_bootstrap.state import ServerRecord, State, stable_hash

# Files a finished download leaves (CosyVoice2-0.5B on ModelScope / Hugging Face, and the LLM checkpoint).
COSYVOICE_FILES = ("cosyvoice2.yaml", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx")
LLM_FILES = ("config.json",)
SMOKE_PROMPT = ("asset/zero_shot_prompt.wav", "希望你以后能够做的比我还好呦。")  # CosyVoice's own example


@dataclass
class Context:
    config: DeploymentConfig
    layout: Layout
    state: State
    out: TextIO
    will_run: set[str] = field(default_factory=set)  # stages this up runs (preflight needs their tools)
    progress_every: float = 10.0


class StageLog:
    """A stage's output: to the console (indented) and to its log file."""

    def __init__(self, path: Path, out: TextIO) -> None:
        self.path = path
        self.out = out
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")

    def say(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            print(f"    {line}", file=self.out, flush=True)
        self.note(text)

    def note(self, text: str) -> None:
        with open(self.path, "a") as fh:
            fh.write(text.rstrip("\n") + "\n")


class Stage:
    name = ""
    title = ""
    deps: tuple[str, ...] = ()
    always = False  # a check: runs on every up
    trust_files = False  # done when its files are there, even if another tool put them there
    echo_summary = True  # print the summary run() returns (stages that printed their result already: no)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.inputs_hash = ""  # set by the pipeline before run()

    @property
    def config(self) -> DeploymentConfig:
        return self.ctx.config

    @property
    def layout(self) -> Layout:
        return self.ctx.layout

    @property
    def log_path(self) -> Path:
        return self.layout.stage_log(self.name)

    def commands(self) -> list[list[str]]:
        return []

    def describe(self) -> list[str]:
        return []

    def inputs(self) -> dict[str, Any]:
        return {}

    def done(self) -> bool:
        return False

    def run(self, log: StageLog) -> str:
        raise NotImplementedError

    def run_command(self, cmd: list[str], log: StageLog, *, watch: tuple[Path, ...] = (),
                    hint: str | None = None, cwd: Path | None = None) -> None:
        log.say(f"$ {subprocesses.show(cmd)}")
        elapsed = subprocesses.run_logged(cmd, self.log_path, label=self.name, out=self.ctx.out, watch=watch,
                                     progress_every=self.ctx.progress_every, hint=hint, cwd=cwd)
        sizes = "".join(f", {p.name} {subprocesses.human_size(subprocesses.tree_size(p))}" for p in watch)
        log.say(f"  finished in {subprocesses.human_duration(elapsed)}{sizes}")

    def check_outputs(self, problem: str, hint: str) -> None:
        """After the stage's commands succeeded: fail saying ``problem`` if its outputs are still not there."""
        if not self.done():
            raise CvloadError(problem, hint=hint)


# ---- 1. preflight --------------------------------------------------------------------------------------------
class Preflight(Stage):
    name, title = "preflight", "check GPUs, driver, disk, /dev/shm, ports and tools"
    always = True

    def describe(self) -> list[str]:
        if self.config.target == "emulator":
            return ["(in process) disk, /dev/shm, ports free, tritonserver present"]
        if self.config.target == "python-runtime":
            return [f"(in process) NVML GPUs + free memory, driver, disk, port {self.config.runtime.port} free, "
                    "docker CLI + engine (+ nvidia runtime), git, " + self.config.model.cosyvoice_hub]
        extra = "docker engine + compose" if self.config.docker.enabled else "tritonserver with TensorRT-LLM backend, "\
            "tensorrt_llm + version, trtllm-build"
        return [f"(in process) NVML GPUs + free memory, driver, disk, /dev/shm, ports free, {extra}, git, "
                "huggingface-cli, modelscope, curl"]

    def inputs(self) -> dict[str, Any]:
        return {"target": self.config.target}

    def run(self, log: StageLog) -> str:
        state = self.ctx.state
        ours = [p for r in state.servers if servers.running(r) for p in (r.http_port, r.grpc_port, r.metrics_port)]
        checks = preflight.run_checks(self.config, self.layout, will_run=self.ctx.will_run, our_ports=ours)
        log.say(format_findings(checks, indent="    "))
        failed = failures(checks)
        if failed:
            raise preflight.PreflightFailed(
                f"preflight: {len(failed)} check(s) failed: {', '.join(c.name for c in failed)} (report above; "
                f"also in {self.log_path})", hint="fix them and run `cvload bootstrap up` again; stages already "
                "done are kept")
        warned = sum(c.status == WARN for c in checks)
        return f"{len(checks)} checks, {warned} warning(s)"


# ---- 2. CosyVoice source -------------------------------------------------------------------------------------
class Source(Stage):
    name, title = "source", "CosyVoice source at the pinned commit"
    trust_files = True

    def commands(self) -> list[list[str]]:
        src, commit = self.layout.source, self.config.source.commit
        if self.config.source.path:
            return [["git", "-C", str(src), "rev-parse", "HEAD"]]
        return [
            ["git", "clone", "--recursive", self.config.source.repo, str(src)],
            ["git", "-C", str(src), "checkout", "--detach", commit],
            ["git", "-C", str(src), "submodule", "update", "--init", "--recursive"],
        ]

    def inputs(self) -> dict[str, Any]:
        return {"repo": self.config.source.repo, "commit": self.config.source.commit,
                "path": self.config.source.path}

    def head(self) -> str | None:
        if not (self.layout.source / ".git").exists():
            return None
        try:
            proc = subprocess.run(["git", "-C", str(self.layout.source), "rev-parse", "HEAD"], capture_output=True,
                                  text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    def done(self) -> bool:
        head = self.head()
        return bool(head and head.startswith(self.config.source.commit.lower())
                    and self.layout.template_repo.is_dir())

    def run(self, log: StageLog) -> str:
        src, commit = self.layout.source, self.config.source.commit.lower()
        if self.config.source.path:
            head = self.head()
            if head is None:
                raise UsageError(f"[source] path {src} is not a git checkout",
                                 hint="give a CosyVoice git checkout, or drop [source] path to clone one")
            if not head.startswith(commit):
                raise UsageError(f"[source] path {src} is at commit {head[:12]}, the config pins {commit[:12]}",
                                 hint=f"set [source] commit = \"{head}\" to use this checkout as it is, or check "
                                      f"out {commit[:12]} there (bootstrap never changes your checkout)")
            if not self.layout.template_repo.is_dir():
                raise UsageError(f"{src} has no runtime/triton_trtllm/model_repo", hint="is it a CosyVoice checkout?")
            return f"using {src} at {head[:12]}"
        clone, checkout, submodules = self.commands()
        if src.exists() and self.head() is None:
            log.say(f"removing {src}: not a complete git checkout (an interrupted clone)")
            shutil.rmtree(src)
        if not src.exists():
            self.run_command(clone, log, watch=(src,))
        self.run_command(checkout, log, hint=f"is {commit[:12]} a commit of {self.config.source.repo}?")
        self.run_command(submodules, log, watch=(src,))
        self.check_outputs(f"{src} is not at {commit[:12]} with runtime/triton_trtllm/model_repo after checkout",
                           hint=f"remove {src} and run up again")
        return f"{src} at {commit[:12]}"


# ---- 3. model download ---------------------------------------------------------------------------------------
class Download(Stage):
    name, title = "download", "model download (resumable)"
    trust_files = True

    def _llm(self) -> list[str]:
        return [self.config.model.hf_cli, "download", self.config.model.llm_repo, "--local-dir",
                str(self.layout.llm_dir)]

    def _cosyvoice(self) -> list[str]:
        m = self.config.model
        if m.cosyvoice_hub == "modelscope":
            return [m.modelscope_cli, "download", "--model", m.cosyvoice_repo, "--local_dir", str(self.layout.model_dir)]
        return [m.hf_cli, "download", m.cosyvoice_repo, "--local-dir", str(self.layout.model_dir)]

    def _spk2info(self) -> list[str]:
        part = self.layout.spk2info.with_name("spk2info.pt.part")
        return ["curl", "--location", "--fail", "--retry", "3", "--continue-at", "-", "--output", str(part),
                self.config.model.spk2info_url]

    @property
    def runtime_only(self) -> bool:
        """The python-runtime target loads the CosyVoice model dir only (no TensorRT-LLM checkpoint, no cache)."""
        return self.config.target == "python-runtime"

    def commands(self) -> list[list[str]]:
        if self.runtime_only:
            return [self._cosyvoice()]
        return [self._llm(), self._cosyvoice(), self._spk2info()]

    def inputs(self) -> dict[str, Any]:
        m = self.config.model
        if self.runtime_only:
            return {"cosyvoice": m.cosyvoice_repo, "hub": m.cosyvoice_hub}
        return {"llm": m.llm_repo, "cosyvoice": m.cosyvoice_repo, "hub": m.cosyvoice_hub, "spk2info": m.spk2info_url}

    def llm_done(self) -> bool:
        return _complete(self.layout.llm_dir, LLM_FILES)

    def cosyvoice_done(self) -> bool:
        return _complete(self.layout.model_dir, COSYVOICE_FILES)

    def done(self) -> bool:
        if self.runtime_only:
            return self.cosyvoice_done()
        return self.llm_done() and self.cosyvoice_done() and self.layout.spk2info.is_file()

    def run(self, log: StageLog) -> str:
        if self.runtime_only:
            watch: tuple[Path, ...] = (self.layout.model_dir,)
            parts = [(self._cosyvoice(), self.cosyvoice_done())]
        else:
            watch = (self.layout.llm_dir, self.layout.model_dir)
            parts = [(self._llm(), self.llm_done()), (self._cosyvoice(), self.cosyvoice_done())]
        for cmd, present in parts:
            if present:
                log.say(f"already there, skipped: {subprocesses.show(cmd)}")
            else:
                self.run_command(cmd, log, watch=watch)
        if not self.runtime_only and not self.layout.spk2info.is_file():  # the front model loads it even when the cache is not used
            self.layout.model_dir.mkdir(parents=True, exist_ok=True)
            self.run_command(self._spk2info(), log, hint="set [model] spk2info_url to a reachable copy")
            self.layout.spk2info.with_name("spk2info.pt.part").rename(self.layout.spk2info)
        if not self.done():
            missing = [f for f in COSYVOICE_FILES if not (self.layout.model_dir / f).is_file()]
            raise CvloadError(f"download finished but {self.layout.model_dir} lacks {', '.join(missing) or 'files'}",
                              hint="check [model] cosyvoice_repo / llm_repo; the download log has details")
        sizes = ", ".join(f"{p.name} {subprocesses.human_size(subprocesses.tree_size(p))}" for p in watch)
        return sizes


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    if not all((folder / f).is_file() for f in files):
        return False
    # huggingface_hub keeps unfinished files as .incomplete under .cache until they are complete
    return not any(folder.glob(".cache/**/*.incomplete"))


# ---- 4. engine build -----------------------------------------------------------------------------------------
def require_tensorrt_llm() -> None:
    """Stop with a clear message where TensorRT-LLM is absent (everywhere but NVIDIA's container)."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        raise CvloadError(
            "tensorrt_llm is not importable here: converting the checkpoint and building the engine need "
            "TensorRT-LLM, which NVIDIA ships in its Triton TRT-LLM container (the PyPI package only downloads "
            "from NVIDIA's index and needs a GPU)",
            hint=f"run `cvload bootstrap up` inside {preflight.TRTLLM_CONTAINER}, or add --docker to build in it; "
                 "to try the whole flow without a GPU use --target emulator")


class Build(Stage):
    name, title = "build", "checkpoint conversion + trtllm-build"
    deps = ("source", "download")

    def _convert(self) -> list[str]:
        e = self.config.engine
        return [e.python, str(self.layout.runtime / "scripts" / "convert_checkpoint.py"),
                "--model_dir", str(self.layout.llm_dir), "--output_dir", str(self.layout.weights_dir),
                "--dtype", self.config.model.dtype, "--tp_size", str(e.tp_size), "--pp_size", str(e.pp_size)]

    def _build(self) -> list[str]:
        e = self.config.engine
        return [e.trtllm_build, "--checkpoint_dir", str(self.layout.weights_dir),
                "--output_dir", str(self.layout.engine_dir), "--max_batch_size", str(e.max_batch_size),
                "--max_num_tokens", str(e.max_num_tokens), "--gemm_plugin", self.config.gemm_plugin]

    def commands(self) -> list[list[str]]:
        cmds = [self._convert(), self._build()]
        if self.config.docker.enabled:
            return [compose.in_container(self.layout, c) for c in cmds]
        return cmds

    def inputs(self) -> dict[str, Any]:
        e = self.config.engine
        return {"dtype": self.config.model.dtype, "tp": e.tp_size, "pp": e.pp_size, "max_batch": e.max_batch_size,
                "max_tokens": e.max_num_tokens, "gemm": self.config.gemm_plugin,
                # the engine only loads in the TensorRT version that built it
                "image": self.config.docker.image if self.config.docker.enabled else "host"}

    def done(self) -> bool:
        engines = self.layout.engine_dir
        return (engines / "config.json").is_file() and all(
            (engines / f"rank{r}.engine").is_file() for r in range(self.config.world_size))

    def run(self, log: StageLog) -> str:
        if self.config.docker.enabled:
            compose.write(self.config, self.layout)
        else:
            require_tensorrt_llm()
        convert, build = self.commands()
        for folder in (self.layout.weights_dir, self.layout.engine_dir):
            if folder.exists():
                shutil.rmtree(folder)  # never mix ranks or flags of an earlier build
        self.run_command(convert, log, watch=(self.layout.weights_dir,))
        self.run_command(build, log, watch=(self.layout.engine_dir,),
                         hint="an engine needs the GPU it runs on: build where you serve")
        self.check_outputs(f"trtllm-build finished but {self.layout.engine_dir} has no rank*.engine",
                           hint=f"read {self.log_path}")
        return f"{self.layout.engine_dir} {subprocesses.human_size(subprocesses.tree_size(self.layout.engine_dir))}"


# ---- 5. model repository -------------------------------------------------------------------------------------
class Repository(Stage):
    name, title = "repo", "model repository from the templates"

    @property
    def deps(self) -> tuple[str, ...]:  # type: ignore[override]  # a property where Stage has a class attribute
        return () if self.config.target == "emulator" else ("source", "download", "build")

    def describe(self) -> list[str]:
        if self.config.target == "emulator":
            return [f"(in process) emulator model{'s' if self.config.emulator.pipeline else ''} "
                    f"{', '.join(model_repository.emulator_models(self.config))} ({self.config.mode}, profile "
                    f"{self.config.emulator.profile}) -> {self.layout.model_repository(i)}"
                    for i in range(len(self.config.server_gpus()))]
        dest = self.layout.model_repository()
        lines = [f"(in process) copy {self.layout.template_repo}/{{{','.join(model_repository.models(self.config))}}} -> {dest}"]
        for model, values in model_repository.template_values(self.config, self.layout).items():
            lines.append(f"fill {model}/config.pbtxt: " + " ".join(f"{k}={model_repository.show_value(v)}" for k, v in values.items()))
        lines.append(f"token2wav instance count {self.config.triton.token2wav_instances}; check "
                     f"{self.config.model.name} and tensorrt_llm are decoupled={str(self.config.decoupled).lower()}")
        return lines

    def inputs(self) -> dict[str, Any]:
        c = self.config
        if c.target == "emulator":
            return {"model": c.model.name, "mode": c.mode, "profile": c.emulator.profile,
                    "profile_set": c.emulator.profile_set, "instances": c.triton.bls_instances,
                    "max_batch": c.triton.max_batch_size, "servers": len(c.server_gpus()),
                    **({"pipeline": True, "token2wav": c.triton.token2wav_instances,
                        "spk2info_cache": c.triton.use_spk2info_cache} if c.emulator.pipeline else {})}
        templates = {m: _file_hash(self.layout.template_repo / m / "config.pbtxt")
                     for m in (*model_repository.INTERNAL_MODELS, "cosyvoice2", c.model.name)}
        return {"values": model_repository.template_values(c, self.layout), "mode": c.mode,
                "token2wav": c.triton.token2wav_instances, "templates": templates}

    def done(self) -> bool:
        try:
            for i in range(len(self.config.server_gpus()) if self.config.target == "emulator" else 1):
                repo_dir = self.layout.model_repository(i)
                names = (model_repository.emulator_models(self.config) if self.config.target == "emulator"
                         else model_repository.models(self.config))
                for model in names:
                    if not (repo_dir / model / "config.pbtxt").is_file():
                        return False
                model_repository.check_decoupled(repo_dir, self.config.model.name, self.config.mode)
        except CvloadError:
            return False
        return True

    def run(self, log: StageLog) -> str:
        if self.config.target == "emulator":
            built = [model_repository.build_emulator_repository(self.config, self.layout, i)
                     for i in range(len(self.config.server_gpus()))]
            for path in built:
                log.say(f"{path}: {self.config.model.name} ({self.config.mode}, profile {self.config.emulator.profile})")
            return f"{len(built)} emulator repositor{'y' if len(built) == 1 else 'ies'}"
        notes: list[str] = []
        dest = model_repository.build_trtllm_repository(self.config, self.layout, self.layout.model_repository(), log=notes)
        for note in notes:
            log.say(note)
        return f"{dest} ({', '.join(model_repository.models(self.config))})"


def _file_hash(path: Path) -> str | None:
    try:
        return stable_hash(path.read_text())
    except OSError:
        return None


# ---- 6. launch -----------------------------------------------------------------------------------------------
class Launch(Stage):
    name, title = "launch", "tritonserver in the background"
    deps = ("repo",)

    def commands(self) -> list[list[str]]:
        if self.config.docker.enabled:
            return [compose.up_command(self.layout)]
        from cvload.triton.launcher import TritonInstall, find_tritonserver

        try:
            install = find_tritonserver(self.config.server.tritonserver)
        except CvloadError:
            install = TritonInstall(Path("tritonserver"), None)  # plan still shows the flags
        cmds = []
        for index in range(len(self.config.server_gpus())):
            ports = ["<free>" if p == 0 else p for p in self.config.server_ports(index)]
            server = servers.DetachedServer(self.layout.model_repository(index), host=self.config.host,
                                            http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],  # type: ignore[arg-type]  # the plan shows <free>, never launches
                                            gpu_metrics=self.config.target != "emulator")
            server._shm_prefix = "<per-launch>"
            backends = install.backends if install.bundle_root is None else self.layout.server_dir(index) / "backends"
            cmds.append(server.command(install, backends))
        return cmds

    def describe(self) -> list[str]:
        if self.config.docker.enabled:
            return [f"(in process) write {self.layout.compose_file} (image {self.config.docker.image}, shm "
                    f"{self.config.docker.shm_size}), wait for readiness ({self.config.ready_timeout:.0f} s)"]
        env = []
        for index, gpus in enumerate(self.config.server_gpus()):
            extra = servers.server_env(self.config, self.layout, gpus)
            if extra:
                env.append(f"server {index} environment: " + " ".join(f"{k}={v}" for k, v in extra.items()))
        return env + [f"detached, log {self.layout.server_log(0).parent}/server<N>.log, ready within "
                      f"{self.config.ready_timeout:.0f} s"]

    def inputs(self) -> dict[str, Any]:
        c = self.config
        return {"host": c.host, "ports": [c.server_ports(i) for i in range(len(c.server_gpus()))],
                "gpus": c.server_gpus(), "tritonserver": c.server.tritonserver, "docker": c.docker.enabled,
                "image": c.docker.image if c.docker.enabled else None, "shm": c.docker.shm_size,
                "target": c.target}

    def done(self) -> bool:
        state = self.ctx.state
        return (bool(state.servers) and state.servers_target == self.config.target
                and state.servers_inputs == self.inputs_hash
                and all(servers.running(r) and servers.ready(r) for r in state.servers))

    def run(self, log: StageLog) -> str:
        state = self.ctx.state
        stop_recorded(state, self.layout, log)
        state.servers_target = self.config.target
        state.servers_inputs = self.inputs_hash
        state.save()
        if self.config.docker.enabled:
            return self._run_compose(log)

        def record(rec: ServerRecord) -> None:
            state.servers.append(rec)
            state.save()

        try:
            records = servers.launch(self.config, self.layout, record=record, out=self.ctx.out)
        except BaseException:
            state.servers = []  # launch() stopped what it started
            state.save()
            raise
        log.note("\n".join(servers.describe(r) for r in records))
        return f"{len(records)} server(s): {servers.endpoints_line(records)}"

    def _run_compose(self, log: StageLog) -> str:
        path = compose.write(self.config, self.layout)
        log.say(f"wrote {path}")
        state = self.ctx.state
        state.servers = []
        for index, gpus in enumerate(self.config.server_gpus()):
            http, grpc, metrics = self.config.server_ports(index)
            state.servers.append(ServerRecord(
                index=index, host="127.0.0.1", http_port=http, grpc_port=grpc, metrics_port=metrics, gpus=gpus,
                log=str(self.layout.server_log(index)), model_repository=str(self.layout.model_repository(index)),
                compose_file=str(path), service=compose.service_name(index)))
        state.save()
        self.run_command(compose.up_command(self.layout), log)
        servers.wait_ready(state.servers, self.config.ready_timeout)
        return f"{len(state.servers)} compose service(s): {servers.endpoints_line(state.servers)}"


def stop_recorded(state: State, layout: Layout, log: StageLog | None = None) -> int:
    """Stop every server the state file knows (host processes and compose services); forget them."""
    stopped = 0
    compose_files = {r.compose_file for r in state.servers if r.compose_file}
    containers = [r.container for r in state.servers if r.container]
    hosted = [r for r in state.servers if not r.compose_file and not r.container]
    was_running = [servers.running(r) for r in hosted]
    for rec in hosted:  # all shut down at once; each takes seconds to unload its models
        servers.terminate(rec)
    for rec, running in zip(hosted, was_running):
        servers.stop(rec)
        if running:
            stopped += 1
            if log:
                log.say(f"stopped server {rec.index} (pid {rec.pid})")
    for file in compose_files:
        proc = servers.run_quiet(["docker", "compose", "-f", str(file), "down"])
        if proc.returncode != 0:
            raise CvloadError(f"`docker compose -f {file} down` failed: {proc.stderr.strip()[-500:]}",
                              hint="stop the services by hand (docker compose ls; docker compose down)")
        stopped += 1
        if log:
            log.say(f"stopped compose services of {file}")
    for name in containers:
        proc = servers.run_quiet(["docker", "rm", "-f", name])
        if proc.returncode != 0:
            raise CvloadError(f"`docker rm -f {name}` failed: {proc.stderr.strip()[-500:]}",
                              hint=f"remove the container by hand (docker ps -a --filter name={name})")
        stopped += 1
        if log:
            log.say(f"removed container {name}")
    state.servers = []
    state.servers_inputs = ""
    state.save()
    return stopped


# ---- 7. smoke ------------------------------------------------------------------------------------------------
class Smoke(Stage):
    name, title = "smoke", "one request through the front model"
    deps = ("launch",)
    always = True
    echo_summary = False

    def describe(self) -> list[str]:
        what = "target_text only (cached speaker)" if self.config.triton.use_spk2info_cache else "prompt + text"
        how = "gRPC stream" if self.config.mode == "streaming" else "gRPC infer"
        return [f"(in process) one {self.config.mode} request ({what}) over {how} to {self.config.model.name} "
                "on every server; prints its latency"]

    def prompt(self) -> tuple[Any, str | None]:
        from server_bootstrap import smoke

        c = self.config
        if c.triton.use_spk2info_cache:
            return None, None
        if c.smoke.prompt_wav:
            return smoke.load_prompt(Path(c.smoke.prompt_wav)), c.smoke.prompt_text or ""
        if c.target == "emulator":
            wav, text = smoke.builtin_prompt()
            return wav, c.smoke.prompt_text or text
        path = self.layout.source / SMOKE_PROMPT[0]
        if not path.is_file():
            raise UsageError(f"no smoke prompt: {path} is missing",
                             hint="set [smoke] prompt_wav (16 kHz mono) and prompt_text, or use_spk2info_cache")
        return smoke.load_prompt(path), c.smoke.prompt_text or SMOKE_PROMPT[1]

    def run(self, log: StageLog) -> str:
        from server_bootstrap import smoke

        records = self.ctx.state.servers
        if not records:
            raise CvloadError("smoke: no server is running", hint="cvload bootstrap up")
        prompt, prompt_text = self.prompt()
        lines = []
        for rec in records:
            result = smoke.smoke_request(rec.grpc, self.config.model.name, self.config.mode,
                                         text=self.config.smoke.text, prompt=prompt, prompt_text=prompt_text,
                                         timeout=self.config.smoke.timeout)
            log.say(f"server {rec.index}: {result.line()}")
            lines.append(result.line())
        return f"{len(lines)} server(s) answered: " + "; ".join(lines)


# ---- python-runtime: CosyVoice's own server in the image of runtime/python/Dockerfile --------------------------
class Image(Stage):
    name, title = "image", "docker build of runtime/python/Dockerfile"
    deps = ("source",)

    def commands(self) -> list[list[str]]:
        return [["docker", "build", "-t", self.config.runtime.image, str(self.layout.python_runtime)]]

    def inputs(self) -> dict[str, Any]:
        return {"image": self.config.runtime.image}

    def done(self) -> bool:
        proc = _quiet(["docker", "image", "inspect", self.config.runtime.image])
        return proc is not None and proc.returncode == 0

    def run(self, log: StageLog) -> str:
        (build,) = self.commands()
        if not (self.layout.python_runtime / "Dockerfile").is_file():
            raise UsageError(f"{self.layout.python_runtime}/Dockerfile is missing",
                             hint="is [source] a CosyVoice checkout with runtime/python?")
        self.run_command(build, log, cwd=self.layout.python_runtime,
                         hint="the image installs CosyVoice's requirements: read the build log above")
        return f"image {self.config.runtime.image}"


def runtime_command(config: DeploymentConfig, layout: Layout) -> list[str]:
    """The server command inside the image: the folder of ``[runtime] server`` (the image has the checkout at
    /opt/CosyVoice/CosyVoice), then ``sleep infinity`` so the container stays for ``docker logs``."""
    r = config.runtime
    args = ["python3", "server.py", "--port", str(r.port)]
    if r.server == "grpc":
        args += ["--max_conc", str(r.max_conc)]
    args += ["--model_dir", str(layout.model_dir)]
    folder = f"/opt/CosyVoice/CosyVoice/runtime/python/{r.server}"
    return ["/bin/bash", "-c", f"cd {folder} && {subprocesses.show(args)} && sleep infinity"]


def docker_run_command(config: DeploymentConfig, layout: Layout) -> list[str]:
    r = config.runtime
    model = str(layout.model_dir)
    return ["docker", "run", "-d", "--name", r.container, "--runtime=nvidia", "-p", f"{r.port}:{r.port}",
            "-v", f"{model}:{model}:ro", r.image, *runtime_command(config, layout)]


class Container(Stage):
    name, title = "container", "docker run -d of the runtime server, until its port answers"
    deps = ("download", "image")

    def commands(self) -> list[list[str]]:
        return [["docker", "rm", "-f", self.config.runtime.container], docker_run_command(self.config, self.layout)]

    def describe(self) -> list[str]:
        r = self.config.runtime
        return [f"(in process) record container {r.container}, wait until 127.0.0.1:{r.port} answers as the "
                f"runtime's {r.server} server ({self.config.ready_timeout:.0f} s)"]

    def inputs(self) -> dict[str, Any]:
        return {"run": docker_run_command(self.config, self.layout)}

    def done(self) -> bool:
        state = self.ctx.state
        return (bool(state.servers) and state.servers_target == self.config.target
                and state.servers_inputs == self.inputs_hash and all(servers.ready(r) for r in state.servers))

    def run(self, log: StageLog) -> str:
        r, state = self.config.runtime, self.ctx.state
        stop_recorded(state, self.layout, log)
        remove, start = self.commands()
        self.run_command(remove, log)  # a container of that name left by hand or by an older up
        rec = ServerRecord(index=0, host="127.0.0.1", http_port=r.port if r.server == "fastapi" else 0,
                           grpc_port=r.port if r.server == "grpc" else 0, metrics_port=0, gpus=[],
                           log=str(self.layout.server_log(0)), model_repository=str(self.layout.model_dir),
                           container=r.container, runtime=r.server)
        state.servers, state.servers_target, state.servers_inputs = [rec], self.config.target, self.inputs_hash
        state.save()
        self.run_command(start, log, hint="is the NVIDIA Container Toolkit installed (--runtime=nvidia)?")
        try:
            servers.wait_ready([rec], self.config.ready_timeout)
        except CvloadError:
            answer = servers.runtime_answer(rec)
            raise CvloadError(f"container {r.container}: not answering as the runtime after "
                              f"{self.config.ready_timeout:.0f} s: {answer.detail} ({answer.cause})",
                              hint=f"docker logs {r.container} (loading the model takes minutes; a crash shows "
                                   "there); raise [server] ready_timeout if it is still loading") from None
        return f"container {r.container}: {servers.describe(rec)}"


TRTLLM_STAGES: tuple[type[Stage], ...] = (Preflight, Source, Download, Build, Repository, Launch, Smoke)
EMULATOR_STAGES: tuple[type[Stage], ...] = (Preflight, Repository, Launch, Smoke)
RUNTIME_STAGES: tuple[type[Stage], ...] = (Preflight, Source, Download, Image, Container)
STAGES = {"trtllm": TRTLLM_STAGES, "emulator": EMULATOR_STAGES, "python-runtime": RUNTIME_STAGES}


def _quiet(cmd: list[str]) -> subprocess.CompletedProcess[str] | None:
    """``cmd``'s result, or None where its program is missing (no docker here: nothing of it is done)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def build_stages(ctx: Context) -> list[Stage]:
    kinds = STAGES[ctx.config.target]
    return [kind(ctx) for kind in kinds]
