"""Whisper through faster-whisper (CTranslate2): ``whisper:MODEL`` with a model name (``base.en``,
``large-v3``: Whisper-large-v3 is the English half of the Seed-TTS evaluation CosyVoice's papers report) or a local
model folder; CUDA when available, else CPU int8. faster-whisper is an optional install."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from cvload.asr.base import Recognizer
from cvload.errors import UsageError


class Whisper(Recognizer):
    name = "whisper"
    languages = ("en", "zh")

    def __init__(self, model: str | None) -> None:
        super().__init__("whisper" + (f":{model}" if model else ""))
        self.model = model or "base.en"
        self._model: Any = None

    def check(self) -> None:
        if importlib.util.find_spec("faster_whisper") is None:
            raise UsageError("--asr whisper needs faster-whisper, which is not installed",
                             hint="pip install faster-whisper (or use --asr moonshine / openai:URL)")
        looks_like_path = "/" in self.model or self.model.startswith(".")
        if looks_like_path and not Path(self.model).is_dir():
            raise UsageError(f"--asr {self.spec}: model folder {self.model} does not exist",
                             hint="give a CTranslate2 Whisper folder or a model name such as base.en")

    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str) -> str:
        if self._model is None:
            self.check()
            from faster_whisper import WhisperModel

            try:
                self._model = WhisperModel(self.model, device="auto", compute_type="default")
            except Exception:  # noqa: BLE001 - no CUDA here: CPU
                self._model = WhisperModel(self.model, device="cpu", compute_type="int8")
        if sample_rate != 16000:
            import soxr

            audio = soxr.resample(np.asarray(audio, np.float32), sample_rate, 16000)
        segments, _ = self._model.transcribe(np.asarray(audio, np.float32), language=language, beam_size=1)
        return " ".join(segment.text.strip() for segment in segments).strip()
