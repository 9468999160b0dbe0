"""Docker mode: a compose file that serves the model repository in NVIDIA's Triton TRT-LLM image.

One service per server (its GPUs reserved through the NVIDIA runtime, its three ports published, shm 1gb), the
work folder mounted at the same path so every absolute path in the filled templates stays valid, and a
``build`` service (profile ``build``, never started by ``up``) that runs the checkpoint conversion and
``trtllm-build`` inside the same image, so the engine's TensorRT version is the one that loads it.

The file is JSON, which is YAML (docker compose reads it as such): values from the config cannot break its
structure. Its note on where it came from is an ``x-`` extension field, which compose ignores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server_bootstrap.config import DeploymentConfig
from server_bootstrap.layout import Layout

BUILD_SERVICE = "build"


def service_name(index: int) -> str:
    return f"triton{index}"


def tritonserver_command(config: DeploymentConfig, layout: Layout, index: int) -> list[str]:
    http, grpc, metrics = config.server_ports(index)
    return [
        "tritonserver",
        f"--model-repository={layout.model_repository(index)}",
        f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
        "--allow-gpu-metrics=true", "--allow-cpu-metrics=true",
        "--exit-on-error=true", "--strict-readiness=true",
    ]


def _mounts(layout: Layout) -> list[str]:
    mounts = [f"{layout.workdir}:{layout.workdir}"]
    source = layout.source
    if layout.workdir not in source.parents and source != layout.workdir:
        mounts.append(f"{source}:{source}")
    return mounts


def _environment(layout: Layout) -> dict[str, str]:
    """CosyVoice on PYTHONPATH, as upstream run.sh exports it for the Python models."""
    return {"PYTHONIOENCODING": "utf-8",
            "PYTHONPATH": f"{layout.source}:{layout.source / 'third_party' / 'Matcha-TTS'}"}


def _gpu_reservation(gpus: list[int]) -> dict[str, Any]:
    return {"resources": {"reservations": {"devices": [
        {"driver": "nvidia", "device_ids": [str(g) for g in gpus], "capabilities": ["gpu"]}]}}}


def compose_spec(config: DeploymentConfig, layout: Layout) -> dict[str, Any]:
    """The compose document as a dict (what ``write`` serializes)."""
    services: dict[str, Any] = {}
    for index, gpus in enumerate(config.server_gpus()):
        http, grpc, metrics = config.server_ports(index)
        env = _environment(layout)
        if config.world_size > 1:
            env["TRTLLM_ORCHESTRATOR"] = "1"
        services[service_name(index)] = {
            "image": config.docker.image,
            "shm_size": config.docker.shm_size,
            "ports": [f"{p}:{p}" for p in (http, grpc, metrics)],
            "volumes": _mounts(layout),
            "environment": env,
            "working_dir": str(layout.workdir),
            "command": tritonserver_command(config, layout, index),
            "deploy": _gpu_reservation(gpus),
            "restart": "no",
        }
    services[BUILD_SERVICE] = {
        "image": config.docker.image,
        "profiles": [BUILD_SERVICE],
        "shm_size": config.docker.shm_size,
        "volumes": _mounts(layout),
        "environment": _environment(layout),
        "working_dir": str(layout.workdir),
        "deploy": _gpu_reservation(config.server.gpus[: config.world_size]),
    }
    return {"name": config.docker.project, "services": services}


def write(config: DeploymentConfig, layout: Layout) -> Path:
    path = layout.compose_file
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = {"x-cvload": "written by `cvload bootstrap up --docker`; rewritten on every up", **compose_spec(config, layout)}
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def compose(layout: Layout, *args: str) -> list[str]:
    """A ``docker compose`` command on this deployment's file."""
    return ["docker", "compose", "-f", str(layout.compose_file), *args]


def in_container(layout: Layout, cmd: list[str]) -> list[str]:
    """Run ``cmd`` in the build service (the same image that will serve the engine)."""
    return compose(layout, "run", "--rm", BUILD_SERVICE, *cmd)


def up_command(layout: Layout) -> list[str]:
    return compose(layout, "up", "-d")
