"""Preflight: check everything a deployment needs before spending an hour on it, and say how to fix what fails.

Each check is one line of the report: ok, FAIL (the deployment cannot work), warn (it may work badly) or skip
(not needed for this target or already done). NVML and TensorRT-LLM are looked up lazily: neither is needed,
or present, on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from cvload.errors import EXIT_RUNTIME, CvloadError
from cvload.subprocesses import human_size
from cvload.triton.launcher import port_busy
from server_bootstrap.config import DeploymentConfig
from server_bootstrap.findings import Finding, fail, ok, skip, warn
from server_bootstrap.layout import Layout

GIB = 1 << 30
TRTLLM_CONTAINER = "nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3"
# GPU memory (docs/protocol.md): about 24 GB for the whole pipeline; below 8 GB it cannot load.
GPU_MEM_RECOMMENDED = 24 * GIB
GPU_MEM_MINIMUM = 8 * GIB
DISK_NEEDED = {"trtllm": 20 * GIB, "emulator": 1 * GIB,  # checkpoints + weights + engine; logs
               "python-runtime": 20 * GIB}  # the model and the image's CUDA + PyTorch layers
SHM_NEEDED = {"trtllm": 1 * GIB, "emulator": 64 << 20}  # Python-backend tensors travel through /dev/shm


class PreflightFailed(CvloadError):
    exit_code = EXIT_RUNTIME


# ---- individual checks ---------------------------------------------------------------------------------------
def check_gpus(config: DeploymentConfig) -> list[Finding]:
    """NVML (nvidia-ml-py, imported lazily), the driver, and each configured GPU's free memory."""
    try:
        import pynvml
    except ImportError:
        driver = _driver_from_proc()
        return [
            fail("nvml", "nvidia-ml-py is not installed: GPUs and their free memory cannot be checked",
                 "pip install 'cvload[gpu]' (nvidia-ml-py)"),
            ok("driver", f"NVIDIA driver {driver}") if driver else
            fail("driver", "no NVIDIA driver loaded (/proc/driver/nvidia/version is missing)",
                 "run on a machine with an NVIDIA GPU and its driver installed"),
        ]
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [
            fail("nvml", f"NVML cannot start: {exc}",
                 "install the NVIDIA driver; in a container pass the GPUs (--gpus all / compose device_ids)"),
            fail("driver", "no usable NVIDIA driver", "install the NVIDIA driver on the host"),
        ]
    checks = []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        count = pynvml.nvmlDeviceGetCount()
        checks.append(ok("nvml", f"{count} GPU(s) visible"))
        checks.append(ok("driver", f"NVIDIA driver {_text(driver)}"))
        for gpu in config.server.gpus:
            name = f"gpu {gpu}"
            if gpu >= count:
                checks.append(fail(name, f"no GPU {gpu} ({count} visible)",
                                   "fix [server] gpus / --gpus, or CUDA_VISIBLE_DEVICES"))
                continue
            handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            label = f"{_text(pynvml.nvmlDeviceGetName(handle))}, {human_size(mem.free)} free of {human_size(mem.total)}"
            if mem.free < GPU_MEM_MINIMUM:
                checks.append(fail(name, label, f"free GPU memory: the pipeline needs about "
                                   f"{human_size(GPU_MEM_RECOMMENDED)}; stop other processes on GPU {gpu}"))
            elif mem.free < GPU_MEM_RECOMMENDED:
                checks.append(warn(name, label, "below the ~24 GiB the pipeline uses: lower [triton] "
                                   "kv_cache_free_gpu_mem_fraction or max_batch_size"))
            else:
                checks.append(ok(name, label))
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return checks


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _driver_from_proc() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            return word
    return text.splitlines()[0] if text else None


def check_disk(config: DeploymentConfig, workdir: Path) -> Finding:
    probe = workdir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = DISK_NEEDED[config.target]
    detail = f"{human_size(free)} free at {probe}"
    if free < need:
        return fail("disk", detail + f" (needs about {human_size(need)})",
                    "free space or choose another --workdir")
    return ok("disk", detail)


def check_shm(config: DeploymentConfig) -> Finding:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return fail("/dev/shm", "missing", "mount a tmpfs at /dev/shm (docker: --shm-size=1g)")
    size = st.f_blocks * st.f_frsize
    need = SHM_NEEDED[config.target]
    if size < need:
        return fail("/dev/shm", f"{human_size(size)} (needs {human_size(need)})",
                    "docker run --shm-size=1g (compose: shm_size: 1gb); Python-backend tensors go through it")
    return ok("/dev/shm", f"{human_size(size)}")


def check_ports(config: DeploymentConfig, ours: Iterable[int] = ()) -> list[Finding]:
    """Every fixed port of every server is free (ports held by this deployment's own servers are fine)."""
    ours = set(ours)
    checks = []
    for index in range(len(config.server_gpus())):
        ports = dict(zip(("http", "grpc", "metrics"), config.server_ports(index)))
        busy = [f"{kind} {port}" for kind, port in ports.items() if port and port not in ours
                and port_busy(config.host, port)]
        name = f"ports server {index}"
        shown = " ".join(f"{k} {p or 'any'}" for k, p in ports.items())
        if busy:
            checks.append(fail(name, f"in use: {', '.join(busy)}",
                               "stop what listens there (ss -ltnp) or change [server] ports / port_stride"))
        else:
            checks.append(ok(name, f"free ({shown})" + (" - held by this deployment" if ours else "")))
    return checks




def check_tritonserver(config: DeploymentConfig) -> Finding:
    from cvload.triton.launcher import find_tritonserver

    try:
        install = find_tritonserver(config.server.tritonserver)
    except CvloadError as exc:
        return fail("tritonserver", exc.message, exc.hint or "")
    if config.target == "emulator":
        return ok("tritonserver", str(install.binary))
    backends = install.backends
    if install.bundle_root is not None or backends is None or not (backends / "tensorrtllm").is_dir():
        where = "the nvidia-pytriton bundle" if install.bundle_root is not None else str(backends)
        return fail("tritonserver", f"{install.binary} has no TensorRT-LLM backend ({where})",
                    f"run inside {TRTLLM_CONTAINER} (it has backends/tensorrtllm), or use --docker")
    return ok("tritonserver", f"{install.binary} with backends/tensorrtllm")


def check_tensorrt_llm(required: bool) -> Finding:
    """tensorrt_llm importable, and its version, without importing it (an import needs a GPU and takes long)."""
    spec = importlib.util.find_spec("tensorrt_llm")
    if spec is None:
        detail = "Python package tensorrt_llm is not importable (checkpoint conversion and trtllm-build need it)"
        fix = (f"run inside {TRTLLM_CONTAINER} (TensorRT-LLM 0.20) or use --docker; the PyPI package needs "
               "NVIDIA's index and a GPU")
        return fail("tensorrt_llm", detail, fix) if required else warn("tensorrt_llm", detail, fix)
    try:
        version = importlib.metadata.version("tensorrt_llm")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    return ok("tensorrt_llm", f"{version} at {Path(spec.origin or '?').parent}")


def check_tool(name: str, executable: str, fix: str, *, required: bool = True, why: str = "") -> Finding:
    path = shutil.which(executable)
    if path:
        return ok(name, path)
    detail = f"`{executable}` not on PATH" + (f" ({why})" if why else "")
    return fail(name, detail, fix) if required else warn(name, detail, fix)


def check_docker(*, compose_plugin: bool = True) -> list[Finding]:
    """The docker CLI, its compose plugin (where compose is used), and an engine that answers."""
    docker = shutil.which("docker")
    if not docker:
        return [fail("docker", "`docker` not on PATH", "install Docker Engine" +
                     (" with the compose plugin" if compose_plugin else " and the NVIDIA Container Toolkit "
                      "(docker run --runtime=nvidia)"))]
    checks = [ok("docker", docker)]
    compose = _run(["docker", "compose", "version", "--short"]) if compose_plugin else (0, "")
    if compose_plugin:
        checks.append(ok("docker compose", compose[1]) if compose[0] == 0 else
                      fail("docker compose", f"the compose plugin is missing ({compose[1]})",
                           "install docker-compose-plugin (apt-get install docker-compose-plugin)"))
    engine = _run(["docker", "info", "--format", "{{.ServerVersion}}"])
    checks.append(ok("docker engine", f"server {engine[1]}") if engine[0] == 0 else
                  fail("docker engine", f"not reachable: {engine[1]}",
                       "start the Docker daemon (systemctl start docker) or run without --docker"))
    if engine[0] == 0:
        runtimes = _run(["docker", "info", "--format", "{{json .Runtimes}}"])
        if "nvidia" not in runtimes[1]:
            checks.append(warn("nvidia runtime", "docker reports no nvidia runtime",
                               "install the NVIDIA Container Toolkit so compose can reserve GPUs"))
    return checks


def _run(cmd: list[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    text = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    return proc.returncode, (text[-1] if text else "")


# ---- the whole report ----------------------------------------------------------------------------------------
def run_checks(config: DeploymentConfig, layout: Layout, *, will_run: set[str],
               our_ports: Iterable[int] = ()) -> list[Finding]:
    """Every check for this target; tools of stages that are already done are only warnings."""
    if config.target == "python-runtime":
        return runtime_checks(config, layout, will_run=will_run, our_ports=our_ports)
    checks: list[Finding] = []
    emulator = config.target == "emulator"
    docker = config.docker.enabled
    if emulator:
        checks.append(skip("gpu", "the emulator target needs no GPU, NVML or driver"))
    else:
        checks += check_gpus(config)
    checks.append(check_disk(config, layout.workdir))
    checks.append(check_shm(config))
    checks += check_ports(config, our_ports)
    if docker:
        checks += check_docker()
        checks.append(skip("tritonserver", f"runs inside {config.docker.image}"))
        checks.append(skip("tensorrt_llm", f"runs inside {config.docker.image}"))
    else:
        checks.append(check_tritonserver(config))
        if emulator:
            checks.append(skip("tensorrt_llm", "not needed by the emulator target"))
        else:
            build = "build" in will_run
            checks.append(check_tensorrt_llm(required=build))
            checks.append(check_tool("trtllm-build", config.engine.trtllm_build, f"run inside {TRTLLM_CONTAINER}",
                                     required=build, why="builds the engine"))
    if not emulator:
        source = "source" in will_run
        checks.append(check_tool("git", "git", "apt-get install git", required=source,
                                 why="fetches and checks the CosyVoice checkout"))
        download = "download" in will_run
        checks.append(check_tool("huggingface-cli", config.model.hf_cli, "pip install -U 'huggingface_hub[cli]'",
                                 required=download, why=f"downloads {config.model.llm_repo}"))
        if config.model.cosyvoice_hub == "modelscope":
            checks.append(check_tool("modelscope", config.model.modelscope_cli, "pip install modelscope",
                                     required=download, why=f"downloads {config.model.cosyvoice_repo}"))
        checks.append(check_tool("curl", "curl", "apt-get install curl", required=download,
                                 why="downloads spk2info.pt"))
    return checks


def runtime_checks(config: DeploymentConfig, layout: Layout, *, will_run: set[str],
                   our_ports: Iterable[int] = ()) -> list[Finding]:
    """The python-runtime target: GPUs, disk, its one port, docker (no compose), git and the model download."""
    port = config.runtime.port
    if port in set(our_ports) or not port_busy("0.0.0.0", port):
        ports = ok("runtime port", f"{port} free" + (" - held by this deployment" if port in set(our_ports) else ""))
    else:
        ports = fail("runtime port", f"{port} in use", "stop what listens there (ss -ltnp; docker ps) or set "
                     "[runtime] port")
    checks = [*check_gpus(config), check_disk(config, layout.workdir), ports, *check_docker(compose_plugin=False)]
    checks.append(check_tool("git", "git", "apt-get install git", required="source" in will_run,
                             why="fetches and checks the CosyVoice checkout"))
    download = "download" in will_run
    if config.model.cosyvoice_hub == "modelscope":
        checks.append(check_tool("modelscope", config.model.modelscope_cli, "pip install modelscope",
                                 required=download, why=f"downloads {config.model.cosyvoice_repo}"))
    else:
        checks.append(check_tool("huggingface-cli", config.model.hf_cli, "pip install -U 'huggingface_hub[cli]'",
                                 required=download, why=f"downloads {config.model.cosyvoice_repo}"))
    return checks
