"""The dashboard's panels: each draws one part of a ``LiveSnapshot`` (or the telemetry) as Rich text.

Panels only format numbers computed elsewhere (``cvload.measure.live_window`` from ``cvload.measure.metrics``; telemetry from
``cvload.telemetry``); they never compute a metric of their own.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text
from textual.widgets import Static

from cvload.measure.barge_in_summary import line as barge_in_line
from cvload.measure.live_window import LiveSnapshot, MetricView, finished_at
from cvload.measure.loop_health import client_text
from cvload.measure.metrics import BY_NAME, values
from cvload.results.tune_file import cell_text
from cvload.tui.charts import bar, fmt_ms, fmt_num, fmt_share, outage_band, sparkline
from cvload.tui.source import Status

PHASE_STYLES = {"running": "bold black on green", "paused": "bold black on yellow",
                "stopping": "bold black on yellow", "finishing": "bold black on yellow",
                "starting": "bold black on cyan", "finished": "bold white on blue", "failed": "bold white on red",
                "replay": "bold white on magenta"}
VERDICT_MARKS = {"pass": ("✓", "green"), "fail": ("✗", "bold red"), "no_data": ("?", "yellow")}
STAT_COLUMNS = ("p50", "p90", "p99", "max")


class Panel(Static):
    """A bordered panel whose border title is its name (the names users and tests look for)."""

    def __init__(self, title: str, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.border_title = title
        self.shown: RenderableType = ""
        self._key: object = None

    def update(self, content: Any = "", *, layout: bool = False) -> None:
        """Repaint only when the content changed, and never re-layout the screen (panels have fixed sizes)."""
        key = _content_key(content)
        if key is not None and key == self._key:
            return
        self._key = key
        self.shown = content
        super().update(content, layout=layout)

    def plain(self) -> str:
        """What the panel shows, as plain text (for tests and tools)."""
        console = Console(width=self.width, file=io.StringIO(), color_system=None, legacy_windows=False)
        with console.capture() as capture:
            console.print(self.shown)
        return capture.get()

    @property
    def width(self) -> int:
        return max(16, self.content_size.width or 40)


def _content_key(content: Any) -> object:
    """A comparable fingerprint of Text / Group-of-Text content (None: unknown, always repaint)."""
    if isinstance(content, Text):
        return (content.plain, tuple((sp.start, sp.end, str(sp.style)) for sp in content.spans), str(content.style))
    if isinstance(content, Group):
        keys = tuple(_content_key(r) for r in content.renderables)
        return None if any(k is None for k in keys) else keys
    if isinstance(content, str):
        return content
    return None


# ---- header ----------------------------------------------------------------------------------------------------
def measured_text(value: float, unit: str) -> str:
    """An objective's measured value as its objective is written: 1340ms, 675ms, 7.5%, 0.42 (never 1.34e+03)."""
    return (f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}") + unit


def header_text(status: Status, target: str, scenario: str | None, client: dict[str, Any] | None = None,
                content: dict[str, Any] | None = None) -> Text:
    text = Text()
    text.append(f" {status.phase.upper()} ", style=PHASE_STYLES.get(status.phase, "reverse"))
    text.append("  cvload ", style="bold")
    text.append(target)
    if scenario:
        text.append(f"   scenario {scenario}", style="dim")
    if client_text(client):  # the measuring process's own timing error (cvload.measure.loop_health)
        text.append("   " + client_text(client), style="bold yellow" if (client or {}).get("warnings") else "dim")
    if listening_text(content):  # --check-content: the checker's sample and backlog
        text.append("   " + listening_text(content), style="dim")
    text.append("\n")
    planned = f"/{status.planned}" if status.planned else ""
    text.append(f" elapsed {status.elapsed:6.1f}s   done {status.done}{planned}   in flight {status.inflight}   "
                f"{status.load}")
    if status.remaining_s is not None:
        minutes, seconds = divmod(int(status.remaining_s + 0.5), 60)
        text.append(f"   ends in {minutes}:{seconds:02d} (or q)", style="dim")
    if status.objectives:
        text.append("   objectives ")
        for v in status.objectives:
            mark, style = VERDICT_MARKS.get(v.get("verdict", ""), ("·", "dim"))
            text.append(f"{v.get('objective', '?')} {mark}", style=style)
            measured = v.get("measured")
            text.append(f" ({measured_text(measured, v.get('unit') or '')})  "
                        if isinstance(measured, int | float) else "  ", style="dim")
    if status.message:
        text.append("\n ")
        text.append(status.message, style="italic")
    return text


# ---- latency -----------------------------------------------------------------------------------------------------
def stats_lines(view: MetricView, unit: str, width: int = 80) -> Text:
    """A small now/run table as plain text (Rich tables cost too much to lay out five times a second); as many
    statistics as fit the width, p50 and p99 first."""
    fmt = fmt_ms if unit == "ms" else fmt_num
    fits = max(2, (width - 11) // 8)
    columns = [k for k in STAT_COLUMNS if k in ("p50", "p99", "p90", "max")[:fits]]
    head = f"{unit:<4}" + "".join(f"{k:>8}" for k in columns) + f"{'n':>7}"
    text = Text(head, style="dim")
    for label, s in (("now", view.now), ("run", view.run)):
        text.append("\n")
        text.append(f"{label:<4}", style="bold")
        text.append("".join(f"{fmt(s.get(k)):>8}" for k in columns))
        text.append(f"{s.get('count') or 0:>7}", style="dim")
    return text


def histogram_lines(edges: list[float], counts: list[int], width: int, *, unit: str) -> Text:
    text = Text()
    if not counts or not sum(counts):
        text.append("no data yet", style="dim")
        return text
    peak = max(counts)
    fmt = fmt_ms if unit == "ms" else fmt_num
    labels = [f"{fmt(lo)}-{fmt(hi)}" for lo, hi in zip(edges[:-1], edges[1:])]
    label_w = max(len(s) for s in labels)
    count_w = len(str(peak))
    bar_w = max(4, width - label_w - count_w - 3)
    for i, (label, count) in enumerate(zip(labels, counts)):
        if i:
            text.append("\n")
        text.append(label.rjust(label_w), style="dim")
        text.append(" ")
        text.append(bar(count, peak, bar_w).ljust(bar_w), style="cyan")
        text.append(" " + str(count).rjust(count_w))
    return text


class LatencyPanel(Panel):
    """p50/p90/p99 now and over the run, the histogram since the last reset, p50 per second."""

    def __init__(self, title: str, metric: str, **kwargs: Any) -> None:
        super().__init__(title, **kwargs)
        self.metric = metric

    def show(self, snap: LiveSnapshot) -> None:
        view = snap.metrics[self.metric]
        unit = BY_NAME[self.metric].unit
        w = self.width
        series = Text("p50/s ", style="dim")
        series.append_text(sparkline(view.series, w - 6))
        self.update(Group(stats_lines(view, unit, w),
                          histogram_lines(view.histogram.edges, view.histogram.counts, w, unit=unit),
                          series))


# ---- RTF ---------------------------------------------------------------------------------------------------------
def rtf_lines(edges: list[float], counts: list[int], width: int) -> Text:
    """The RTF histogram with the real-time line (RTF 1.0) drawn where it falls; bins above it in red."""
    text = Text()
    if not counts or not sum(counts):
        text.append("no data yet", style="dim")
        return text
    nonzero = [i for i, c in enumerate(counts) if c]
    realtime = edges.index(1.0) if 1.0 in edges else len(counts)
    first = max(0, min(nonzero[0], realtime) - 1 if nonzero[0] > 0 else 0)
    last = max(nonzero[-1], realtime - 1)
    peak = max(counts)
    labels = {i: f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(first, last + 1)}
    label_w = max(len(s) for s in labels.values())
    count_w = len(str(peak))
    bar_w = max(4, width - label_w - count_w - 3)
    lines = []
    for i in range(first, last + 1):
        if i == realtime:
            lines.append(Text("─" * max(0, (width - 18) // 2) + " real time 1.0 " +
                              "─" * max(0, (width - 18) // 2), style="bold red"))
        line = Text(labels[i].rjust(label_w), style="dim")
        line.append(" ")
        line.append(bar(counts[i], peak, bar_w).ljust(bar_w), style="red" if i >= realtime else "green")
        line.append(" " + str(counts[i]).rjust(count_w))
        lines.append(line)
    if realtime > last:
        lines.append(Text("─" * max(0, (width - 18) // 2) + " real time 1.0 " + "─" * max(0, (width - 18) // 2),
                          style="bold red"))
    return Text("\n").join(lines)


class RtfPanel(Panel):
    def show(self, snap: LiveSnapshot) -> None:
        view = snap.metrics["rtf"]
        w = self.width
        stalls = snap.stalls_run
        info = Text()
        info.append("slower than real time ")
        info.append(f"now {fmt_share(snap.slower_share_now)}  run {fmt_share(snap.slower_share_run)}",
                    style="bold red" if (snap.slower_share_now or 0) > 0 else "bold")
        info.append("\nplayback stalls ")
        info.append(f"{stalls['count']:.0f} in {stalls['requests']:.0f} requests, {stalls['seconds']:.2f} s",
                    style="bold yellow" if stalls["count"] else "bold")
        self.update(Group(stats_lines(view, "", w), info, rtf_lines(snap.rtf_histogram.edges,
                                                                 snap.rtf_histogram.counts, w)))


# ---- throughput --------------------------------------------------------------------------------------------------
class ThroughputPanel(Panel):
    def show(self, snap: LiveSnapshot, outages: Sequence[dict[str, Any]] = (),
             summary: dict[str, Any] | None = None) -> None:
        w = self.width
        out = []
        complete = -2 if len(snap.seconds) > 1 else -1  # the running second is still filling
        for key, label, fmt in (("requests_per_s", "requests/s", "{:.1f}"), ("audio_s_per_s", "audio s/s",
                                                                             "{:.2f}")):
            series = snap.throughput_series[key]
            last = series[complete] if series else 0.0
            peak = max(series) if series else 0.0
            head = Text(f"{label:<11}", style="bold")
            head.append(f"last {fmt.format(last)}  peak {fmt.format(peak)}")
            shown = series[:-1] if len(series) > 1 else series
            out += [head, sparkline(shown, w, style="green")]
            if key == "requests_per_s" and outages:  # under the series: the seconds the server was lost
                band = outage_band(snap.seconds[:len(shown)], outages, w, now=snap.seconds[-1] if snap.seconds else 0)
                if band is not None:
                    out.append(band)
        c = snap.counts
        counts = f"done {c['done']}  ok {c['ok']}  failed {c['failed']}"
        counts += "".join(f"  {k.replace('_', ' ')} {c[k]}" for k in ("warmup", "cancelled", "barged_in")
                          if c.get(k))
        out.append(Text(counts, style="dim"))
        final = barge_in_line(summary) if summary else None
        if final is not None:  # the run's summary: the release from the server's trace where it has one
            out.append(Text(final, style="dim"))
        elif snap.barge_in is not None:  # --barge-in, live: the client's side (the server's is read at the end)
            b = snap.barge_in
            out.append(Text(f"barge-in: {b['abandoned']:.0f} abandoned, call closed p50 {b['close_p50_ms']:.1f} "
                            f"p95 {b['close_p95_ms']:.1f} ms after the abandon", style="dim"))
        self.update(Group(*out))


# ---- GPU and server stages ---------------------------------------------------------------------------------------
def _series(telemetry: Any) -> dict[str, list[tuple[float, float]]]:
    try:
        return telemetry.series()
    except RuntimeError:  # the sampler added a series while we copied: next tick
        return {}


def gpu_renderable(telemetry: Any, width: int) -> RenderableType:
    no_gpu = Text("no GPU metrics from this server", style="bold yellow")
    if telemetry is None:
        return Group(no_gpu, Text("(telemetry off)", style="dim"))
    series = _series(telemetry)
    devices: dict[str, dict[str, list[float]]] = {}
    for name, points in series.items():
        if name.startswith("gpu.devices."):
            uuid, _, fld = name[len("gpu.devices."):].rpartition(".")
            devices.setdefault(uuid, {})[fld] = [v for _, v in points]
    warnings = list(getattr(telemetry, "warnings", []) or [])
    if not devices:
        lines = [no_gpu]
        lines += [Text(w, style="dim") for w in warnings[-2:]]
        return Group(*lines)
    spark_w = max(6, width - 30)
    out = []
    for i, (uuid, fields) in enumerate(sorted(devices.items())):
        out.append(Text(f"GPU{i} {uuid[:16]}", style="bold"))
        util = fields.get("util", [])
        line = Text(" util  ")
        line.append_text(sparkline([u * 100 for u in util], spark_w, style="green"))
        line.append(f" {util[-1]:6.1%}" if util else "      -")
        out.append(line)
        used, total = fields.get("mem_used_bytes", []), fields.get("mem_total_bytes", [])
        line = Text(" mem   ")
        line.append_text(sparkline(used, spark_w, style="magenta"))
        line.append(f" {used[-1] / 2**30:.1f}" + (f"/{total[-1] / 2**30:.0f} GiB" if total else " GiB")
                    if used else "      -")
        out.append(line)
        power = fields.get("power_w", [])
        line = Text(" power ")
        line.append_text(sparkline(power, spark_w, style="yellow"))
        line.append(f" {power[-1]:.0f} W" if power else "      -")
        out.append(line)
    return Group(*out)


def stages_renderable(telemetry: Any, window_s: float, width: int = 60) -> RenderableType:
    rows: list[dict[str, Any]] = []
    if telemetry is not None:
        try:
            rows = telemetry.stage_breakdown(window_s)
        except Exception:  # noqa: BLE001 - a live view never fails on telemetry
            rows = []
    if not rows:
        return Text("no per-model statistics yet", style="dim")
    scope = getattr(telemetry, "stages_scope", None) or f"last {window_s:g} s"
    text = Text(f"mean ms per request, {scope}\n", style="dim")
    name_w = max(10, min(24, width - 35))
    text.append(f"{'model':<{name_w}}{'n':>6}{'queue':>7}{'infer':>7}{'request':>8}{'busy':>7}", style="bold")
    for r in rows:
        text.append(f"\n{str(r.get('model'))[:name_w]:<{name_w}}{r.get('count') or 0:>6}"
                    f"{fmt_ms(r.get('queue_ms')):>7}{fmt_ms(r.get('compute_infer_ms')):>7}"
                    f"{fmt_ms(r.get('request_ms')):>8}{fmt_share(r.get('busy_share')):>7}")
    return text


class GpuPanel(Panel):
    def show(self, telemetry: Any) -> None:
        self.update(gpu_renderable(telemetry, self.width))


class StagesPanel(Panel):
    def show(self, telemetry: Any, window_s: float) -> None:
        self.update(stages_renderable(telemetry, window_s, self.width))


# ---- errors and recent requests ----------------------------------------------------------------------------------
class ErrorsPanel(Panel):
    def show(self, snap: LiveSnapshot) -> None:
        c = snap.counts
        rate = c["failed"] / c["measured"] if c["measured"] else 0.0
        head = Text(f"failed {c['failed']} of {c['measured']} ({rate:.1%})",
                    style="bold red" if c["failed"] else "bold green")
        kinds = {k: v for k, v in snap.errors.items() if v}
        body = Text("  ".join(f"{k} {v}" for k, v in kinds.items()) if kinds else "no errors",
                    style="red" if kinds else "dim")
        latest = Text()
        w = self.width
        for i, (t, kind, message) in enumerate(reversed(snap.latest_errors)):
            if i:
                latest.append("\n")
            line = f"{t:7.1f}s {kind}: {message}"
            latest.append(line[: w], style="dim")
        self.update(Group(head, body, latest))


# ---- speech (docs/speech.md) ------------------------------------------------------------------------------------
def speech_lines(snap: LiveSnapshot, width: int, rows: int = 8) -> Text:
    """Onset and content over the run, the prebuffer a player needs, and the latest mismatches (expected | heard)."""
    speech = snap.speech
    audible = speech.get("first_audible_latency_ms") or {}
    content = speech.get("content_error_rate") or {}
    prebuffer = speech.get("required_prebuffer_ms") or {}
    text = Text()
    text.append("first audible  ", style="bold")
    text.append(f"p50 {fmt_ms(audible.get('p50'))}  p95 {fmt_ms(audible.get('p95'))} ms  ({audible.get('count') or 0})")
    text.append("\ncontent error  ", style="bold")
    if content.get("count"):
        text.append(f"p50 {content['p50']:.1%}  p95 {content['p95']:.1%}  ({content['count']} checked)")
    else:
        text.append("not checked", style="dim")
    text.append("\nmismatches     ", style="bold")
    text.append(str(snap.mismatches), style="bold red" if snap.mismatches else "green")
    text.append("\nprebuffer need ", style="bold")
    text.append(f"p95 {fmt_ms(prebuffer.get('p95'))}  p99 {fmt_ms(prebuffer.get('p99'))} ms")
    for expected, heard in list(reversed(snap.latest_mismatches))[: max(0, rows - 4)]:
        half = max(8, (width - 3) // 2)
        text.append("\n")
        text.append(expected[:half].ljust(half), style="dim")
        text.append(" | ")
        text.append((heard or "(nothing)")[:half], style="red")
    return text


class SpeechPanel(Panel):
    def show(self, snap: LiveSnapshot) -> None:
        rows = max(4, self.content_size.height or 8)
        self.update(speech_lines(snap, self.width, rows))


def listening_text(content: dict[str, Any] | None) -> str:
    """The header's word on the content checker: its sample and backlog (empty without --check-content)."""
    if not content:
        return ""
    backlog = content.get("backlog") or 0
    return (f"asr {content.get('asr')} {content.get('sampling')}, backlog {backlog}"
            + (f" ({content.get('backlog_audio_s', 0):.0f} s)" if backlog else "")
            + (f", {content['skipped']} skipped" if content.get("skipped") else ""))


RECENT_COLUMNS = (("#", 6), ("worker", 7), ("done at", 9), ("first ms", 10), ("second ms", 10),
                  ("total ms", 10), ("RTF", 8), ("audio s", 9), ("chunks", 7))


def recent_lines(snap: LiveSnapshot, rows: int) -> Text:
    text = Text("".join(f"{name:>{w}}" for name, w in RECENT_COLUMNS) + "  status", style="bold")
    metric = {n: BY_NAME[n] for n in ("first_chunk_latency_ms", "second_chunk_latency_ms", "total_latency_ms",
                                      "rtf")}
    widths = [w for _, w in RECENT_COLUMNS]
    for r in list(reversed(snap.recent))[:rows]:
        vals = {n: next(iter(values((r,), m)), None) for n, m in metric.items()}
        status = "ok" if r.ok else (r.error_kind or ",".join(r.flags))
        if r.warmup:
            status += " (warmup)"
        cells = (str(r.index), str(r.worker) if r.worker >= 0 else "-", f"{finished_at(r):.1f}s",
                 fmt_ms(vals["first_chunk_latency_ms"]), fmt_ms(vals["second_chunk_latency_ms"]),
                 fmt_ms(vals["total_latency_ms"]), fmt_num(vals["rtf"]), f"{r.audio_s:.2f}",
                 str(len(r.chunk_offsets)))
        text.append("\n")
        text.append("".join(f"{c:>{w}}" for c, w in zip(cells, widths)) + "  " + status,
                    style="" if r.ok else "yellow" if r.barged_in else "red")
    return text


class RecentPanel(Panel):
    def show(self, snap: LiveSnapshot) -> None:
        rows = max(1, (self.content_size.height or 8) - 1)
        self.update(recent_lines(snap, rows))


def sweep_lines(progress: dict[str, Any] | None, width: int) -> Text:
    """A sweep's levels against load: first the objectives and the capacity once known (the line a small panel
    still shows), then one row per level: first chunk p50 (█) and p95 (▒) as a bar with the first-chunk
    objectives as vertical lines (│), the numbers, the verdict and goodput; the capacity marked."""
    text = Text()
    if not progress:
        text.append("waiting for the first level ...", style="dim")
        return text
    unit = "streams" if progress["kind"] == "concurrency" else "req/s"
    levels = sorted(progress["levels"], key=lambda lv: lv["value"])
    lines = progress.get("objective_lines") or []
    text.append(" ".join(f"│ {ln['stat']} < {ln['ms']:g} ms" for ln in lines) or "no first-chunk objective",
                style="red" if lines else "dim")
    cap = progress.get("capacity")
    if cap is not None:
        low, high = cap["bracket"]
        if cap["value"] is None:
            text.append("   capacity: none met the objectives", style="bold red")
        else:
            text.append(f"   capacity {cap['value']:g} {unit} [{low:g}, {'-' if high is None else f'{high:g}'}]",
                        style="bold green")
        if progress.get("knee"):
            text.append(f"   knee {progress['knee']['value']:g}")
    elif progress.get("current") is not None:
        text.append(f"   measuring {progress['current']:g} {unit}", style="yellow")
    firsts = [lv["summary"]["metrics"]["first_chunk_latency_ms"] for lv in levels]
    top = max([f.get("p95") or 0.0 for f in firsts] + [ln["ms"] for ln in lines] + [1.0]) * 1.05
    goodputs = [(lv["summary"].get("goodput") or {}).get("requests_per_s") or 0.0 for lv in levels]
    best = max(goodputs + [1e-9])
    cells = max(10, width - 58)  # the rest of a row: load, numbers, verdict, goodput bar, capacity mark
    capacity = (cap or {}).get("value")
    text.append(f"\n{'load':>6}  {'first chunk: █ p50 ▒ p95':<{cells}} {'p50':>6} {'p95':>6}   goodput/s",
                style="bold")
    marks = {round(ln["ms"] / top * cells) for ln in lines}
    for level, first, goodput in zip(levels, firsts, goodputs):
        p50, p95 = first.get("p50") or 0.0, first.get("p95") or 0.0
        n50, n95 = round(p50 / top * cells), round(p95 / top * cells)
        text.append(f"\n{level['value']:>6g}  ")
        for i in range(cells):
            if i in marks:
                text.append("│", style="bold red")
            elif i < n50:
                text.append("█", style="cyan")
            elif i < n95:
                text.append("▒", style="cyan")
            else:
                text.append(" ")
        verdict = {True: ("✓", "green"), False: ("✗", "bold red"), None: (" ", "")}[level["slo_passed"]]
        text.append(f" {fmt_ms(p50):>6} {fmt_ms(p95):>6} ")
        text.append(verdict[0], style=verdict[1])
        text.append(f" {goodput:>7.2f} ")
        text.append(bar(goodput, best, 8), style="green")
        if capacity is not None and level["value"] == capacity:
            text.append("  ◀ capacity", style="bold green")
    if progress.get("current") is not None:
        text.append(f"\n{progress['current']:>6g}  measuring ...", style="yellow")
    return text


class SweepPanel(Panel):
    def show(self, progress: dict[str, Any] | None) -> None:
        self.update(sweep_lines(progress, self.width))


# ---- tune --------------------------------------------------------------------------------------------------------
STATUS_STYLES = {"measured": "green", "pruned": "dim", "failed": "bold red", "no_capacity": "red",
                 "interrupted": "yellow", "pending": "yellow"}


def tune_lines(progress: dict[str, Any] | None, width: int, rows: int = 12, elapsed: float | None = None) -> Text:
    """A tune's search so far: the candidate measured now (its knobs and what its change restarted), then one row
    per candidate (knobs, capacity, bracket, costs, status), the best marked; rows beyond ``rows`` keep the best
    and the latest."""
    text = Text()
    if not progress:
        text.append("waiting for the first candidate ...", style="dim")
        return text
    unit = "streams" if progress["kind"] == "concurrency" else "req/s"
    current = progress.get("current")
    candidates = progress["candidates"]
    if current is not None:
        knobs = ", ".join(f"{k}={cell_text(v)}" for k, v in current["knobs"].items())
        again = f" (the best, measured again: {current['repeat']} of {progress['repeat']})" if current["repeat"] else ""
        text.append(f"candidate {current['number']}{again}: ", style="bold yellow")
        text.append(knobs)
        if current.get("change"):
            text.append(f"  ({current['change']})", style="dim")
    elif progress["status"] != "running":
        text.append(f"tune {progress['status']}: {progress.get('stopped_because') or ''}", style="bold")
    else:
        text.append("choosing the next candidate ...", style="dim")
    best = progress.get("best")
    text.append("\n")
    text.append(f"search {progress['method']}, {len(candidates)} of {progress['total']} candidate(s), "
                f"{progress['elapsed_s'] if elapsed is None else elapsed:.0f} s; ", style="dim")
    if best is not None:
        row = next(c for c in candidates if c["number"] == best)
        text.append(f"best so far: candidate {best}, {cell_text(row['capacity'])} {unit}", style="bold green")
    else:
        text.append("no best yet", style="dim")
    names, costs = progress["knobs"], progress["costs"]
    widths = [4, *(max(len(n), 5) for n in names), 8, 9, *(max(len(c), 6) for c in costs)]
    head = ["#", *names, "capacity", "bracket", *costs]
    text.append("\n" + "  ".join(h.rjust(w) for h, w in zip(head, widths)) + "  status", style="bold")
    shown = list(candidates)
    if len(shown) > rows:  # the latest rows, and the best row where it would scroll away
        latest = shown[-(rows - 1):]
        keep = [c for c in shown if c["number"] == best and c not in latest]
        shown = keep + latest if keep else shown[-rows:]
    measuring = None if current is None or current["repeat"] else current["number"]
    for c in shown:
        bracket = f"[{cell_text(c['bracket'][0])}, {cell_text(c['bracket'][1])}]"
        cells = [str(c["number"]), *(cell_text(c["knobs"].get(n)) for n in names), cell_text(c["capacity"]),
                 bracket, *(cell_text(c["cost"].get(n)) for n in costs)]
        status = "measuring ..." if c["number"] == measuring and c["status"] == "pending" else c["status"]
        if c.get("baseline"):
            status += " (baseline)"
        if c.get("reason") and c["status"] not in ("measured", "pending"):
            status += f": {c['reason'].splitlines()[0]}"
        style = "bold green" if c["number"] == best else STATUS_STYLES.get(c["status"], "")
        text.append("\n" + "  ".join(cell.rjust(w) for cell, w in zip(cells, widths)) + "  ", style=style)
        text.append(status, style=style)
        if c["number"] == best:
            text.append("  ◀ best", style="bold green")
    for r in progress.get("repeats") or []:
        text.append(f"\n  best measured again: capacity {cell_text(r['capacity'])} {unit}, "
                    f"bracket [{cell_text(r['bracket'][0])}, {cell_text(r['bracket'][1])}] ({r['status']})",
                    style="green")
    return text


class TunePanel(Panel):
    def show(self, progress: dict[str, Any] | None, elapsed: float | None = None) -> None:
        rows = max(1, (self.content_size.height or 12) - 3)
        self.update(tune_lines(progress, self.width, rows, elapsed))
