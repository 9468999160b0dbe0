"""Filling CosyVoice's model repository templates: strict placeholders, optional TRT-LLM parameters, decoupled
mode checked against the client mode, and the emulator repository served by a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvload.errors import UsageError
from cvload.targets.checks import decoupled_of
from server_bootstrap import model_repository
from server_bootstrap.config import load_config
from server_bootstrap.layout import Layout

# Excerpts of runtime/triton_trtllm/model_repo/<model>/config.pbtxt with their real placeholders.
FRONT = """name: "cosyvoice2"
backend: "python"
max_batch_size: ${triton_max_batch_size}
dynamic_batching {
    max_queue_delay_microseconds: ${max_queue_delay_microseconds}
}
model_transaction_policy {
  decoupled: ${decoupled_mode}
}
parameters [
  { key: "llm_tokenizer_dir", value: {string_value:"${llm_tokenizer_dir}"} },
  { key: "model_dir", value: {string_value:"${model_dir}"} }
]
instance_group [
  {
    count: ${bls_instance_num}
    kind: KIND_CPU
  }
]
"""
TRTLLM = """name: "tensorrt_llm"
backend: "${triton_backend}"
max_batch_size: ${triton_max_batch_size}
model_transaction_policy {
  decoupled: ${decoupled_mode}
}
dynamic_batching {
    preferred_batch_size: [ ${triton_max_batch_size} ]
    max_queue_delay_microseconds: ${max_queue_delay_microseconds}
}
instance_group [ { count: 1 kind : KIND_CPU } ]
parameters: { key: "max_beam_width" value: { string_value: "${max_beam_width}" } }
parameters: {
  key: "gpt_model_type"
  value: {
    string_value: "${batching_strategy}"
  }
}
parameters: { key: "gpt_model_path" value: { string_value: "${engine_dir}" } }
parameters: { key: "max_tokens_in_paged_kv_cache" value: { string_value: "${max_tokens_in_paged_kv_cache}" } }
parameters: { key: "max_attention_window_size" value: { string_value: "${max_attention_window_size}" } }
parameters: { key: "kv_cache_free_gpu_mem_fraction" value: { string_value: "${kv_cache_free_gpu_mem_fraction}" } }
parameters: { key: "exclude_input_in_output" value: { string_value: "${exclude_input_in_output}" } }
parameters: { key: "enable_kv_cache_reuse" value: { string_value: "${enable_kv_cache_reuse}" } }
parameters: { key: "encoder_input_features_data_type" value: { string_value: "${encoder_input_features_data_type}" } }
parameters: { key: "logits_datatype" value: { string_value: "${logits_datatype}" } }
parameters: {
  key: "lora_cache_max_adapter_size"
  value: {
    string_value: "${lora_cache_max_adapter_size}"
  }
}
parameters: { key: "gpu_device_ids" value: { string_value: "${gpu_device_ids}" } }
parameters: { key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" } }
"""
SIMPLE = """name: "{name}"
backend: "python"
max_batch_size: ${{triton_max_batch_size}}
dynamic_batching {{
    max_queue_delay_microseconds: ${{max_queue_delay_microseconds}}
}}
parameters [ {{ key: "model_dir", value: {{string_value:"${{model_dir}}"}} }} ]
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
"""


def make_checkout(root: Path, **overrides: str) -> Path:
    """A CosyVoice checkout holding only the model_repo templates (the filler needs nothing else)."""
    model_repo = root / "runtime" / "triton_trtllm" / "model_repo"
    texts = {"cosyvoice2": FRONT, "tensorrt_llm": TRTLLM,
             **{m: SIMPLE.format(name=m) for m in ("token2wav", "audio_tokenizer", "speaker_embedding")}}
    texts.update(overrides)
    for model, text in texts.items():
        (model_repo / model / "1").mkdir(parents=True)
        (model_repo / model / "config.pbtxt").write_text(text)
        (model_repo / model / "1" / "model.py").write_text("# the model's code travels with the template\n")
    return root


def setup(tmp_path: Path, toml: str = "", **overrides: str) -> tuple[Layout, Path]:
    checkout = make_checkout(tmp_path / "CosyVoice", **overrides)
    cfg = tmp_path / "deploy.toml"
    cfg.write_text(toml + f'\n[source]\npath = "{checkout}"\n')
    config = load_config(cfg)
    layout = Layout(tmp_path / "work", config)
    return layout, layout.model_repository()


def test_templates_filled_from_the_config(tmp_path: Path) -> None:
    layout, dest = setup(tmp_path, "[triton]\nbls_instances = 6\ntoken2wav_instances = 3\n"
                                   "kv_cache_free_gpu_mem_fraction = 0.4\n")
    notes: list[str] = []
    model_repository.build_trtllm_repository(layout.config, layout, dest, log=notes)
    front = (dest / "cosyvoice2" / "config.pbtxt").read_text()
    assert "decoupled: true" in front and "count: 6" in front and "max_batch_size: 16" in front
    assert f'string_value:"{layout.llm_dir}"' in front and f'string_value:"{layout.model_dir}"' in front
    trt = (dest / "tensorrt_llm" / "config.pbtxt").read_text()
    assert 'string_value: "0.4"' in trt and f'string_value: "{layout.engine_dir}"' in trt
    assert 'string_value: "inflight_fused_batching"' in trt and 'backend: "tensorrtllm"' in trt
    # optional backend parameters without a value are removed, not left as "${...}"; fixed ones stay
    assert "lora_cache_max_adapter_size" not in trt and "gpu_device_ids" not in trt
    assert "FORCE_CPU_ONLY_INPUT_TENSORS" in trt
    assert any("left unset" in n and "lora_cache_max_adapter_size" in n for n in notes)
    assert "count: 3" in (dest / "token2wav" / "config.pbtxt").read_text()
    for model in model_repository.models(layout.config):
        text = (dest / model / "config.pbtxt").read_text()
        assert "${" not in text, model
        assert (dest / model / "1" / "model.py").is_file()


def test_offline_spk2info_and_tensor_parallel_variants(tmp_path: Path) -> None:
    layout, dest = setup(tmp_path, 'mode = "offline"\n[engine]\ntp_size = 2\n[server]\ngpus = [0, 1]\n'
                                   "[triton]\nuse_spk2info_cache = true\n")
    model_repository.build_trtllm_repository(layout.config, layout, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["cosyvoice2", "tensorrt_llm", "token2wav"]
    assert "decoupled: false" in (dest / "cosyvoice2" / "config.pbtxt").read_text()
    trt = (dest / "tensorrt_llm" / "config.pbtxt").read_text()
    assert "decoupled: false" in trt and 'key: "gpu_device_ids" value: { string_value: "0,1" }' in trt


def test_renamed_front_model(tmp_path: Path) -> None:
    layout, dest = setup(tmp_path, '[model]\nname = "tts"\n')
    model_repository.build_trtllm_repository(layout.config, layout, dest)
    assert (dest / "tts" / "config.pbtxt").read_text().startswith('name: "tts"')
    assert not (dest / "cosyvoice2").exists()


def test_unfilled_placeholder_names_file_and_key(tmp_path: Path) -> None:
    layout, dest = setup(tmp_path, token2wav=SIMPLE.format(name="token2wav") + "# ${vocoder_fp16}\n")
    with pytest.raises(UsageError) as info:
        model_repository.build_trtllm_repository(layout.config, layout, dest)
    assert "token2wav/config.pbtxt" in str(info.value) and "${vocoder_fp16}" in str(info.value)


def test_value_without_placeholder_is_an_unknown_key(tmp_path: Path) -> None:
    layout, dest = setup(tmp_path, cosyvoice2=FRONT.replace("${bls_instance_num}", "4"))
    with pytest.raises(UsageError, match=r"cosyvoice2/config.pbtxt: unknown key\(s\) bls_instance_num"):
        model_repository.build_trtllm_repository(layout.config, layout, dest)


def test_hard_coded_decoupled_contradicting_the_mode(tmp_path: Path) -> None:
    layout, dest = setup(tmp_path, 'mode = "offline"\n',
                         tensorrt_llm=TRTLLM.replace("decoupled: ${decoupled_mode}", "decoupled: True")
                         .replace('parameters: { key: "max_beam_width"', '# ${decoupled_mode}\nparameters: { key: '
                                  '"max_beam_width"'))
    with pytest.raises(UsageError) as info:
        model_repository.build_trtllm_repository(layout.config, layout, dest)
    message = str(info.value)
    assert "tensorrt_llm is decoupled (streaming only) but clients will call it in offline mode" in message
    assert "HTTP 501" in message


def test_checkout_without_a_template(tmp_path: Path) -> None:
    layout, dest = setup(tmp_path)
    import shutil

    shutil.rmtree(layout.template_repo / "speaker_embedding")
    with pytest.raises(UsageError, match="no model template for speaker_embedding"):
        model_repository.build_trtllm_repository(layout.config, layout, dest)
    shutil.rmtree(layout.template_repo)
    with pytest.raises(UsageError, match="has no runtime/triton_trtllm/model_repo"):
        model_repository.build_trtllm_repository(layout.config, layout, dest)


def test_emulator_repository_checked_for_its_mode(tmp_path: Path) -> None:
    config = load_config(None, {"target": "emulator", "mode": "offline", "triton.bls_instances": 3})
    layout = Layout(tmp_path, config)
    path = model_repository.build_emulator_repository(config, layout, 0)
    config = model_repository.model_config(path / "cosyvoice2" / "config.pbtxt")
    assert decoupled_of(config) is False and [g["count"] for g in config["instance_group"]] == [3]
    with pytest.raises(UsageError, match="offline only"):
        model_repository.check_decoupled(path, "cosyvoice2", "streaming")
