"""The pipeline emulator's model repository, shaped like the real CosyVoice2 deployment.

Five models with the real names and tensors (upstream's ``runtime/triton_trtllm/model_repo``): the BLS front model
(``cosyvoice2`` or the deployment's name) calling ``audio_tokenizer`` and ``speaker_embedding`` once per request
with a prompt, ``tensorrt_llm`` (decoupled when clients stream, in-flight batching) for a stream of speech tokens,
and ``token2wav`` once per chunk. Instance counts and batch sizes come from the profile's ``bls_instances``,
``token2wav_instances`` and ``max_batch_size`` (the bootstrap's ``bls_instance_num``, token2wav instances and
``triton_max_batch_size``); each sub-model's time from the profile's costs. Queueing thus happens where it happens
on a GPU server, and Triton's statistics show it per model. The single-model emulator (``build_repository``)
stays the exact ground truth (``fixed`` profile); here that profile only means "no delay".
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from cvload.emulator.profiles import Profile
from cvload.emulator.voices import copy_speech, stub_profile_json, warm_speech
from cvload.errors import UsageError
from cvload.triton.templates import fill_file, pbtxt_string

HERE = Path(__file__).parent
SUB_MODELS = ("audio_tokenizer", "speaker_embedding", "tensorrt_llm", "token2wav")
PROMPT_MODELS = ("audio_tokenizer", "speaker_embedding")
# Each model's template and the module that becomes its model.py.
_SOURCES = {"audio_tokenizer": ("audio_tokenizer.pbtxt", "pipeline_audio_models.py"),
            "speaker_embedding": ("speaker_embedding.pbtxt", "pipeline_audio_models.py"),
            "tensorrt_llm": ("tensorrt_llm.pbtxt", "pipeline_llm.py"),
            "token2wav": ("token2wav.pbtxt", "pipeline_audio_models.py")}


def pipeline_models(name: str = "cosyvoice2", *, prompt_models: bool = True) -> list[str]:
    """The repository's models: the front first; without prompt models (cached speaker only) no tokenizer or
    speaker embedding, as the real deployment with ``use_spk2info_cache``."""
    return [name, *(m for m in SUB_MODELS if prompt_models or m not in PROMPT_MODELS)]


def build_pipeline_repository(root: Path, profile: Profile, *, name: str = "cosyvoice2", mode: str = "streaming",
                              prompt_models: bool = True, trace: bool = True, texts: Iterable[str] = ()) -> Path:
    """Write the pipeline repository under ``root`` (earlier models of these names replaced); return its path.

    With ``trace`` the front model writes ``root/<name>.trace.jsonl`` as the single-model emulator does (see
    ``build_repository``); its ``vocoder`` spans are the token2wav calls, queueing included. ``texts`` are
    spoken into the speech cache first, as there.
    """
    if mode not in ("streaming", "offline"):
        raise UsageError(f"unknown mode {mode!r}", hint="use streaming or offline")
    if name in SUB_MODELS:
        raise UsageError(f"front model name {name!r} is taken by a sub-model of the pipeline",
                         hint="name the front model cosyvoice2 (or any name but " + ", ".join(SUB_MODELS) + ")")
    warm_speech([profile], texts)
    repo = Path(root) / "model_repository"
    repo.mkdir(parents=True, exist_ok=True)
    common = {"triton_max_batch_size": profile.max_batch_size,
              "profile_json": pbtxt_string(stub_profile_json(profile))}
    decoupled = mode == "streaming"
    for model in pipeline_models(name, prompt_models=prompt_models):
        model_dir = repo / model
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / "1").mkdir(parents=True)
        shutil.copy(HERE / "single_model.py", model_dir / "1" / "cosyvoice_emulator.py")
        copy_speech(model_dir / "1")
        if model == name:
            shutil.copy(HERE / "pipeline_front.py", model_dir / "1" / "model.py")
            trace_path = (Path(root) / f"{name}.trace.jsonl").resolve() if trace else ""
            fill_file(HERE / "front.pbtxt", model_dir / "config.pbtxt", {
                **common, "model_name": name, "decoupled_mode": decoupled,
                "bls_instance_num": profile.bls_instances, "trace_path": pbtxt_string(str(trace_path)),
                "state_path": pbtxt_string(str((model_dir / "state.json").resolve())),
                "prompt_models": "true" if prompt_models else "false"})
            continue
        template, module = _SOURCES[model]
        shutil.copy(HERE / module, model_dir / "1" / "model.py")
        values: dict[str, object] = dict(common)
        if model == "tensorrt_llm":
            values["decoupled_mode"] = decoupled
        if model == "token2wav":
            values["token2wav_instances"] = profile.token2wav_instances
        fill_file(HERE / template, model_dir / "config.pbtxt", values)
    return repo
