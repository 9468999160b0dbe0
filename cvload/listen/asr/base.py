"""The interface every speech recogniser sits behind: check (cheap, before load), transcribe (heavy, elsewhere)."""

from __future__ import annotations

import numpy as np


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``moonshine`` -> ('moonshine', None); ``whisper:base.en`` -> ('whisper', 'base.en'); URLs keep their colons."""
    name, _, arg = str(spec).strip().partition(":")
    return name.strip().lower(), (arg.strip() or None)


class Recognizer:
    """One ASR backend. ``languages``: what it transcribes (``en``, ``zh``); ``spec``: how to make it again
    (in a helper process, from ``cvload.listen.asr.make_recognizer``)."""

    name = "?"
    languages: tuple[str, ...] = ()

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def check(self) -> None:
        """Raise a UsageError (exit 2) when it cannot work: files missing, package absent, server down or refusing.
        Cheap: runs in the measuring process before any load."""

    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str) -> str:
        """The words in ``audio`` (mono float32)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.spec
