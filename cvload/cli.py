"""The ``cvload`` command: subcommands register themselves; user errors become messages and exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import NoReturn

from cvload import __version__
from cvload.errors import EXIT_INTERRUPTED, EXIT_USAGE, CvloadError

# cvload.commands.<name>; others come from the entry-point group below
COMMANDS = ("serve", "run", "tui", "sweep", "tune", "report", "compare", "check", "asr_serve")
ENTRY_POINT_GROUP = "cvload.commands"  # e.g. ``bootstrap`` from server_bootstrap, which builds on cvload


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 too; keep the message one line, no traceback
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def dispatch(args: argparse.Namespace, *, name: str = "cvload", interrupted: str = "interrupted") -> int:
    """Run the chosen command: a CvloadError becomes its message and exit code, Ctrl-C exit 130."""
    try:
        return int(args.func(args) or 0)
    except CvloadError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{name}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = Parser(prog="cvload", description="Load tests and live latency views for CosyVoice TTS servers.")
    parser.add_argument("--version", action="version", version=f"cvload {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:  # a built-in command that fails to import is a bug to see, never a missing command
        importlib.import_module(f"cvload.commands.{name}").register(sub)
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
