"""Findings: the lines of a diagnosis report, from preflight (before a deployment) and doctor (on a running one).

A finding names what was checked, how it went, what was seen and, when it went wrong, the likely cause and the
fix; both reports print through ``format_findings`` so they read the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

OK, WARN, FAIL, INFO, SKIP = "ok", "warn", "FAIL", "info", "skip"  # FAIL: the deployment cannot work


@dataclass
class Finding:
    name: str
    status: str  # OK | WARN | FAIL | INFO | SKIP
    detail: str
    cause: str = ""
    fix: str = ""


def ok(name: str, detail: str) -> Finding:
    return Finding(name, OK, detail)


def fail(name: str, detail: str, fix: str, cause: str = "") -> Finding:
    return Finding(name, FAIL, detail, cause, fix)


def warn(name: str, detail: str, fix: str, cause: str = "") -> Finding:
    return Finding(name, WARN, detail, cause, fix)


def skip(name: str, detail: str) -> Finding:
    return Finding(name, SKIP, detail)


def failures(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == FAIL]


def format_findings(findings: list[Finding], *, indent: str = "  ") -> str:
    """One aligned line per finding; cause and fix below the ones that failed or warn."""
    width = max((len(f.name) for f in findings), default=4)
    lines = []
    below = f"{indent}{'':<4}  {'':<{width}}  "
    for f in findings:
        lines.append(f"{indent}{f.status:<4}  {f.name:<{width}}  {f.detail}")
        if f.status in (FAIL, WARN):
            if f.cause:
                lines.append(f"{below}cause: {f.cause}")
            if f.fix:
                lines.append(f"{below}fix:   {f.fix}")
    return "\n".join(lines)
