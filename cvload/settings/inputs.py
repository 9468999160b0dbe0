"""What to synthesize: items read from the built-in set, an upstream manifest or a JSONL file.

Every input problem is found here, before any load is sent, and reported with the file (and line) to fix.

Formats
-------
* Upstream manifest (the CosyVoice benchmark client's): one item per line, ``utt|prompt_text|prompt_wav|target_text``;
  ``prompt_wav`` relative to the manifest's folder; blank lines and lines starting with ``#`` are skipped. Leave
  both ``prompt_text`` and ``prompt_wav`` empty for an item without a prompt (the server's cached speaker).
* JSONL (``*.jsonl``): one object per line (blank lines skipped) with the keys

  ``id``           item id (string or number; default ``<file stem>-<line>``)
  ``target_text``  the text to speak (required, non-empty)
  ``prompt_text``  transcript of the prompt audio (required with a prompt, forbidden without)
  ``prompt_wav``   path of the prompt audio, relative to the JSONL file's folder
  ``prompt_audio`` the prompt as a path (same as ``prompt_wav``) or inline, as Hugging Face datasets export it:
                   ``{"array": [floats], "sampling_rate": 16000}``

  ``language``     ``en`` or ``zh``: how a content check scores it (default: from the text's script)

  Any other key is an error (a typo would otherwise silently drop a prompt).

Prompt audio is read with soundfile, mixed down to mono and resampled with libsoxr to 16 kHz (the rate CosyVoice
expects); each file is read once per process.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from cvload.errors import UsageError

PROMPT_RATE = 16000
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEFAULT_MANIFEST = DATA_DIR / "default.lst"
JSONL_KEYS = ("id", "target_text", "prompt_text", "prompt_wav", "prompt_audio", "language")
LANGUAGES = ("en", "zh")  # a JSONL item's ``language``: which error rate scores its transcript (docs/speech.md)
MANIFEST_FORMAT = "utt|prompt_text|prompt_wav|target_text"
# The upstream client zero-pads prompts to a multiple of this many seconds (streaming / offline).
PAD_SECONDS = {"streaming": 10, "offline": 1}


@dataclass(frozen=True, eq=False)
class Item:
    """One thing to say: the target text and, for zero-shot synthesis, the prompt (16 kHz mono float32)."""

    item_id: str
    target_text: str
    prompt_text: str | None = None
    prompt_wav: npt.NDArray[np.float32] | None = None
    language: str | None = None  # en | zh (JSONL key ``language``); None: from the text's script

    @property
    def prompt_s(self) -> float:
        return 0.0 if self.prompt_wav is None else len(self.prompt_wav) / PROMPT_RATE


def load_items(path: str | os.PathLike[str] | None, *, spk_cache: bool = False) -> list[Item]:
    """Items from ``path`` (manifest, or JSONL by its ``.jsonl`` suffix); None reads the built-in set.

    With ``spk_cache`` items carry no prompt (the server speaks with its cached speaker), so prompt files are
    neither read nor required.
    """
    source = DEFAULT_MANIFEST if path is None else Path(os.path.expanduser(os.fspath(path)))
    text = _read_text(source)
    if source.suffix.lower() == ".jsonl":
        items = _parse_jsonl(source, text, spk_cache=spk_cache)
    else:
        items = _parse_manifest(source, text, spk_cache=spk_cache)
    if not items:
        raise UsageError(f"{source}: no items in the file",
                         hint=f"one item per line: {MANIFEST_FORMAT} (or JSON objects in a .jsonl file)")
    return items


def _read_text(path: Path) -> str:
    if not path.exists():
        raise UsageError(f"inputs file {path} not found", hint="check the path given to --inputs")
    if not path.is_file():
        raise UsageError(f"inputs {path} is not a file", hint="give a manifest or .jsonl file to --inputs")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start})",
                         hint="inputs must be a UTF-8 manifest or .jsonl file, not audio or binary data") from None
    except OSError as exc:
        raise UsageError(f"cannot read inputs file {path}: {exc.strerror or exc}") from None


def _parse_manifest(path: Path, text: str, *, spk_cache: bool) -> list[Item]:
    items = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        fields = line.split("|")
        if len(fields) != 4:
            raise UsageError(f"{where}: expected 4 fields {MANIFEST_FORMAT} separated by '|', found {len(fields)}",
                             hint="a '|' inside a text is not allowed; use a .jsonl file for such texts")
        utt, prompt_text, prompt_wav, target_text = (f.strip() for f in fields)
        items.append(_make_item(path, lineno, utt or f"{path.stem}-{lineno}", target_text,
                                prompt_text or None, prompt_wav or None, None, spk_cache=spk_cache))
    return items


def _parse_jsonl(path: Path, text: str, *, spk_cache: bool) -> list[Item]:
    items = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})",
                             hint="each line of a .jsonl file is one JSON object") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        unknown = [k for k in obj if k not in JSONL_KEYS]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, JSONL_KEYS, n=1)
            raise UsageError(f"{where}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                             hint="known keys: " + ", ".join(JSONL_KEYS))
        for key in ("target_text", "prompt_text", "prompt_wav"):
            if key in obj and not isinstance(obj[key], str):
                raise UsageError(f"{where}: {key!r} must be a string, got {type(obj[key]).__name__}")
        item_id = obj.get("id")
        if isinstance(item_id, bool) or (item_id is not None and not isinstance(item_id, str | int)):
            raise UsageError(f"{where}: 'id' must be a string or an integer")
        if "prompt_wav" in obj and "prompt_audio" in obj:
            raise UsageError(f"{where}: give either 'prompt_wav' or 'prompt_audio', not both")
        language = obj.get("language")
        if language is not None and language not in LANGUAGES:
            raise UsageError(f"{where}: 'language' {language!r} is not one of {', '.join(LANGUAGES)}",
                             hint="or leave it out: the language comes from the text's script")
        audio = obj.get("prompt_audio", obj.get("prompt_wav"))
        wav_path = audio if isinstance(audio, str) else None
        inline = audio if audio is not None and wav_path is None else None
        item = _make_item(path, lineno, str(item_id) if item_id not in (None, "") else f"{path.stem}-{lineno}",
                          obj.get("target_text", ""), obj.get("prompt_text") or None, wav_path or None, inline,
                          spk_cache=spk_cache)
        items.append(dataclasses.replace(item, language=language) if language else item)
    return items


def _make_item(path: Path, lineno: int, item_id: str, target_text: str, prompt_text: str | None,
               wav_path: str | None, inline: Any, *, spk_cache: bool) -> Item:
    where = f"{path}:{lineno}"
    if not target_text.strip():
        raise UsageError(f"{where}: empty target text (item {item_id!r})", hint="every item needs a text to speak")
    has_audio = wav_path is not None or inline is not None
    if spk_cache:
        return Item(item_id, target_text.strip())
    if has_audio and prompt_text is None:
        raise UsageError(f"{where}: prompt audio without prompt text (item {item_id!r})",
                         hint="zero-shot synthesis needs the prompt's transcript; give both or neither")
    if prompt_text is not None and not has_audio:
        raise UsageError(f"{where}: prompt text without prompt audio (item {item_id!r})",
                         hint="zero-shot synthesis needs the prompt audio; give both or neither")
    if not has_audio:
        return Item(item_id, target_text.strip())
    if inline is not None:
        wav = _inline_audio(where, inline)
    else:
        assert wav_path is not None
        audio_path = Path(os.path.expanduser(wav_path))
        if not audio_path.is_absolute():
            audio_path = path.parent / audio_path
        wav = read_prompt(audio_path, where=where)
    return Item(item_id, target_text.strip(), prompt_text, wav)


def _inline_audio(where: str, value: Any) -> npt.NDArray[np.float32]:
    if not isinstance(value, dict) or set(value) - {"array", "sampling_rate", "path"} or "array" not in value:
        raise UsageError(f"{where}: 'prompt_audio' must be a path or an object "
                         '{"array": [...], "sampling_rate": N}')
    rate = value.get("sampling_rate")
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise UsageError(f"{where}: prompt_audio.sampling_rate must be a positive integer, got {rate!r}")
    try:
        data = np.asarray(value["array"], dtype=np.float32)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: prompt_audio.array must be a list of numbers") from None
    if data.ndim == 2:
        data = data.mean(axis=1, dtype=np.float32)
    if data.ndim != 1 or data.size == 0:
        raise UsageError(f"{where}: prompt_audio.array must be a non-empty list of samples")
    return _finish(resample(data, rate, PROMPT_RATE))


# -- prompt audio ----------------------------------------------------------------------------------------------

_CACHE: dict[tuple[str, int, int], npt.NDArray[np.float32]] = {}


def read_prompt(path: Path, *, where: str | None = None) -> npt.NDArray[np.float32]:
    """A prompt file as 16 kHz mono float32 (read-only: it is shared by every request using it)."""
    prefix = f"{where}: " if where else ""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"{prefix}prompt audio {path} not found",
                         hint="paths in a manifest are relative to the manifest's folder") from None
    except OSError as exc:
        raise UsageError(f"{prefix}cannot read prompt audio {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise UsageError(f"{prefix}prompt audio {path} is not a file")
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        detail = getattr(exc, "error_string", None) or str(exc)
        raise UsageError(f"{prefix}prompt audio {path} is not a readable audio file ({detail})",
                         hint="use a WAV/FLAC/OGG file, ideally 16 kHz mono") from None
    if data.shape[0] == 0:
        raise UsageError(f"{prefix}prompt audio {path} has no samples")
    wav = _finish(resample(data.mean(axis=1, dtype=np.float32), rate, PROMPT_RATE))
    _CACHE[key] = wav
    return wav


def _finish(wav: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    wav.flags.writeable = False
    return wav


def resample(x: npt.NDArray[np.float32], rate_in: int, rate_out: int) -> npt.NDArray[np.float32]:
    """``x`` (mono) at ``rate_out``, float32, by libsoxr's high-quality filter: anti-aliased when going down,
    aligned with the input, ``round(len(x) * rate_out / rate_in)`` samples."""
    x = np.asarray(x, dtype=np.float32)
    if rate_in == rate_out:
        return x.copy()
    out: npt.NDArray[np.float32] = soxr.resample(x, rate_in, rate_out, quality="HQ")  # (soxr carries no types)
    return out


# -- padding like the upstream client ----------------------------------------------------------------------------


def padded_length(n_samples: int, mode: str, *, prompt_text: str | None = None,
                  target_text: str | None = None, sample_rate: int = PROMPT_RATE) -> int:
    """Samples the upstream client sends for a prompt of ``n_samples``: zeros up to the next multiple of 10 s
    (streaming) or 1 s (offline) above prompt + estimated target duration (the prompt's duration scaled by the
    text length ratio; the prompt's duration when the texts are not given)."""
    if mode not in PAD_SECONDS:
        raise ValueError(f"mode must be one of {', '.join(PAD_SECONDS)}, got {mode!r}")
    step = PAD_SECONDS[mode]
    duration = n_samples / sample_rate
    target = duration / len(prompt_text) * len(target_text) if prompt_text and target_text else duration
    return step * sample_rate * (int(target + duration) // step + 1)
