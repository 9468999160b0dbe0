"""``cvload report RESULTS... [-o report.html]``: figures and tables of runs or sweeps in one self-contained HTML
file, with a Markdown twin for pull requests. Several folders are overlaid, one colour each, the first the base
of the deltas. The drawing code (matplotlib) loads only when the command runs."""

from __future__ import annotations

import argparse
import sys

from cvload.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="an HTML report (and Markdown twin) of one or more results folders",
        description="Write one self-contained HTML file (figures inline, no network) and a Markdown twin beside it "
                    "for pasting into a pull request, from results folders of `cvload run` or `cvload sweep`. "
                    "Several folders are overlaid, one colour each, with a table of deltas against the first. "
                    "Exit codes: 0 written, 2 a folder that is not a results folder, or results that cannot be "
                    "shown together (runs with sweeps, streaming with offline).",
    )
    p.add_argument("results", nargs="+", metavar="RESULTS", help="results folder of a run or a sweep")
    p.add_argument("-o", "--out", default=None, metavar="FILE",
                   help="report file: FILE.html and its Markdown twin FILE.md (default: report.html and report.md "
                        "in the results folder, or here for several)")
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    try:
        from cvload.report.build import write_report
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib" and not (exc.name or "").startswith("matplotlib."):
            raise
        raise UsageError("cvload report draws its figures with matplotlib, which is not installed",
                         hint="pip install 'cvload[report]'") from None
    html_path, md_path = write_report(args.results, args.out)
    print(f"report: {html_path}  (Markdown twin: {md_path})", file=sys.stderr)
    return 0
