"""Any OpenAI-style transcription server (``POST {base}/v1/audio/transcriptions``, multipart: file, model,
language; JSON ``{"text": ...}`` back): faster-whisper-server, vLLM, FunASR's server or ``cvload asr-serve``. The
recognising then costs the load host nothing but a WAV upload. ``openai:URL`` with an optional ``#MODEL``."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import uuid

import numpy as np

from cvload.errors import UsageError
from cvload.listen.asr.base import Recognizer

TIMEOUT_S = 60.0
PATH = "/v1/audio/transcriptions"


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(np.nan_to_num(np.asarray(audio, np.float32)), -1, 1), sample_rate,
                    format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class OpenAITranscriber(Recognizer):
    name = "openai"
    languages = ("en", "zh")  # the server's model decides; it is asked for the item's language

    def __init__(self, arg: str | None) -> None:
        super().__init__("openai" + (f":{arg}" if arg else ""))
        if not arg:
            raise UsageError("--asr openai needs the server: openai:http://HOST:PORT (optionally #MODEL)",
                             hint="e.g. --asr openai:http://127.0.0.1:8000#whisper-1")
        url, _, model = arg.partition("#")
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.url = url if url.endswith(PATH) else url + PATH
        self.model = model or "whisper-1"

    def _post(self, audio: np.ndarray, sample_rate: int, language: str) -> str:
        boundary = uuid.uuid4().hex
        parts = []
        for key, value in (("model", self.model), ("language", language), ("response_format", "json")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="speech.wav"\r\n'
                     "Content-Type: audio/wav\r\n\r\n".encode() + wav_bytes(audio, sample_rate) + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        request = urllib.request.Request(self.url, data=b"".join(parts), method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - the user's server
            body = response.read()
        try:
            data = json.loads(body)
        except ValueError:
            return body.decode("utf-8", "replace").strip()  # response_format text
        return str(data.get("text", "")).strip() if isinstance(data, dict) else ""

    def check(self) -> None:
        """One real transcription of half a second of silence: down, refusing or not speaking the API fails here."""
        try:
            self._post(np.zeros(8000, np.float32), 16000, "en")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace")
            raise UsageError(f"--asr {self.spec}: the transcription server refused a request: HTTP {exc.code} "
                             f"{detail}", hint=f"check that {self.url} is an OpenAI-style transcription endpoint "
                             "and that the model name (after #) is one it serves") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UsageError(f"--asr {self.spec}: cannot reach the transcription server at {self.url} ({reason})",
                             hint="start it (e.g. `cvload asr-serve --asr moonshine --port 8000`) or fix the "
                             "address") from None

    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str) -> str:
        return self._post(audio, sample_rate, language)
