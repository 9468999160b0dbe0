"""Triton model repositories emulating CosyVoice2: one `cosyvoice2` model (``build_repository``), or the real
deployment's five models calling each other (``build_pipeline_repository``). Both speak (``warm_speech``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cvload.emulator.pipeline_repository import build_pipeline_repository, pipeline_models
from cvload.emulator.profiles import PRESETS, Profile, get_profile
from cvload.emulator.voices import copy_speech, stub_profile_json, warm_speech
from cvload.errors import UsageError
from cvload.triton.templates import fill_file, pbtxt_string

HERE = Path(__file__).parent
MODES = ("streaming", "offline")

__all__ = ["EmulatedModel", "build_repository", "build_pipeline_repository", "pipeline_models", "PRESETS", "Profile",
           "get_profile", "MODES", "warm_speech"]


@dataclass(frozen=True)
class EmulatedModel:
    """One emulated front model: its name, latency profile and transaction mode."""

    name: str = "cosyvoice2"
    profile: Profile = PRESETS["fixed"]
    mode: str = "streaming"
    instances: int = 4  # bls_instance_num of the real deployment (offline requests served in parallel)
    max_batch_size: int = 16


def build_repository(root: Path, models: list[EmulatedModel] | None = None, *, trace: bool = True,
                     texts: Iterable[str] = ()) -> Path:
    """Write a model repository under ``root`` (created, or emptied of earlier models) and return its path.

    With ``trace`` each model appends one JSON line per request to ``root/<model>.trace.jsonl``, written before
    the request's final response goes out: the ground truth measurement tests compare against. Fields: ``id``,
    ``model``, ``pid`` (the instance's stub process), ``arrival`` (``time.monotonic()`` when the request reached
    the model: the host's monotonic clock, comparable with any process's), ``sends`` (seconds after arrival of
    each audio response; offline: of the one response), ``vocoder`` ([start, end] of each vocoder job, seconds
    after arrival), ``error`` (null or the error message sent), ``voice`` (what was said: ``speech``, ``tone``,
    or the tone with the reason speech was not sent) and ``garble`` (null, or how ``garble_above`` spoiled it).

    ``texts`` (and the built-in input set) are spoken into the speech cache first (``warm_speech``).
    """
    models = models or [EmulatedModel()]
    warm_speech([m.profile for m in models], texts)
    repo = Path(root) / "model_repository"
    repo.mkdir(parents=True, exist_ok=True)
    for model in models:
        if model.mode not in MODES:
            raise UsageError(f"unknown mode {model.mode!r}", hint="use streaming or offline")
        model_dir = repo / model.name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / "1").mkdir(parents=True)
        shutil.copy(HERE / "single_model.py", model_dir / "1" / "model.py")
        copy_speech(model_dir / "1")
        trace_path = (Path(root) / f"{model.name}.trace.jsonl").resolve() if trace else ""
        fill_file(
            HERE / "config.pbtxt",
            model_dir / "config.pbtxt",
            {
                "model_name": model.name,
                "triton_max_batch_size": model.max_batch_size,
                "decoupled_mode": model.mode == "streaming",
                "bls_instance_num": 1 if model.mode == "streaming" else model.instances,
                "profile_json": pbtxt_string(stub_profile_json(model.profile)),
                "trace_path": pbtxt_string(str(trace_path)),
                "vocoder_lock": pbtxt_string(str((model_dir / "vocoder.lock").resolve())),
                "state_path": pbtxt_string(str((model_dir / "state.json").resolve())),
            },
        )
    return repo
