"""A report as data: sections of figures, tables and notes, rendered by html.py (everything) and markdown.py
(the tables and notes, for pasting into a pull request)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Figure:
    title: str
    png: bytes  # drawn by figures.py; the HTML inlines it as base64
    caption: str = ""


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    marked: set[int] = field(default_factory=set)  # rows to stand out (a failed objective, a differing setting)
    text: bool = False  # cells are words (settings), aligned left; else numbers, aligned right


@dataclass
class Section:
    title: str
    items: list[Figure | Table | str] = field(default_factory=list)  # a str is a paragraph of text


@dataclass
class Report:
    title: str
    inputs: list[tuple[str, str, str]]  # (label, path, colour) of each run or sweep, in overlay order
    lines: list[str]  # headline sentences under the title
    sections: list[Section]
    generated: str  # "cvload 0.1.0, 2026-11-27 16:00 UTC"

    def figures(self) -> list[Figure]:
        return [i for s in self.sections for i in s.items if isinstance(i, Figure)]
