"""The report's Markdown twin, for pasting into a pull request: the headline, every table and note, and a list
of the figures, which stay in the HTML file (a pull request does not show images inlined as data)."""

from __future__ import annotations

from cvload.report.document import Figure, Report, Table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(table: Table, heading: bool = True) -> list[str]:
    out = [f"**{table.title}**", ""] if heading else []
    out += ["| " + " | ".join(_cell(h) for h in table.header) + " |",
           "|" + "|".join(":--" if n == 0 else "--:" for n in range(len(table.header))) + "|"]
    for n, row in enumerate(table.rows):
        cells = [_cell(c) for c in row]
        if n in table.marked:
            cells = [f"**{c}**" if c else c for c in cells]
        out.append("| " + " | ".join(cells) + " |")
    if table.note:
        out += ["", f"_{table.note}_"]
    return out + [""]


def render(report: Report, html_name: str) -> str:
    out = [f"## {report.title}", ""]
    out += [f"- **{label}** `{path}`" for label, path, _c in report.inputs]
    out += ["", *report.lines, ""]
    figures: list[str] = []
    for section in report.sections:
        body: list[str] = []
        for item in section.items:
            if isinstance(item, Table):
                body += _table(item, heading=item.title != section.title)
            elif isinstance(item, Figure):
                figures.append(item.title)
            else:
                body += [item, ""]
        if body:
            out += [f"### {section.title}", "", *body]
    if figures:
        out += [f"Figures in `{html_name}`: " + "; ".join(figures) + ".", ""]
    out.append(f"<sub>{report.generated}</sub>")
    return "\n".join(out) + "\n"
