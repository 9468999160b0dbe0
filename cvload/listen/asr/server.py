"""``cvload asr-serve``: any local recogniser behind the OpenAI transcription API (``POST
/v1/audio/transcriptions``), so content checks can run on another host (``--asr openai:http://HOST:PORT``).

A real HTTP server (aiohttp.web): multipart ``file`` (WAV, FLAC... anything soundfile reads), ``model`` (must be
the served name; OpenAI's own answer to an unknown model is 404), ``language``, ``response_format`` (json or
text). Transcriptions run in a thread pool of ``workers`` threads, each with its own recogniser (onnxruntime
releases the interpreter lock while it computes).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cvload.listen.asr import make_recognizer

ROUTE = "/v1/audio/transcriptions"


class TranscriptionApp:
    def __init__(self, spec: str, *, model: str = "whisper-1", workers: int = 1) -> None:
        self.spec = spec
        self.model = model
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cvload-asr")
        make_recognizer(spec).check()

    def _recognizer(self) -> Any:
        recognizer = getattr(self._local, "recognizer", None)
        if recognizer is None:
            recognizer = self._local.recognizer = make_recognizer(self.spec)
        return recognizer

    def _transcribe(self, data: bytes, language: str) -> str:
        import soundfile

        audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        return str(self._recognizer().transcribe(np.asarray(audio, np.float32), rate, language))

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        fields: dict[str, Any] = {}
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                fields[part.name] = await part.read() if part.name == "file" else await part.text()
        except Exception as exc:  # noqa: BLE001 - a malformed upload is the client's error
            return web.json_response({"error": {"message": f"unreadable form: {exc}"}}, status=400)
        model = fields.get("model") or self.model
        if model != self.model:
            return web.json_response({"error": {"message": f"model {model!r} not found; this server serves "
                                                           f"{self.model!r}", "code": "model_not_found"}}, status=404)
        if "file" not in fields:
            return web.json_response({"error": {"message": "no file in the form"}}, status=400)
        language = str(fields.get("language") or "en")
        try:
            text = await asyncio.get_running_loop().run_in_executor(self._pool, self._transcribe, fields["file"],
                                                                    language)
        except Exception as exc:  # noqa: BLE001 - unreadable audio or a failing recogniser: the client hears why
            return web.json_response({"error": {"message": f"{type(exc).__name__}: {exc}"}}, status=400)
        if fields.get("response_format") == "text":
            return web.Response(text=text)
        return web.json_response({"text": text})

    def app(self) -> Any:
        from aiohttp import web

        application = web.Application(client_max_size=256 << 20)
        application.router.add_post(ROUTE, self.handle)
        return application


def serve(spec: str, host: str, port: int, *, model: str, workers: int) -> None:
    """Serve until killed; the line on stdout is printed once the port accepts connections."""
    from aiohttp import web

    app = TranscriptionApp(spec, model=model, workers=workers)

    async def main() -> None:
        runner = web.AppRunner(app.app())
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1] if runner.addresses else port  # --port 0: the one the system picked
        print(f"cvload asr-serve: {spec} as model {model!r} at http://{host}:{bound}{ROUTE}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
