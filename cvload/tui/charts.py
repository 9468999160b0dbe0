"""Text charts (sparklines, histogram bars) as Rich ``Text``: cheap to draw and identical in SVG snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text

SPARKS = "▁▂▃▄▅▆▇█"
EIGHTHS = " ▏▎▍▌▋▊▉█"


def sparkline(vals: Sequence[float | None], width: int, *, floor: float | None = 0.0,
              style: str = "cyan") -> Text:
    """The last ``width`` values as one line of block characters; gaps (None) stay blank."""
    tail = list(vals)[-width:] if width > 0 else []
    known = [v for v in tail if v is not None]
    text = Text(" " * (width - len(tail)))
    if not known:
        text.append(" " * len(tail))
        return text
    lo = min(known) if floor is None else min(floor, min(known))
    hi = max(known)
    span = hi - lo
    chars = []
    for v in tail:
        if v is None:
            chars.append(" ")
        elif span <= 0:
            chars.append(SPARKS[0] if hi == 0 else SPARKS[len(SPARKS) // 2])
        else:
            chars.append(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * (len(SPARKS) - 1) + 0.5))])
    text.append("".join(chars), style=style)
    return text


def outage_band(seconds: Sequence[int], outages: Sequence[dict[str, Any]], width: int, *,
                now: float) -> Text | None:
    """A line under a per-second series: red where a second overlaps an outage (``start_s``/``end_s``; an end of
    None: still lost); None when no shown second does."""
    tail = list(seconds)[-width:] if width > 0 else []
    spans = [(o["start_s"], o["end_s"] if o["end_s"] is not None else now + 1) for o in outages]
    marks = ["▀" if any(start < s + 1 and s < end for start, end in spans) else " " for s in tail]
    if "▀" not in marks:
        return None
    text = Text(" " * (width - len(tail)))
    text.append("".join(marks), style="bold red")
    return text


def bar(count: float, peak: float, width: int) -> str:
    """A horizontal bar in eighths of a cell, ``width`` cells for ``peak``."""
    if peak <= 0 or count <= 0 or width <= 0:
        return ""
    eighths = max(1, round(count / peak * width * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + (EIGHTHS[part] if part else "")


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.1f}"


def fmt_num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
