"""The ``cvload`` command: subcommands register themselves; user errors become messages and exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cvload import __version__
from cvload.errors import EXIT_INTERRUPTED, EXIT_USAGE, CvloadError

COMMANDS = ("serve", "run", "tui", "bootstrap")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep the message one line, no traceback
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"cvload: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(prog="cvload", description="Load tests and live latency views for CosyVoice TTS servers.")
    parser.add_argument("--version", action="version", version=f"cvload {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"cvload.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cvload.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CvloadError as exc:
        print(f"cvload: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cvload: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
