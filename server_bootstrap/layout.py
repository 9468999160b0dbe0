"""Where every artifact of a deployment lives under its work folder (one place, so stages and commands agree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from server_bootstrap.config import DEFAULT_HOME, DeploymentConfig

STATE_FILE = "bootstrap-state.json"


def resolve_workdir(explicit: str | Path | None, config: DeploymentConfig | None = None) -> Path:
    """--workdir, else the config's ``workdir``, else ~/.cache/cvload/bootstrap ($CVLOAD_BOOTSTRAP_HOME)."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    if config is not None and config.workdir:
        return Path(config.workdir).expanduser().resolve()
    return DEFAULT_HOME.expanduser().resolve()


@dataclass(frozen=True)
class Layout:
    workdir: Path
    config: DeploymentConfig

    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def stage_log(self, stage: str) -> Path:
        return self.logs / f"{stage}.log"

    def server_log(self, index: int) -> Path:
        return self.logs / f"server{index}.log"

    # ---- trtllm artifacts (the names of upstream run.sh) ---------------------------------------------------
    @property
    def source(self) -> Path:
        return Path(self.config.source.path) if self.config.source.path else self.workdir / "CosyVoice"

    @property
    def runtime(self) -> Path:
        return self.source / "runtime" / "triton_trtllm"

    @property
    def python_runtime(self) -> Path:
        """runtime/python: the Dockerfile ``docker build`` runs, and the grpc / fastapi server folders."""
        return self.source / "runtime" / "python"

    @property
    def template_repo(self) -> Path:
        return self.runtime / "model_repo"

    @property
    def llm_dir(self) -> Path:
        return self.workdir / "models" / "cosyvoice2_llm"

    @property
    def model_dir(self) -> Path:
        return self.workdir / "models" / Path(self.config.model.cosyvoice_repo).name

    @property
    def spk2info(self) -> Path:
        return self.model_dir / "spk2info.pt"

    @property
    def weights_dir(self) -> Path:
        return self.workdir / f"trt_weights_{self.config.model.dtype}"

    @property
    def engine_dir(self) -> Path:
        return self.workdir / f"trt_engines_{self.config.model.dtype}"

    @property
    def compose_file(self) -> Path:
        return self.workdir / "docker-compose.yaml"

    # ---- model repositories ---------------------------------------------------------------------------------
    def model_repository(self, index: int = 0) -> Path:
        """The repository server ``index`` serves: one shared (trtllm), one per server (emulator)."""
        if self.config.target == "emulator":
            return self.emulator_root(index) / "model_repository"
        return self.workdir / "model_repository"

    def emulator_root(self, index: int) -> Path:
        return self.workdir / "emulator" / f"server{index}"

    def server_dir(self, index: int) -> Path:
        return self.workdir / "servers" / f"server{index}"
