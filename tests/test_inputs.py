"""Input items: built-in set, upstream manifests, JSONL, prompt audio (mono, 16 kHz), padding, and every error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tritonclient.http as httpclient

from cvload.errors import UsageError
from cvload.settings.inputs import PROMPT_RATE, load_items, padded_length, read_prompt, resample

CJK = re.compile(r"[\u4e00-\u9fff]")


def tone(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([x, -x * 0.5], axis=1)[:, :channels] if channels > 1 else x


@pytest.fixture
def wav16(tmp_path: Path) -> Path:
    path = tmp_path / "prompts" / "p.wav"
    path.parent.mkdir()
    sf.write(path, tone(440, 1.5, PROMPT_RATE), PROMPT_RATE, subtype="PCM_16")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- built-in set -------------------------------------------------------------------------------------------


def test_builtin_set_has_prompts_in_both_languages() -> None:
    items = load_items(None)
    assert 24 <= len(items) <= 30
    assert len({i.item_id for i in items}) == len(items)
    assert any(CJK.search(i.target_text) for i in items) and any(i.target_text.isascii() for i in items)
    lengths = sorted(len(i.target_text) for i in items)
    assert lengths[-1] > 4 * lengths[0]  # a few short and long texts besides the ~6.5 s ones
    prompts = {id(i.prompt_wav): i.prompt_wav for i in items}
    assert 3 <= len(prompts) <= 4  # each prompt file read once and shared
    for item in items:
        assert item.prompt_text and item.prompt_wav is not None
        assert item.prompt_wav.dtype == np.float32 and item.prompt_wav.ndim == 1
        assert 2.5 <= item.prompt_s <= 4.0
        assert np.sqrt(np.mean(item.prompt_wav**2)) > 0.01  # speech, not silence
        assert not item.prompt_wav.flags.writeable  # shared between requests: nobody may modify it


def test_spk_cache_items_carry_no_prompt() -> None:
    items = load_items(None, spk_cache=True)
    assert len(items) == len(load_items(None))
    assert all(i.prompt_wav is None and i.prompt_text is None for i in items)


def test_builtin_items_are_accepted_by_a_real_server(emulator) -> None:
    """Every built-in item, zero-shot as is and padded like upstream, synthesizes on the real Triton server."""
    client = httpclient.InferenceServerClient(emulator.http)
    seconds = {}
    try:
        for padded, item in [(False, i) for i in load_items(None)] + [(True, load_items(None)[0])]:
            pad_to = padded_length(len(item.prompt_wav), "offline", prompt_text=item.prompt_text,
                                   target_text=item.target_text)
            wav = np.pad(item.prompt_wav, (0, pad_to - len(item.prompt_wav))) if padded else item.prompt_wav
            inputs = [httpclient.InferInput("reference_wav", [1, len(wav)], "FP32"),
                      httpclient.InferInput("reference_wav_len", [1, 1], "INT32"),
                      httpclient.InferInput("reference_text", [1, 1], "BYTES"),
                      httpclient.InferInput("target_text", [1, 1], "BYTES")]
            inputs[0].set_data_from_numpy(np.asarray(wav, np.float32).reshape(1, -1))
            inputs[1].set_data_from_numpy(np.array([[len(item.prompt_wav)]], np.int32))
            inputs[2].set_data_from_numpy(np.array([[item.prompt_text.encode()]], object))
            inputs[3].set_data_from_numpy(np.array([[item.target_text.encode()]], object))
            result = client.infer("cosyvoice2_offline", inputs)
            seconds[item.item_id] = result.as_numpy("waveform").size / 24000
    finally:
        client.close()
    assert seconds["long_en"] > seconds["en_01"] > seconds["short_en"] > 0
    assert seconds["long_zh"] > seconds["zh_01"] > seconds["short_zh"] > 0


# -- upstream manifest --------------------------------------------------------------------------------------


def test_manifest_relative_paths_comments_and_prompt_free_items(tmp_path: Path, wav16: Path) -> None:
    manifest = write(tmp_path / "set.lst", "\n".join([
        "# a comment",
        "",
        "utt1|Prompt words.|prompts/p.wav|Hello there.",
        f"utt2|Other words.|{wav16}|Absolute path prompt.",
        "utt3|||No prompt: the server's cached speaker.",
        "|Prompt words.|prompts/p.wav|No id given.",
    ]) + "\n")
    items = load_items(manifest)
    assert [i.item_id for i in items] == ["utt1", "utt2", "utt3", "set-6"]
    assert items[0].prompt_text == "Prompt words." and items[0].target_text == "Hello there."
    assert items[0].prompt_wav is items[1].prompt_wav  # same file, read once
    assert len(items[0].prompt_wav) == int(1.5 * PROMPT_RATE)
    assert items[2].prompt_wav is None and items[2].prompt_text is None


def test_manifest_with_spk_cache_needs_no_prompt_files(tmp_path: Path) -> None:
    manifest = write(tmp_path / "m.lst", "a|words|missing.wav|Say this.\n")
    assert load_items(manifest, spk_cache=True)[0].prompt_wav is None
    with pytest.raises(UsageError, match=r"m\.lst:1: prompt audio .*missing\.wav not found"):
        load_items(manifest)


@pytest.mark.parametrize(("line", "message"), [
    ("a|b|prompts/p.wav", r"set\.lst:3: expected 4 fields .* found 3"),
    ("a|b|prompts/p.wav|c|d", r"set\.lst:3: expected 4 fields .* found 5"),
    ("a|b|prompts/p.wav|   ", r"set\.lst:3: empty target text \(item 'a'\)"),
    ("a|b||text", r"set\.lst:3: prompt text without prompt audio"),
    ("a||prompts/p.wav|text", r"set\.lst:3: prompt audio without prompt text"),
    ("a|b|prompts/none.wav|text", r"set\.lst:3: prompt audio .*prompts/none\.wav not found"),
    ("a|b|prompts|text", r"set\.lst:3: prompt audio .*prompts is not a file"),
    ("a|b|notes.txt|text", r"set\.lst:3: prompt audio .*notes\.txt is not a readable audio file"),
    ("a|b|empty.wav|text", r"set\.lst:3: prompt audio .*empty\.wav has no samples"),
])
def test_manifest_errors_name_file_and_line(tmp_path: Path, wav16: Path, line: str, message: str) -> None:
    write(tmp_path / "notes.txt", "this is not audio\n" * 50)
    sf.write(tmp_path / "empty.wav", np.zeros(0), PROMPT_RATE)
    manifest = write(tmp_path / "set.lst", f"# header\nok|b|prompts/p.wav|fine\n{line}\n")
    with pytest.raises(UsageError, match=message):
        load_items(manifest)


@pytest.mark.parametrize(("content", "message"), [
    (None, r"inputs file .*nope\.lst not found"),
    ("# only comments\n\n", r"no items in the file"),
    (b"\xff\xfe\x00binary", r"not UTF-8 text"),
])
def test_unusable_inputs_file(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    path = tmp_path / "nope.lst"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message):
        load_items(path)


def test_inputs_given_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a file"):
        load_items(tmp_path)


# -- JSONL --------------------------------------------------------------------------------------------------


def test_jsonl_fields(tmp_path: Path, wav16: Path) -> None:
    inline = {"array": tone(300, 0.5, 8000).tolist(), "sampling_rate": 8000}
    path = write(tmp_path / "items.jsonl", "\n".join(json.dumps(o, ensure_ascii=False) for o in [
        {"id": "a", "target_text": "Hello.", "prompt_text": "Words.", "prompt_wav": "prompts/p.wav"},
        {"id": 7, "target_text": "你好。", "prompt_text": "Words.", "prompt_audio": "prompts/p.wav"},
        {"target_text": "Inline prompt.", "prompt_text": "Words.", "prompt_audio": inline},
        {"id": "plain", "target_text": "No prompt."},
    ]) + "\n\n")
    items = load_items(path)
    assert [i.item_id for i in items] == ["a", "7", "items-3", "plain"]
    assert items[0].prompt_wav is items[1].prompt_wav
    assert len(items[2].prompt_wav) == 8000  # 0.5 s resampled from 8 kHz to 16 kHz
    assert items[3].prompt_wav is None


@pytest.mark.parametrize(("line", "message"), [
    ('{"id": "x", "target_text": "t", "prompt_txt": "p"}', r"items\.jsonl:2: unknown key 'prompt_txt' "
                                                           r"\(did you mean 'prompt_text'\?\)"),
    ('{"id": "x", "target_text": "t",}', r"items\.jsonl:2: not valid JSON"),
    ('["x", "t"]', r"items\.jsonl:2: expected a JSON object, got list"),
    ('{"id": "x"}', r"items\.jsonl:2: empty target text"),
    ('{"id": "x", "target_text": 5}', r"items\.jsonl:2: 'target_text' must be a string, got int"),
    ('{"id": true, "target_text": "t"}', r"items\.jsonl:2: 'id' must be a string or an integer"),
    ('{"target_text": "t", "prompt_text": "p", "prompt_wav": "p.wav", "prompt_audio": "p.wav"}',
     r"items\.jsonl:2: give either 'prompt_wav' or 'prompt_audio'"),
    ('{"target_text": "t", "prompt_text": "p", "prompt_wav": "gone.flac"}',
     r"items\.jsonl:2: prompt audio .*gone\.flac not found"),
    ('{"target_text": "t", "prompt_text": "p", "prompt_audio": {"array": [0.1], "sampling_rate": 0}}',
     r"items\.jsonl:2: prompt_audio\.sampling_rate must be a positive integer"),
    ('{"target_text": "t", "prompt_text": "p", "prompt_audio": {"samples": [0.1]}}',
     r"items\.jsonl:2: 'prompt_audio' must be a path or an object"),
    ('{"target_text": "t", "prompt_text": "p", "prompt_audio": {"array": ["a"], "sampling_rate": 16000}}',
     r"items\.jsonl:2: prompt_audio\.array must be a list of numbers"),
])
def test_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "items.jsonl", '{"id": "ok", "target_text": "fine"}\n' + line + "\n")
    with pytest.raises(UsageError, match=message):
        load_items(path)


# -- prompt audio -------------------------------------------------------------------------------------------


def test_stereo_44k_prompt_becomes_mono_16k(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    sf.write(path, tone(1000, 2.0, 44100, channels=2), 44100, subtype="FLOAT")
    wav = read_prompt(path)
    assert wav.dtype == np.float32 and wav.ndim == 1 and len(wav) == 2 * PROMPT_RATE
    expected = 0.125 * np.sin(2 * np.pi * 1000 * np.arange(len(wav)) / PROMPT_RATE)  # mean of x and -x/2, x = 0.5 sin
    assert np.abs(wav[800:-800] - expected[800:-800]).max() < 1e-3


def test_prompt_cache_rereads_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "p.wav"
    sf.write(path, tone(440, 1.0, PROMPT_RATE), PROMPT_RATE)
    first = read_prompt(path)
    assert read_prompt(path) is first
    sf.write(path, tone(440, 2.0, PROMPT_RATE), PROMPT_RATE)
    assert len(read_prompt(path)) == 2 * PROMPT_RATE


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000])
def test_resample_keeps_in_band_tones(rate: int) -> None:
    y = resample(tone(1000, 1.0, rate), rate, PROMPT_RATE)
    assert len(y) == PROMPT_RATE
    expected = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(len(y)) / PROMPT_RATE)
    assert np.abs(y[500:-500] - expected[500:-500]).max() < 1e-3


@pytest.mark.parametrize("rate", [44100, 48000])
def test_resample_removes_what_16k_cannot_hold(rate: int) -> None:
    """A 12 kHz tone would alias to 4 kHz if decimated naively; the low-pass removes it."""
    y = resample(tone(12000, 1.0, rate), rate, PROMPT_RATE)
    assert np.sqrt(np.mean(y[500:-500] ** 2)) < 1e-3


def test_resample_same_rate_is_identity() -> None:
    x = tone(440, 0.1, PROMPT_RATE)
    assert np.array_equal(resample(x, PROMPT_RATE, PROMPT_RATE), x.astype(np.float32))


# -- padding like the upstream client -----------------------------------------------------------------------


def test_pad_streaming_to_ten_seconds_offline_to_one() -> None:
    wav = np.full(int(2.5 * PROMPT_RATE), 0.1, np.float32)
    # estimated target = 2.5 s * 20/10 chars = 5 s; prompt + target = 7.5 s
    assert padded_length(len(wav), "streaming", prompt_text="x" * 10, target_text="y" * 20) == 10 * PROMPT_RATE
    assert padded_length(len(wav), "offline", prompt_text="x" * 10, target_text="y" * 20) == 8 * PROMPT_RATE
    # without texts the target is assumed as long as the prompt: 2.5 + 2.5 s -> 10 s / 6 s
    assert padded_length(len(wav), "streaming") == 10 * PROMPT_RATE
    assert padded_length(len(wav), "offline") == 6 * PROMPT_RATE
    assert padded_length(6 * PROMPT_RATE, "streaming") == 20 * PROMPT_RATE
    with pytest.raises(ValueError, match="mode"):
        padded_length(10, "realtime")
