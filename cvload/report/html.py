"""The report as one self-contained HTML file: figures inlined as base64 PNG, styles inline, no script, and a
Content-Security-Policy that forbids the page to fetch anything, so it opens the same offline, as a CI artifact
or attached to a ticket."""

from __future__ import annotations

import base64
from html import escape

from cvload.report.document import Figure, Report, Table

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0;
       background: #f6f7f9; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 17px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e3e3e3; }
h3 { font-size: 14px; margin: 16px 0 6px; }
p.meta { color: #666; margin: 0 0 10px; font-size: 12px; }
ul.inputs { list-style: none; padding: 0; margin: 8px 0; }
ul.inputs li { margin: 2px 0; font-size: 13px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px;
          vertical-align: -1px; }
code { font-size: 12px; color: #555; }
figure { margin: 14px 0 20px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 12.5px; margin-top: 4px; }
table { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 4px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 7px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; white-space: normal; }
th { background: #f2f4f7; font-weight: 600; }
table.text td, table.text th { text-align: left; white-space: normal; }
tr.marked td { background: #fff3f0; font-weight: 600; }
.wide { overflow-x: auto; }
p.note { color: #666; font-size: 12px; margin: 2px 0 14px; }
"""


def _table(table: Table, heading: bool = True) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
    body = []
    for n, row in enumerate(table.rows):
        cls = ' class="marked"' if n in table.marked else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>")
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    title = f"<h3>{escape(table.title)}</h3>" if heading else ""
    cls = ' class="text"' if table.text else ""
    return (f"{title}<div class=\"wide\"><table{cls}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>{note}")


def _figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f"<figure><h3>{escape(fig.title)}</h3><img alt=\"{escape(fig.title)}\" "
            f"src=\"data:image/png;base64,{data}\"><figcaption>{escape(fig.caption)}</figcaption></figure>")


def render(report: Report) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(report.title)}</title><style>{STYLE}</style></head><body><main>",
        f"<h1>{escape(report.title)}</h1>",
        f'<p class="meta">{escape(report.generated)}</p>',
        '<ul class="inputs">' + "".join(
            f'<li><span class="swatch" style="background:{c}"></span>{escape(label)} <code>{escape(path)}</code></li>'
            for label, path, c in report.inputs) + "</ul>",
        *(f"<p>{escape(line)}</p>" for line in report.lines),
    ]
    for section in report.sections:
        parts.append(f"<section><h2>{escape(section.title)}</h2>")
        for item in section.items:
            if isinstance(item, Figure):
                parts.append(_figure(item))
            elif isinstance(item, Table):
                parts.append(_table(item, heading=item.title != section.title))
            else:
                parts.append(f"<p>{escape(item)}</p>")
        parts.append("</section>")
    parts.append("</main></body></html>\n")
    return "\n".join(parts)
