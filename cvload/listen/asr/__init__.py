"""Speech recognisers behind one interface (``cvload.listen.asr.base.Recognizer``), chosen by ``--asr NAME[:MODEL]``.

``moonshine`` (English, the default: Moonshine base's ONNX files from the ``moonshine-cpp`` wheel, run in
onnxruntime), ``whisper`` (faster-whisper: a model name or a local folder), ``paraformer`` and ``sensevoice``
(Chinese, sherpa-onnx: a model folder), ``openai`` (any ``/v1/audio/transcriptions`` server: ``openai:URL``).
Recognisers run in helper processes (cvload.listen.live) or after a run (``cvload check``), never in the measuring
process: only ``check()`` (files there, server answering) runs in it, before any load.
"""

from __future__ import annotations

from cvload.errors import UsageError
from cvload.listen.asr.base import Recognizer, parse_spec

BACKENDS = ("moonshine", "whisper", "paraformer", "sensevoice", "openai")


def make_recognizer(spec: str) -> Recognizer:
    """``NAME[:MODEL|URL]`` -> its recogniser (not loaded yet). Unknown names are a UsageError listing them."""
    name, arg = parse_spec(spec)
    if name == "moonshine":
        from cvload.listen.asr.moonshine import Moonshine

        return Moonshine(arg)
    if name == "whisper":
        from cvload.listen.asr.whisper import Whisper

        return Whisper(arg)
    if name in ("paraformer", "sensevoice"):
        from cvload.listen.asr.sherpa import SherpaOffline

        return SherpaOffline(name, arg)
    if name == "openai":
        from cvload.listen.asr.openai_client import OpenAITranscriber

        return OpenAITranscriber(arg)
    raise UsageError(f"--asr {spec!r}: unknown speech recogniser {name!r}",
                     hint="use one of " + ", ".join(BACKENDS) + " (e.g. moonshine, whisper:base.en, "
                     "paraformer:/models/paraformer-zh, openai:http://host:8000)")


__all__ = ["BACKENDS", "Recognizer", "make_recognizer"]
