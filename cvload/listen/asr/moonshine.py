"""Moonshine base (English) in onnxruntime: the encoder and merged decoder files the ``moonshine-cpp`` wheel ships.

The wheel's own native library needs CPU instructions not every host has; its model files (ORT format) run in the
onnxruntime Python package on one thread each. Greedy decoding with the decoder's key/value cache, as the model's
reference code does; at most 6 tokens per second of audio (its own bound). The tokenizer is the wheel's
``tokenizer.bin``: for each token id, a length (one byte, or two as a varint) and the token's bytes, with U+2581
marking a space. A folder given as ``moonshine:DIR`` holds the same three files (``.ort`` or ``.onnx``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from cvload.errors import UsageError
from cvload.listen.asr.base import Recognizer

RATE = 16000
LAYERS, HEADS, HEAD_DIM = 8, 8, 52  # Moonshine base's decoder
START, END = 1, 2
MAX_TOKENS_PER_S = 6
_FILES = ("encoder_model", "decoder_model_merged")


def _packaged() -> Path | None:
    spec = importlib.util.find_spec("moonshine_cpp")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(location) / "models" / "base-en"
        if folder.is_dir():
            return folder
    return None


def _model_file(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / f"{stem}.ort", folder / f"{stem}.onnx") if p.is_file()), None)


def read_tokens(path: Path) -> list[bytes]:
    """The token table of a ``tokenizer.bin``."""
    data = path.read_bytes()
    tokens, i = [], 0
    while i < len(data):
        size = data[i]
        i += 1
        if size >= 128:
            size = (size & 127) | (data[i] << 7)
            i += 1
        tokens.append(data[i:i + size])
        i += size
    return tokens


class Moonshine(Recognizer):
    name = "moonshine"
    languages = ("en",)

    def __init__(self, folder: str | None) -> None:
        super().__init__("moonshine" + (f":{folder}" if folder else ""))
        self.folder = Path(folder) if folder else None
        self._encoder: Any = None
        self._decoder: Any = None
        self._tokens: list[bytes] = []

    def _where(self) -> Path:
        if self.folder is not None:
            return self.folder
        packaged = _packaged()
        if packaged is None:
            raise UsageError("--asr moonshine needs Moonshine base's model files, and the moonshine-cpp package "
                             "is not installed", hint="pip install moonshine-cpp (or give moonshine:DIR, a folder "
                             "with encoder_model.ort, decoder_model_merged.ort and tokenizer.bin)")
        return packaged

    def check(self) -> None:
        folder = self._where()
        if not folder.is_dir():
            raise UsageError(f"--asr {self.spec}: model folder {folder} does not exist",
                             hint="give a folder with encoder_model.ort, decoder_model_merged.ort and tokenizer.bin")
        missing = [f"{stem}.ort" for stem in _FILES if _model_file(folder, stem) is None]
        if not (folder / "tokenizer.bin").is_file():
            missing.append("tokenizer.bin")
        if missing:
            raise UsageError(f"--asr {self.spec}: {folder} lacks {', '.join(missing)}",
                             hint="Moonshine base's files as the moonshine-cpp wheel ships them (models/base-en)")
        if importlib.util.find_spec("onnxruntime") is None:
            raise UsageError("--asr moonshine runs in onnxruntime, which is not installed", hint="pip install onnxruntime")

    def _load(self) -> None:
        import onnxruntime

        self.check()
        folder = self._where()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self._encoder = onnxruntime.InferenceSession(str(_model_file(folder, _FILES[0])), options, providers=providers)
        self._decoder = onnxruntime.InferenceSession(str(_model_file(folder, _FILES[1])), options, providers=providers)
        self._tokens = read_tokens(folder / "tokenizer.bin")

    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str) -> str:
        if self._encoder is None:
            self._load()
        if sample_rate != RATE:
            import soxr

            audio = soxr.resample(np.asarray(audio, np.float32), sample_rate, RATE)
        audio = np.nan_to_num(np.asarray(audio, np.float32))
        if audio.size < RATE // 10:  # Moonshine takes 0.1-64 s
            return ""
        pieces = [audio[i:i + 60 * RATE] for i in range(0, audio.size, 60 * RATE)]
        return " ".join(filter(None, (self._one(piece) for piece in pieces if piece.size >= RATE // 10)))

    def _one(self, audio: np.ndarray) -> str:
        hidden = self._encoder.run(None, {"input_values": audio[None]})[0]
        past = {f"past_key_values.{layer}.{part}.{kv}": np.zeros((1, HEADS, 0, HEAD_DIM), np.float32)
                for layer in range(LAYERS) for part in ("decoder", "encoder") for kv in ("key", "value")}
        tokens: list[int] = []
        ids = np.array([[START]], np.int64)
        for step in range(int(audio.size / RATE * MAX_TOKENS_PER_S) + 1):
            logits, *present = self._decoder.run(None, dict(input_ids=ids, encoder_hidden_states=hidden,
                                                            use_cache_branch=np.array([step > 0]), **past))
            token = int(logits[0, -1].argmax())
            if token == END:
                break
            tokens.append(token)
            ids = np.array([[token]], np.int64)
            for key, value in zip(past, present):
                if step == 0 or ".decoder." in key:  # the encoder's keys and values are computed once
                    past[key] = value
        text = b"".join(self._tokens[t] for t in tokens if t < len(self._tokens) and t > END)
        return text.decode("utf-8", "replace").replace("\u2581", " ").strip()
