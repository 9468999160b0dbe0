"""``cvload asr-serve --asr NAME[:MODEL] [--port 8000]``: a local recogniser as an OpenAI transcription server."""

from __future__ import annotations

import argparse

from cvload.errors import EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "asr-serve", help="serve a recogniser as POST /v1/audio/transcriptions (for --asr openai:URL elsewhere)",
        description="Serve a local speech recogniser over the OpenAI transcription API, so `cvload run "
                    "--check-content --asr openai:http://HOST:PORT` moves the recognising off the load host.",
    )
    p.add_argument("--asr", default="moonshine", metavar="NAME[:MODEL]",
                   help="moonshine (default), whisper[:MODEL], paraformer:DIR, sensevoice:DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: a free port (the line printed names it)")
    p.add_argument("--model-name", default="whisper-1", help="the model name clients must ask for")
    p.add_argument("--workers", type=int, default=1, help="transcriptions at once (threads)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cvload.listen.asr.server import serve

    serve(args.asr, args.host, args.port, model=args.model_name, workers=args.workers)
    return EXIT_OK
