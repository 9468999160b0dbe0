"""``cvload check RESULTS --asr NAME[:MODEL|URL]``: score a finished run's saved audio (content.jsonl, summary)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvload.errors import EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    from cvload.listen.content import DEFAULT_MAX_ERROR

    p = sub.add_parser(
        "check", help="transcribe a finished run's saved audio and score the words (content.jsonl, summary)",
        description="Transcribe each response a run saved (--save-audio) with an ASR backend, score it against its "
                    "text (WER for English, CER for Chinese) and write content.jsonl; records and summary.json are "
                    "updated, so report and compare show the content error. Exit 2 on bad usage (no saved audio, "
                    "unknown backend, missing model, server down).",
    )
    p.add_argument("folders", nargs="+", metavar="RESULTS", help="results folders of runs (or sweeps) with audio/")
    p.add_argument("--asr", default="moonshine", metavar="NAME[:MODEL|URL]",
                   help="moonshine (default), whisper[:MODEL], paraformer:DIR, sensevoice:DIR, openai:URL[#MODEL]")
    p.add_argument("--max-content-error", type=float, default=DEFAULT_MAX_ERROR, metavar="SHARE",
                   help=f"above this error rate a request gets content_mismatch (default {DEFAULT_MAX_ERROR:g})")
    p.add_argument("--workers", "--jobs", type=int, default=None, metavar="N",
                   help="recogniser processes, one request each at a time (default: every CPU)")
    p.add_argument("--language", choices=("en", "zh"), default=None,
                   help="every item's language (default: from each text's script)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cvload.listen.check import check_folder, run_folders, throughput

    folders = [folder for given in args.folders for folder in run_folders(Path(given))]

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r  {done}/{total} checked", end="", file=sys.stderr, flush=True)

    for folder in folders:
        section = check_folder(folder, args.asr, max_error=args.max_content_error, workers=args.workers,
                               language=args.language, progress=progress)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        print(f"{folder}: {section['checked']} checked, {section['mismatches']} content_mismatch "
              f"(> {section['max_error']:.0%}), {throughput(section)}, {section['wall_s']:.1f} s -> content.jsonl")
    return EXIT_OK
