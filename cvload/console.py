"""The headless view of a run: a live progress line on stderr and a final summary table (or JSON) on stdout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cvload.apis import target_label
from cvload.measure.barge_in_summary import line as barge_in_line
from cvload.measure.loop_health import client_text
from cvload.measure.metrics import BY_NAME, MISSING, REQUEST_METRICS, RUN_METRICS, lookup, stats, values
from cvload.settings.config import RunConfig

PLAIN_EVERY_S = 5.0  # without a terminal, one progress line every few seconds


def progress_text(session: Any) -> str:
    engine = session.engine
    st = engine.state
    elapsed = time.monotonic() - st.started if st.started else 0.0
    planned = f"/{st.planned}" if st.planned else ""
    recent = [r for r in session.recent if not r.warmup]  # live percentiles over the latest: cheap at any length
    first = stats(values(recent, BY_NAME["first_chunk_latency_ms"]))
    p50 = f"{first['p50']:.0f}" if first["p50"] is not None else "-"
    p95 = f"{first['p95']:.0f}" if first["p95"] is not None else "-"
    load = f"{st.concurrency} tasks" if session.config.closed_loop else f"{st.rate:g} req/s"
    state = " paused" if st.paused else " stopping" if st.stopping else ""
    health = getattr(session, "loop_health", None)
    client = f"  {client_text(health.live())}" if health is not None and st.started else ""
    return (f"{elapsed:6.1f}s  done {st.done}{planned}  in flight {engine.inflight_count} ({load})  "
            f"first chunk p50 {p50} ms p95 {p95} ms  errors {st.failed}{state}{client}")


class _Consoles:
    """Where a console view writes: results to stdout (JSON with ``json_output``), progress to stderr (none
    with ``quiet``)."""

    def __init__(self, *, json_output: bool = False, quiet: bool = False) -> None:
        self.json_output = json_output
        self.quiet = quiet
        self.err = Console(stderr=True)
        self.out = Console()


class ConsoleView(_Consoles):
    _task: asyncio.Task[None] | None = None  # the live status line's refresher, while a run is live

    def preparing(self, config: RunConfig) -> None:
        if not self.quiet:
            where = ["embedded emulator"] if config.emulator else config.server
            label = target_label(config.api, config.protocol, config.mode, config.model, where, config.inference)
            self.err.print(f"cvload: {label}", highlight=False)

    def attach(self, session: Any) -> None:
        if not self.quiet:
            self._task = asyncio.create_task(self._refresh(session))

    def detach(self, session: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _refresh(self, session: Any) -> None:
        if self.err.is_terminal:
            live = Live(Text(""), console=self.err, refresh_per_second=4, transient=True)
            with live, contextlib.suppress(asyncio.CancelledError):
                while True:
                    live.update(Text(progress_text(session)))
                    await asyncio.sleep(0.25)
            return
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(PLAIN_EVERY_S)
                print(progress_text(session), file=sys.stderr, flush=True)

    def final(self, session: Any, summary: dict[str, Any]) -> None:
        if self.json_output:
            print(json.dumps(summary, indent=2, default=str), flush=True)
            return
        for warning in summary_warnings(summary):
            self.err.print(f"[yellow]warning:[/] {warning}", highlight=False)
        self.out.print(summary_table(summary))
        if summary.get("slo"):
            self.out.print(slo_table(summary["slo"]))
        status = summary["status"]
        if summary.get("abort_reason"):
            self.err.print(f"[red]run aborted:[/] {summary['abort_reason']}", highlight=False)
        self.out.print(f"results: {session.out_dir}  ({status})", highlight=False)


STEADY_ROUNDS = 3  # requests per requested stream before a run's achieved concurrency is judged


def summary_warnings(summary: dict[str, Any]) -> list[str]:
    out = list(summary.get("warnings") or [])  # e.g. --insecure
    conc = summary.get("concurrency") or {}
    requested, achieved = conc.get("requested"), conc.get("achieved_mean")
    # Judged only where the load had a steady state: every stream went round a few times (a one-request run's
    # achieved concurrency is mostly its start and its end).
    total = (summary.get("requests") or {}).get("total") or 0
    steady = requested and total >= STEADY_ROUNDS * requested
    if steady and requested and achieved is not None and achieved < 0.9 * requested:
        out.append(f"achieved concurrency {achieved:.1f} fell short of the {requested:g} requested "
                   "(run longer, or the client or server cannot keep that many requests in flight)")
    for warning in (summary.get("telemetry") or {}).get("warnings", []):
        out.append(warning)
    out += (summary.get("client") or {}).get("warnings", [])
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.1f}"
    return f"{value:.3f}"


def run_phrases(summary: dict[str, Any], place: str) -> list[str]:
    """The run metrics' ``headline`` or ``footer`` phrases (cvload.measure.metrics.RUN_METRICS), for those with a value."""
    flat = {m.name.replace(".", "_"): lookup(summary, m.name) for m in RUN_METRICS}
    out = []
    for metric in RUN_METRICS:
        phrase, value = getattr(metric, place), lookup(summary, metric.name)
        if phrase is not None and value is not MISSING and value is not None:
            out.append(phrase.format(value, **flat))
    return out


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="   ".join(run_phrases(summary, "headline")), title_justify="left")
    table.add_column("metric")
    for key in ("p50", "p90", "p95", "p99", "mean", "max"):
        table.add_column(key, justify="right")
    for metric in REQUEST_METRICS:
        s = summary["metrics"].get(metric.name) or {}
        if not s.get("count"):
            continue
        unit = f" ({metric.unit})" if metric.unit else ""
        table.add_row(metric.title + unit, *[_fmt(s.get(k), metric.unit) for k in
                                             ("p50", "p90", "p95", "p99", "mean", "max")])
    extra = run_phrases(summary, "footer")
    barged = barge_in_line(summary)
    if barged:
        extra.append(barged)
    if client_text(summary.get("client")):
        extra.append(client_text(summary.get("client")))
    errors = {k: v for k, v in {**summary["errors"], **summary["audio_flags"]}.items() if v}
    if errors:
        extra.append("failures: " + ", ".join(f"{k} {v}" for k, v in errors.items()))
    if extra:
        table.caption = "   ".join(extra)
        table.caption_justify = "left"
    return table


def slo_table(verdicts: list[dict[str, Any]]) -> Table:
    table = Table(title="objectives", title_justify="left")
    for col in ("objective", "measured", "verdict"):
        table.add_column(col)
    colors = {"pass": "green", "fail": "red"}
    for v in verdicts:
        measured = v.get("measured")
        shown = "no data" if measured is None else f"{measured:.4g}{v.get('unit') or ''}"
        color = colors.get(v["verdict"], "yellow")
        table.add_row(v["objective"], shown, f"[{color}]{v['verdict']}[/]")
    return table


# ---- cvload sweep ---------------------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def sweep_table(result: dict[str, Any]) -> Table:
    """One row per level of a sweep (sweep.json's ``levels``), in load order."""
    unit = "streams" if result["kind"] == "concurrency" else "req/s"
    table = Table(title=f"sweep: {len(result['levels'])} levels ({unit})", title_justify="left")
    table.caption = "first chunk p50/p95/p99 in ms; conc: concurrency achieved; good/s: goodput"
    table.caption_justify = "left"
    for col in ("level", "phase", "req", "fail", "incompl", "p50", "p95", "p99", "req/s", "good/s", "conc", "slo"):
        table.add_column(col, justify="left" if col in ("phase", "slo") else "right")
    for level in sorted(result["levels"], key=lambda lv: lv["value"]):
        s = level["summary"]
        req = s.get("requests") or {}
        first = s["metrics"]["first_chunk_latency_ms"]
        verdict = {True: "[green]pass[/]", False: "[red]fail[/]", None: "-"}[level["slo_passed"]]
        incomplete = str(req.get("incomplete") or 0)
        if s.get("incomplete_min_s") is not None:
            incomplete += f" (>= {s['incomplete_min_s']:.1f} s)"
        table.add_row(f"{level['value']:g}", level["phase"], str(req.get("total", 0)), str(req.get("failed", 0)),
                      incomplete, _ms(first.get("p50")), _ms(first.get("p95")), _ms(first.get("p99")),
                      f"{(s.get('throughput') or {}).get('requests_per_s', 0):.2f}",
                      f"{(s.get('goodput') or {}).get('requests_per_s', 0):.2f}",
                      f"{(s.get('concurrency') or {}).get('achieved_mean') or 0:.2f}", verdict)
    return table


def capacity_line(result: dict[str, Any]) -> str:
    cap = result["capacity"]
    unit = "streams" if result["kind"] == "concurrency" else "req/s"
    low, high = cap["bracket"]
    if cap["value"] is None:
        why = "no level stayed under the error-rate limit" if cap["by"] == "goodput" else \
            "no level met the objectives"
        text = f"capacity: none - {why}" if result["levels"] else "capacity: nothing measured"
        if high is not None:
            text += f" (the lowest level, {high:g}, failed)"
    else:
        above = f", {high:g} failed" if high is not None else ", no higher level failed"
        how = " (no objectives: the level of highest goodput)" if cap["by"] == "goodput" else ""
        text = f"capacity: {cap['value']:g} {unit}{how}   bracket [{low:g}, {'-' if high is None else f'{high:g}'}]" \
               + (above if cap["by"] == "objectives" else "")
    knee = result.get("knee")
    if knee:
        text += f"   knee: {knee['value']:g} ({knee['reason']})"
    return text + f"   stopped: {result['stopped_because']}"


class SweepConsoleView(_Consoles):
    """``cvload sweep`` in a terminal: a line per level as it starts and is judged, then the table and capacity."""

    def preparing(self, config: RunConfig) -> None:
        ConsoleView(quiet=self.quiet).preparing(config)

    def attach(self, sweep: Any) -> None:
        pass

    def detach(self, sweep: Any) -> None:
        pass

    def level_started(self, sweep: Any, level: Any) -> None:
        if not self.quiet:
            self.err.print(f"level {sweep.plan.value(level.value):g} ({level.phase}): warming up and measuring",
                           highlight=False)

    def level_judged(self, sweep: Any, level: Any) -> None:
        if self.quiet or level.summary is None:
            return
        s = level.summary
        first = s["metrics"]["first_chunk_latency_ms"]
        verdict = {True: "pass", False: "FAIL", None: "no objectives"}[level.slo_passed]
        extra = run_phrases(s, "footer")
        incomplete = [p for p in extra if "incomplete" in p]
        self.err.print(f"level {sweep.plan.value(level.value):g}: {s['requests']['total']} requests, first chunk "
                       f"p50 {_ms(first['p50'])} p95 {_ms(first['p95'])} ms, "
                       f"{s['throughput']['requests_per_s']:.2f} req/s, goodput "
                       f"{s['goodput']['requests_per_s']:.2f}/s"
                       + (f", {incomplete[0]}" if incomplete else "") + f": {verdict}", highlight=False)

    def final(self, sweep: Any, result: dict[str, Any]) -> None:
        if self.json_output:
            print(json.dumps(result, indent=2, default=str), flush=True)
            return
        self.out.print(sweep_table(result))
        self.out.print(capacity_line(result), highlight=False)
        self.out.print(f"results: {sweep.out_dir}  ({result['status']})", highlight=False)
