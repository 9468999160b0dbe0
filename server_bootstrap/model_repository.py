"""Model repositories: CosyVoice's ``model_repo`` filled from the deployment config, or the emulator's.

Filling goes through ``cvload.triton.templates.fill_template``, which fails on a placeholder without a value
and on a value no placeholder asks for (CosyVoice's fill_template.py silently leaves both, and the model then
fails to load far from the cause). The one exception is TensorRT-LLM's optional backend parameters: entries of
``tensorrt_llm/config.pbtxt`` such as ``lora_cache_*`` that the backend treats as unset while they still read
``${...}``; we remove those entries (the backend's documented way to leave them unset) and say so.

After filling, the repository is checked the way a client will see it: the front model and ``tensorrt_llm`` must
both be decoupled exactly when clients stream, or the first client fails (HTTP 501, or a stream that never
ends).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from cvload.errors import UsageError
from cvload.targets.checks import decoupled_of
from cvload.targets.proto_dict import message_to_dict
from cvload.triton.templates import fill_template
from server_bootstrap.config import DeploymentConfig
from server_bootstrap.layout import Layout

# The placeholders of each CosyVoice model template (runtime/triton_trtllm/model_repo/<model>/config.pbtxt), as
# upstream run.sh fills them; only these names are needed here, not the templates themselves.
FRONT_KEYS = ("triton_max_batch_size", "max_queue_delay_microseconds", "decoupled_mode", "llm_tokenizer_dir",
              "model_dir", "bls_instance_num")
SIMPLE_KEYS = ("model_dir", "triton_max_batch_size", "max_queue_delay_microseconds")
TRTLLM_KEYS = ("triton_backend", "triton_max_batch_size", "decoupled_mode", "max_beam_width", "engine_dir",
               "max_tokens_in_paged_kv_cache", "max_attention_window_size", "kv_cache_free_gpu_mem_fraction",
               "exclude_input_in_output", "enable_kv_cache_reuse", "batching_strategy",
               "max_queue_delay_microseconds", "encoder_input_features_data_type", "logits_datatype")
# Backend parameters of tensorrt_llm that may stay unset (their entry is removed when no value is given).
TRTLLM_OPTIONAL = frozenset({
    "batch_scheduler_policy", "kv_cache_host_memory_bytes", "kv_cache_onboard_blocks", "enable_trt_overlap",
    "cancellation_check_period_ms", "iter_stats_max_iterations", "request_stats_max_iterations",
    "normalize_log_probs", "enable_chunked_context", "gpu_device_ids", "participant_ids",
    "lora_cache_optimal_adapter_size", "lora_cache_max_adapter_size", "lora_cache_gpu_memory_fraction",
    "lora_cache_host_memory_bytes", "lora_prefetch_dir", "decoding_mode", "medusa_choices", "eagle_choices",
    "lookahead_window_size", "lookahead_ngram_size", "lookahead_verification_set_size", "gpu_weights_percent",
    "enable_context_fmha_fp32_acc", "multi_block_mode", "cuda_graph_mode", "cuda_graph_cache_size",
    "speculative_decoding_fast_logits", "tokenizer_dir", "guided_decoding_backend", "xgrammar_tokenizer_info_path",
    "max_num_sequences", "sink_token_length", "cross_kv_cache_fraction", "kv_cache_host_memory",
    "recv_poll_period_ms", "encoder_engine_dir", "executor_lookahead_config", "prompt_embedding_table_data_type",
})
INTERNAL_MODELS = ("tensorrt_llm", "token2wav", "audio_tokenizer", "speaker_embedding")

_OPTIONAL_PARAM = re.compile(
    r"parameters\s*:?\s*\{\s*key\s*:\s*\"(?P<key>[^\"]+)\"\s*,?\s*value\s*:?\s*\{\s*string_value\s*:\s*"
    r"\"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}\"\s*\}\s*\}\s*,?\s*\n?")
_INSTANCE_COUNT = re.compile(r"(instance_group\s*\[\s*\{[^}]*?count\s*:\s*)(\d+)", re.S)


def models(config: DeploymentConfig) -> list[str]:
    """The models of the real deployment; the cached-speaker mode needs no prompt-audio models."""
    names = [config.model.name, "tensorrt_llm", "token2wav"]
    if not config.triton.use_spk2info_cache:
        names += ["audio_tokenizer", "speaker_embedding"]
    return names


def template_values(config: DeploymentConfig, layout: Layout) -> dict[str, dict[str, object]]:
    """Each model's placeholder values (what ``plan`` shows and ``repo`` writes)."""
    t = config.triton
    simple = {"model_dir": str(layout.model_dir), "triton_max_batch_size": t.max_batch_size,
              "max_queue_delay_microseconds": t.max_queue_delay_microseconds}
    values: dict[str, dict[str, object]] = {
        config.model.name: {
            **simple,
            "decoupled_mode": config.decoupled,
            "llm_tokenizer_dir": str(layout.llm_dir),
            "bls_instance_num": t.bls_instances,
        },
        "tensorrt_llm": {
            "triton_backend": "tensorrtllm",
            "triton_max_batch_size": t.max_batch_size,
            "decoupled_mode": config.decoupled,
            "max_beam_width": 1,
            "engine_dir": str(layout.engine_dir),
            "max_tokens_in_paged_kv_cache": t.max_tokens_in_paged_kv_cache,
            "max_attention_window_size": t.max_attention_window_size,
            "kv_cache_free_gpu_mem_fraction": t.kv_cache_free_gpu_mem_fraction,
            "exclude_input_in_output": True,
            "enable_kv_cache_reuse": False,
            "batching_strategy": "inflight_fused_batching",
            "max_queue_delay_microseconds": t.max_queue_delay_microseconds,
            "encoder_input_features_data_type": "TYPE_FP16",
            "logits_datatype": "TYPE_FP32",
        },
        "token2wav": dict(simple),
        "audio_tokenizer": dict(simple),
        "speaker_embedding": dict(simple),
    }
    if config.world_size > 1:  # TensorRT-LLM orchestrator mode: one process drives the ranks' GPUs
        values["tensorrt_llm"]["gpu_device_ids"] = ",".join(str(g) for g in range(config.world_size))
    return {name: values[name] for name in models(config)}


def prune_unset_parameters(text: str, values: dict[str, object]) -> tuple[str, list[str]]:
    """Remove optional backend-parameter entries whose placeholder gets no value; return what was removed."""
    removed: list[str] = []

    def drop(m: re.Match[str]) -> str:
        name = m.group("name")
        if name in values or name not in TRTLLM_OPTIONAL:
            return m.group(0)
        removed.append(name)
        return ""

    return _OPTIONAL_PARAM.sub(drop, text), removed


def set_instance_count(text: str, count: int, *, source: str) -> str:
    """Set the (hard-coded) instance count of a model, e.g. token2wav's ``count: 1``."""
    found = _INSTANCE_COUNT.findall(text)
    if len(found) != 1:
        raise UsageError(f"{source}: expected one instance_group with a count, found {len(found)}",
                         hint="this template differs from the pinned CosyVoice commit; check [source] commit")
    return _INSTANCE_COUNT.sub(lambda m: f"{m.group(1)}{count}", text)


def model_config(path: Path) -> dict[str, Any]:
    """A filled ``config.pbtxt`` as Triton's JSON model config, the form clients read from the server."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        message = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig(), allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise UsageError(f"{path}: not a valid Triton model config ({exc})",
                         hint="this template differs from the pinned CosyVoice commit; check [source] commit") from None
    return message_to_dict(message)


def check_decoupled(repo: Path, model: str, mode: str) -> None:
    """The filled config of ``model`` must be decoupled exactly when clients stream."""
    path = repo / model / "config.pbtxt"
    decoupled = decoupled_of(model_config(path))
    want = mode == "streaming"
    if bool(decoupled) != want:
        state = "decoupled (streaming only)" if decoupled else "not decoupled (offline only)"
        raise UsageError(
            f"{path}: model {model} is {state} but clients will call it in {mode} mode: "
            + ("offline clients get HTTP 501 'doesn't support models with decoupled transaction policy'"
               if decoupled else "streaming clients get one response after the whole synthesis, no chunks"),
            hint=f"set mode = \"{'streaming' if decoupled else 'offline'}\" to match, or fix the template's "
                 "model_transaction_policy (it must read decoupled: ${decoupled_mode})")


def build_trtllm_repository(config: DeploymentConfig, layout: Layout, dest: Path, *,
                            log: list[str] | None = None) -> Path:
    """Copy CosyVoice's model_repo templates into ``dest`` (replaced) and fill them strictly."""
    src = layout.template_repo
    if not src.is_dir():
        raise UsageError(f"CosyVoice checkout {layout.source} has no {src.relative_to(layout.source)}",
                         hint="point [source] path at a CosyVoice checkout, or run the source stage")
    values = template_values(config, layout)
    missing = [m for m in values if m != config.model.name and not (src / m / "config.pbtxt").is_file()]
    front_src = src / ("cosyvoice2" if not (src / config.model.name).is_dir() else config.model.name)
    if not (front_src / "config.pbtxt").is_file():
        missing.insert(0, front_src.name)
    if missing:
        raise UsageError(f"{src}: no model template for {', '.join(missing)}",
                         hint=f"this checkout is not the expected CosyVoice commit ({config.source.commit[:12]}); "
                              "set [source] commit or path")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for model, model_values in values.items():
        model_src = front_src if model == config.model.name else src / model
        shutil.copytree(model_src, dest / model, symlinks=True)
        cfg = dest / model / "config.pbtxt"
        source = str(model_src / "config.pbtxt")
        text = cfg.read_text()
        if model == "tensorrt_llm":
            text, removed = prune_unset_parameters(text, model_values)
            if removed and log is not None:
                log.append(f"tensorrt_llm: left unset (backend defaults): {', '.join(removed)}")
        text = fill_template(text, model_values, source=source)
        if model == config.model.name and config.model.name != "cosyvoice2":
            text = re.sub(r'^name:\s*"[^"]*"', f'name: "{config.model.name}"', text, count=1, flags=re.M)
        if model == "token2wav":
            text = set_instance_count(text, config.triton.token2wav_instances, source=source)
        cfg.write_text(text)
        if log is not None:
            log.append(f"{model}: " + " ".join(f"{k}={show_value(v)}" for k, v in sorted(model_values.items())))
    for model in (config.model.name, "tensorrt_llm"):
        check_decoupled(dest, model, config.mode)
    return dest


def emulator_models(config: DeploymentConfig) -> list[str]:
    """The emulator repository's models: the front model alone, or the pipeline's five (less the prompt models
    with the speaker cache, as the real deployment)."""
    if not config.emulator.pipeline:
        return [config.model.name]
    from cvload.emulator import pipeline_models

    return pipeline_models(config.model.name, prompt_models=not config.triton.use_spk2info_cache)


def build_emulator_repository(config: DeploymentConfig, layout: Layout, index: int) -> Path:
    """The emulator's repository for server ``index`` (its own folder: the emulator's locks are per server)."""
    from cvload.emulator import EmulatedModel, build_pipeline_repository, build_repository, get_profile

    root = layout.emulator_root(index)
    repo = root / "model_repository"
    if repo.exists():
        shutil.rmtree(repo)
    profile = get_profile(config.emulator.profile, dict(config.emulator.profile_set))
    if config.emulator.pipeline:
        t = config.triton
        profile = profile.with_overrides({"bls_instances": t.bls_instances, "token2wav_instances": t.token2wav_instances,
                                          "max_batch_size": t.max_batch_size})
        build_pipeline_repository(root, profile, name=config.model.name, mode=config.mode,
                                  prompt_models=not t.use_spk2info_cache, trace=False)
        for name in (config.model.name, "tensorrt_llm"):
            check_decoupled(repo, name, config.mode)
        return repo
    model = EmulatedModel(name=config.model.name, profile=profile, mode=config.mode,
                          instances=config.triton.bls_instances, max_batch_size=config.triton.max_batch_size)
    build_repository(root, [model], trace=False)
    check_decoupled(repo, config.model.name, config.mode)
    return repo


def show_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
