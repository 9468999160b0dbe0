"""Errors a user can act on, each with the exit code that tells CI what kind of failure it was."""

from __future__ import annotations

# Exit codes (documented in README.md): keep them stable, CI scripts branch on them.
EXIT_OK = 0
EXIT_RUNTIME = 1  # the run could not complete: server unreachable, died, crashed
EXIT_USAGE = 2  # bad command line, scenario, manifest or configuration
EXIT_SLO_FAILED = 3  # the run completed but an objective was missed
EXIT_INTERRUPTED = 130  # Ctrl-C before anything was measured


class CvloadError(Exception):
    """An error whose message is meant for the user as is (no traceback)."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(CvloadError):
    """Bad input from the user: a flag, a scenario file, a manifest, a profile."""

    exit_code = EXIT_USAGE


class ServerError(CvloadError):
    """The server could not be reached, started, or failed in a way the run cannot survive."""

    exit_code = EXIT_RUNTIME
