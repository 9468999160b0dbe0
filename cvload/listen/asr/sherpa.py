"""Chinese recognisers through sherpa-onnx: ``paraformer:DIR`` (Paraformer-zh, the Chinese half of the Seed-TTS
evaluation) or ``sensevoice:DIR``; DIR holds ``model.onnx`` (or ``model.int8.onnx``) and ``tokens.txt`` as
sherpa-onnx publishes them. sherpa-onnx is an optional install."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from cvload.errors import UsageError
from cvload.listen.asr.base import Recognizer


class SherpaOffline(Recognizer):
    languages = ("zh", "en")

    def __init__(self, name: str, folder: str | None) -> None:
        super().__init__(name + (f":{folder}" if folder else ""))
        self.name = name
        self.folder = Path(folder) if folder else None
        self._recognizer: Any = None

    def _model(self) -> Path:
        assert self.folder is not None
        return next(p for p in (self.folder / "model.int8.onnx", self.folder / "model.onnx") if p.is_file())

    def check(self) -> None:
        if self.folder is None:
            raise UsageError(f"--asr {self.name} needs its model folder: {self.name}:DIR",
                             hint="a sherpa-onnx model folder with model.onnx (or model.int8.onnx) and tokens.txt")
        if not self.folder.is_dir():
            raise UsageError(f"--asr {self.spec}: model folder {self.folder} does not exist",
                             hint="a sherpa-onnx model folder with model.onnx (or model.int8.onnx) and tokens.txt")
        has_model = any((self.folder / n).is_file() for n in ("model.int8.onnx", "model.onnx"))
        if not has_model or not (self.folder / "tokens.txt").is_file():
            raise UsageError(f"--asr {self.spec}: {self.folder} lacks model.onnx or tokens.txt",
                             hint="the files of a sherpa-onnx Paraformer/SenseVoice release")
        if importlib.util.find_spec("sherpa_onnx") is None:
            raise UsageError(f"--asr {self.name} needs sherpa-onnx, which is not installed", hint="pip install sherpa-onnx")

    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str) -> str:
        if self._recognizer is None:
            self.check()
            import sherpa_onnx

            assert self.folder is not None
            tokens = str(self.folder / "tokens.txt")
            if self.name == "paraformer":
                self._recognizer = sherpa_onnx.OfflineRecognizer.from_paraformer(
                    paraformer=str(self._model()), tokens=tokens, num_threads=1)
            else:
                self._recognizer = sherpa_onnx.OfflineRecognizer.from_sense_voice(
                    model=str(self._model()), tokens=tokens, num_threads=1, use_itn=True)
        stream = self._recognizer.create_stream()
        stream.accept_waveform(sample_rate, np.asarray(audio, np.float32))
        self._recognizer.decode_stream(stream)
        return str(stream.result.text).strip()
