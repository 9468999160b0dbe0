"""The report's figures, drawn with matplotlib's Agg renderer into PNG bytes of a fixed pixel size (so a figure
weighs the same for 100 requests or 100,000). One colour per run or sweep, the same in every figure.

matplotlib is imported here only: ``cvload report`` loads this module when it runs, so ``cvload run`` never pays
for it.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import PercentFormatter

from cvload.report import series
from cvload.report.document import Figure
from cvload.results.folder import RunResults, SweepResults

WIDTH_IN, DPI = 9.0, 100  # 900 px wide: what series.TIME_BINS and CDF_POINTS are thinned to
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")
PASS_COLOR, FAIL_COLOR, SHARED_COLOR = "#2a9d3a", "#c0392b", "#555555"
STAGE_COLORS = {"queue_ms": "#bbbbbb", "compute_input_ms": "#8fb9e0", "compute_infer_ms": "#1f77b4",
                "compute_output_ms": "#ff9f4a"}


def colour(n: int) -> str:
    return PALETTE[n % len(PALETTE)]


def _figure(height: float = 3.6, rows: int = 1, *, left: float = 0.8, right: float = 0.25, top: float = 0.2,
            bottom: float = 0.55) -> tuple[MplFigure, list]:
    """A figure with margins fixed in inches (a layout engine would cost more time than the drawing)."""
    fig = MplFigure(figsize=(WIDTH_IN, height), dpi=DPI)
    fig.subplots_adjust(left=left / WIDTH_IN, right=1 - right / WIDTH_IN, top=1 - top / height,
                        bottom=bottom / height, hspace=0.12)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, color="#e5e5e5", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, list(axes)


def _png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _legend(ax, **kwargs) -> None:  # noqa: ANN001 - a matplotlib Axes
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, frameon=False, **kwargs)


def _objectives(ax, lines: Sequence[series.ObjectiveLine], *, horizontal: bool = False,  # noqa: ANN001
                cdf: bool = False) -> None:
    """Objective thresholds as dashed lines (green where the run met them, red where it missed, grey when several
    runs share them); on a CDF, a dotted line at the objective's percentile too."""
    seen = set()
    for line in lines:
        if line.text in seen:
            continue
        seen.add(line.text)
        color = SHARED_COLOR if line.passed is None else PASS_COLOR if line.passed else FAIL_COLOR
        label = f"objective {line.text}"
        if horizontal:
            ax.axhline(line.value, color=color, linestyle="--", linewidth=1.2, label=label)
            continue
        ax.axvline(line.value, color=color, linestyle="--", linewidth=1.2, label=label)
        if cdf and line.quantile is not None:
            ax.axhline(line.quantile, color=color, linestyle=":", linewidth=0.9)


def _all_objectives(runs: Sequence[RunResults], metric: str) -> list[series.ObjectiveLine]:
    lines = [line for run in runs for line in series.objective_lines(run.summary, metric)]
    if len(runs) > 1:
        lines = [dataclasses.replace(line, passed=None) for line in lines]
    return lines


def _cdf_line(ax, x, y, n: int, label: str, *, dashed: bool = False) -> None:  # noqa: ANN001 - Axes, arrays
    """One run's CDF (``series.cdf``) in its colour: solid, or thin and dashed (a second view of the same run)."""
    ax.step(x, y, where="post", color=colour(n), label=label,
            **({"linewidth": 1.0, "linestyle": "--"} if dashed else {"linewidth": 1.6}))


def _cdf_axes(ax, xlabel: str, ylabel: str = "share of requests") -> None:  # noqa: ANN001 - a matplotlib Axes
    """A CDF's axes: the share from 0 to 100 % against a quantity from 0, the legend where the curves end."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    _legend(ax, loc="lower right")


# ---- one run, or several overlaid -----------------------------------------------------------------------------
def first_chunk_cdf(runs: Sequence[RunResults], labels: Sequence[str]) -> Figure | None:
    fig, (ax,) = _figure()
    drawn = False
    for n, (run, label) in enumerate(zip(runs, labels)):
        x, y = series.cdf(run.columns.values("first_chunk_latency_ms"))
        if x.size:
            _cdf_line(ax, x, y, n, label)
            drawn = True
        xc, yc = series.cdf(run.columns.values("first_chunk_latency_corrected_ms"))
        if xc.size:
            _cdf_line(ax, xc, yc, n, f"{label}, from intended send", dashed=True)
    if not drawn:
        return None
    _objectives(ax, _all_objectives(runs, "first_chunk_latency_ms"), cdf=True)
    _cdf_axes(ax, "first-chunk latency (ms)")
    return Figure("First-chunk latency (CDF)", _png(fig),
                  "Share of successful requests whose first audio chunk came within x ms. Dashed: objectives "
                  + ("(verdicts per run in the objectives table)" if len(runs) > 1 else "(green met, red missed)")
                  + "; a dotted line marks the objective's percentile.")


def _share_histograms(runs: Sequence[RunResults], labels: Sequence[str], metric: str, *, floor: float,
                      bins: int = 60) -> tuple[MplFigure, Axes, float] | None:
    data = [run.columns.values(metric) for run in runs]
    if not any(d.size for d in data):
        return None
    top = series.spread_max(data, floor=floor)
    edges = np.linspace(0.0, top, bins + 1)
    fig, (ax,) = _figure(3.2)
    single = len(runs) == 1
    for n, (values, label) in enumerate(zip(data, labels)):
        if not values.size:
            continue
        shares = series.share_histogram(values, edges)
        if single:
            ax.bar(edges[:-1], shares, width=np.diff(edges), align="edge", color=colour(n), alpha=0.8,
                   label=label)
        else:
            ax.stairs(shares, edges, color=colour(n), linewidth=1.6, label=label)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("share of requests")
    ax.set_xlim(0, top)
    return fig, ax, top


def second_chunk_gaps(runs: Sequence[RunResults], labels: Sequence[str]) -> Figure | None:
    drawn = _share_histograms(runs, labels, "second_chunk_latency_ms", floor=1.0)
    if drawn is None:
        return None
    fig, ax, top = drawn
    _objectives(ax, [line for line in _all_objectives(runs, "second_chunk_latency_ms")
                     if line.value <= top * 1.5])
    ax.set_xlabel("gap between first and second chunk (ms)")
    _legend(ax, loc="upper right")
    return Figure("Second-chunk gap", _png(fig),
                  f"Time from the first to the second audio chunk; the last bin holds every gap of {top:.0f} ms "
                  "or more.")


def rtf_histogram(runs: Sequence[RunResults], labels: Sequence[str]) -> Figure | None:
    drawn = _share_histograms(runs, labels, "rtf", floor=1.1)
    if drawn is None:
        return None
    fig, ax, top = drawn
    ax.axvline(1.0, color="black", linewidth=1.2, label="real time (RTF 1)")
    _objectives(ax, _all_objectives(runs, "rtf"))
    ax.set_xlabel("real-time factor (request latency / audio length)")
    _legend(ax, loc="upper right")
    return Figure("Real-time factor", _png(fig),
                  "Right of the black line a request took longer than the audio it produced. Last bin: RTF "
                  f"{top:.2f} or more.")


def _time_series(runs: Sequence[RunResults]) -> list[series.TimeSeries]:
    """Every run in bins of the same width, so overlaid runs compare bin for bin."""
    width = series.bin_width(max(series.duration(run) for run in runs))
    return [series.time_series(run, width) for run in runs]


def _marker(ts: series.TimeSeries) -> str | None:
    return "o" if ts.t.size < 30 else None  # a handful of bins: points, so a single bin still shows


def over_time(runs: Sequence[RunResults], labels: Sequence[str]) -> Figure | None:
    all_series = _time_series(runs)
    if not any(np.isfinite(s.first_p50).any() for s in all_series):
        return None
    has_gpu = any(ts.gpu_t.size for ts in all_series)
    fig, (lat, thr) = _figure(5.6, rows=2, right=0.8 if has_gpu else 0.25)
    gpu_ax = None
    for n, (ts, label) in enumerate(zip(all_series, labels)):
        c = colour(n)
        m = _marker(ts)
        lat.plot(ts.t, ts.first_p50, color=c, linewidth=1.4, marker=m, markersize=4, label=f"{label} p50")
        lat.plot(ts.t, ts.first_p95, color=c, linewidth=1.0, linestyle="--", marker=m, markersize=3,
                 label=f"{label} p95")
        thr.plot(ts.t, ts.throughput, color=c, linewidth=1.4, marker=m, markersize=4, label=f"{label} throughput")
        if ts.gpu_t.size:
            if gpu_ax is None:
                gpu_ax = thr.twinx()
                gpu_ax.set_ylabel("GPU utilization")
                gpu_ax.set_ylim(0, 1.05)
                gpu_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
                gpu_ax.spines["top"].set_visible(False)
            gpu_ax.plot(ts.gpu_t, ts.gpu_util, color=c, linewidth=1.0, linestyle=":", alpha=0.9,
                        label=f"{label} GPU")
    lat.set_ylabel("first chunk (ms)")
    lat.set_ylim(bottom=0)
    for line in _all_objectives(runs, "first_chunk_latency_ms"):
        lat.axhline(line.value, color=SHARED_COLOR if line.passed is None else PASS_COLOR if line.passed
                    else FAIL_COLOR, linestyle="--", linewidth=1.0)
    thr.set_ylabel("requests / s")
    thr.set_ylim(bottom=0)
    thr.set_xlabel(f"time since the run started (s; bins of {all_series[0].bin_s:g} s)")
    thr.set_xlim(left=0)
    _legend(lat, loc="upper left", ncols=2)
    handles, names = thr.get_legend_handles_labels()
    if gpu_ax is not None:
        more = gpu_ax.get_legend_handles_labels()
        handles, names = handles + more[0], names + more[1]
    thr.legend(handles, names, fontsize=8, frameon=False, loc="lower right", ncols=2)
    return Figure("Latency and throughput over time", _png(fig),
                  "First-chunk p50 (solid) and p95 (dashed) of the requests finishing in each bin; successful "
                  "requests finished per second" + (", GPU utilization dotted on the right axis."
                                                    if has_gpu else " (no GPU utilization in the telemetry)."))


def stage_times(runs: Sequence[RunResults], labels: Sequence[str]) -> Figure | None:
    bars = [(label, n, model, times) for n, (run, label) in enumerate(zip(runs, labels))
            for model, times in series.stage_times(run)]
    if not bars:
        return None
    names = [f"{model} ({label})" if len(runs) > 1 else model for label, _n, model, _t in bars]
    fig, (ax,) = _figure(1.3 + 0.38 * len(bars), left=0.3 + 0.065 * max(len(n) for n in names), top=0.45)
    y = np.arange(len(bars))[::-1]
    left = np.zeros(len(bars))
    for stage in series.STAGES:
        widths = np.array([times[stage] for *_rest, times in bars])
        ax.barh(y, widths, left=left, color=STAGE_COLORS[stage], label=stage.removesuffix("_ms").replace("_", " "),
                height=0.7)
        left += widths
    ax.set_yticks(y, names, fontsize=8)
    if len(runs) > 1:
        for tick, (_label, n, *_rest) in zip(ax.get_yticklabels(), bars):
            tick.set_color(colour(n))
    ax.set_xlabel("server time per request (ms, mean)")
    ax.grid(axis="y", visible=False)
    fig.legend(loc="upper center", ncols=4, fontsize=8, frameon=False)
    return Figure("Server time per stage", _png(fig),
                  "Triton's statistics over the run (server_stats.json): mean time a request of each model spent "
                  "queued, gathering inputs, computing and returning outputs.")


def errors_and_stalls(runs: Sequence[RunResults], labels: Sequence[str]) -> Figure:
    all_series = _time_series(runs)
    fig, (err, stall) = _figure(4.2, rows=2)
    single = len(runs) == 1
    total_errors = total_stalls = 0.0
    for n, (ts, label) in enumerate(zip(all_series, labels)):
        c = colour(n)
        if single:
            edges = np.append(ts.t - ts.bin_s / 2, ts.t[-1] + ts.bin_s / 2)
            bottom = np.zeros(ts.t.size)
            for k, (kind, counts) in enumerate(ts.errors.items()):  # stacked by kind, one patch each
                err.stairs(bottom + counts, edges, baseline=bottom, fill=True,
                           color=PALETTE[(k + 1) % len(PALETTE)], label=kind)
                bottom = bottom + counts
        else:
            counts = sum(ts.errors.values(), np.zeros(ts.t.size))
            err.plot(ts.t, counts, color=c, linewidth=1.4, marker=_marker(ts), markersize=4, label=label)
        stall.plot(ts.t, ts.stalls, color=c, linewidth=1.4, marker=_marker(ts), markersize=4, label=label)
        total_errors += sum(float(v.sum()) for v in ts.errors.values())
        total_stalls += float(ts.stalls.sum())
    err.set_ylabel("failed requests / bin")
    stall.set_ylabel("playback stalls / bin")
    stall.set_xlabel(f"time since the run started (s; bins of {all_series[0].bin_s:g} s)")
    for ax, total, what in ((err, total_errors, "no failed requests"), (stall, total_stalls, "no playback stalls")):
        ax.set_ylim(bottom=0, top=None if total else 1)
        if not total:
            ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", color="#555555")
        _legend(ax, loc="upper right")
    stall.set_xlim(left=0)
    return Figure("Errors and stalls over time", _png(fig),
                  "Failed requests by kind (audio check: finished but the audio failed a sanity check) and the "
                  "playback stalls a listener would hear, per bin of finish time.")


def barge_in_release(runs: Sequence[RunResults], labels: Sequence[str]) -> Figure | None:
    """--barge-in runs: how fast the server let go of abandoned requests."""
    releases = [series.release_times(run) for run in runs]
    if not any(values.size for values, _ in releases):
        return None
    fig, (ax,) = _figure()
    for n, ((values, source), label) in enumerate(zip(releases, labels)):
        if values.size:
            x, y = series.cdf(values)
            _cdf_line(ax, x, y, n, f"{label} ({source})")
    _objectives(ax, _all_objectives(runs, "barge_in.release_ms"), cdf=True)
    _cdf_axes(ax, "release time: abandon -> server stopped (ms)", "abandoned requests")
    return Figure("Barge-in release time", _png(fig),
                  "Time from abandoning a request (--barge-in) until the server stopped making it: from Triton's "
                  "request trace (--triton-trace: the latest end in the request's tree of model calls) or the "
                  "emulator's own trace, else until the client's call closed (client, a lower bound of what the "
                  "server did).")


def barge_in_survivors(runs: Sequence[RunResults], labels: Sequence[str]) -> Figure | None:
    """--barge-in runs: the first chunk of the requests not abandoned, beside the same load without barge-in."""
    if not any(series.release_times(run)[0].size for run in runs):
        return None
    fig, (ax,) = _figure()
    for n, (run, label) in enumerate(zip(runs, labels)):
        x, y = series.cdf(series.survivors_first_chunk(run))
        if x.size:
            _cdf_line(ax, x, y, n, f"{label}, not abandoned")
        base = series.baseline_of(run)
        if base is not None:
            xb, yb = series.cdf(base.columns.values("first_chunk_latency_ms"))
            if xb.size:
                _cdf_line(ax, xb, yb, n, f"{label}, same load without barge-in", dashed=True)
    _cdf_axes(ax, "first-chunk latency (ms)")
    return Figure("Barge-in: first chunk of the others", _png(fig),
                  "First chunk of the requests that were not abandoned; dashed, the same load without barge-in "
                  "(--barge-in-baseline): a server that keeps generating abandoned requests delays everyone else.")


RUN_FIGURES: tuple[Callable[[Sequence[RunResults], Sequence[str]], Figure | None], ...] = (
    first_chunk_cdf, second_chunk_gaps, rtf_histogram, over_time, stage_times, errors_and_stalls, barge_in_release,
    barge_in_survivors)


# ---- sweeps -----------------------------------------------------------------------------------------------------
def _load_label(sweeps: Sequence[SweepResults]) -> str:
    kinds = {level.kind for s in sweeps for level in s.levels}  # "concurrency" or "rate"
    return "offered load (requests / s)" if kinds == {"rate"} else "concurrent streams"


def _against_load(ax, sweeps: Sequence[SweepResults], labels: Sequence[str], ylabel: str) -> None:  # noqa: ANN001
    """The frame of a figure against load: capacity and knee marks, axis labels from zero up, the legend."""
    _mark_capacity(ax, sweeps, labels)
    load_axis(ax, sweeps)
    ax.set_xlabel(_load_label(sweeps))
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    _legend(ax, loc="upper left", ncols=2)


MAX_LEVEL_TICKS = 12


def load_axis(ax, sweeps: Sequence[SweepResults]) -> None:  # noqa: ANN001
    """Ticks at the levels measured (not 1.5 or 2.5 streams between them); a doubling sweep (1, 2, 4, 8...) on a
    log2 axis, where its levels sit evenly."""
    from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

    levels = sorted({level.value for sweep in sweeps for level in sweep.levels if level.value > 0})
    if not levels:
        return
    if len(levels) >= 3 and all(b == 2 * a for a, b in zip(levels, levels[1:])):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_locator(NullLocator())
    if len(levels) <= MAX_LEVEL_TICKS:
        ax.xaxis.set_major_locator(FixedLocator(levels))
        ax.set_xticklabels([f"{v:g}" for v in levels])
    elif {level.kind for sweep in sweeps for level in sweep.levels} == {"concurrency"}:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole streams


def _mark_capacity(ax, sweeps: Sequence[SweepResults], labels: Sequence[str]) -> None:  # noqa: ANN001
    for n, (sweep, label) in enumerate(zip(sweeps, labels)):
        cap = series.capacity_value(sweep)
        bracket = sweep.capacity.get("bracket")
        if isinstance(bracket, list | tuple) and len(bracket) == 2 and all(isinstance(b, int | float)
                                                                             for b in bracket):
            ax.axvspan(bracket[0], bracket[1], color=colour(n), alpha=0.08)  # upper end None: none failed above
        if cap is not None:
            ax.axvline(cap, color=colour(n), linewidth=2.0, alpha=0.8, label=f"{label} capacity {cap:g}")
        knee = series.knee_value(sweep)
        if knee is not None:
            ax.axvline(knee, color=colour(n), linewidth=1.2, linestyle="-.", label=f"{label} knee {knee:g}")


def sweep_latency(sweeps: Sequence[SweepResults], labels: Sequence[str]) -> Figure | None:
    fig, (ax,) = _figure(4.0)
    drawn = False
    styles = {"p50": ("-", "o"), "p95": ("--", "s"), "p99": (":", "^")}
    for n, (sweep, label) in enumerate(zip(sweeps, labels)):
        levels = series.by_load(sweep)
        x = [level.value for level in levels]
        for stat, (ls, marker) in styles.items():
            got = [series.level_value(level, f"metrics.first_chunk_latency_ms.{stat}") for level in levels]
            y = [np.nan if v is None else v for v in got]
            if np.isfinite(y).any():
                ax.plot(x, y, color=colour(n), linestyle=ls, marker=marker, markersize=4, linewidth=1.4,
                        label=f"{label} {stat}")
                drawn = True
        failed = [level for level in levels if level.slo_passed is False]
        if failed:
            p95 = [series.level_value(level, "metrics.first_chunk_latency_ms.p95") for level in failed]
            ax.scatter([lv.value for lv, v in zip(failed, p95) if v is not None], [v for v in p95 if v is not None],
                       marker="x", s=60, color=FAIL_COLOR, zorder=5,
                       label="level failed its objectives" if n == 0 else None)
    if not drawn:
        return None
    for sweep in sweeps[:1]:
        _objectives(ax, series.sweep_objectives(sweep, "first_chunk_latency_ms"), horizontal=True)
    _against_load(ax, sweeps, labels, "first-chunk latency (ms)")
    return Figure("First-chunk latency against load", _png(fig),
                  "p50 / p95 / p99 at each level; vertical lines: capacity (solid, shaded: the bracket it was found "
                  "in) and knee (dash-dot); dashed horizontal: objectives; x: a level that failed them.")


def sweep_throughput(sweeps: Sequence[SweepResults], labels: Sequence[str]) -> Figure | None:
    fig, (ax,) = _figure(3.6)
    drawn = False
    for n, (sweep, label) in enumerate(zip(sweeps, labels)):
        levels = series.by_load(sweep)
        x = [level.value for level in levels]
        thr = [series.level_value(level, "throughput.requests_per_s") for level in levels]
        good = [series.goodput(level) for level in levels]
        if any(v is not None for v in thr):
            ax.plot(x, [np.nan if v is None else v for v in thr], color=colour(n), marker="o", markersize=4,
                    linewidth=1.4, label=f"{label} throughput")
            drawn = True
        if any(v is not None for v in good):
            ax.plot(x, [np.nan if v is None else v for v in good], color=colour(n), marker="D", markersize=4,
                    linewidth=1.4, linestyle="--", label=f"{label} goodput")
            drawn = True
    if not drawn:
        return None
    _against_load(ax, sweeps, labels, "requests / s")
    return Figure("Throughput and goodput against load", _png(fig),
                  "Throughput: successful requests per second. Goodput (where the sweep measured it): requests "
                  "per second that met every per-request objective.")


def _plot_levels(ax, sweeps: Sequence[SweepResults], labels: Sequence[str], path: str,  # noqa: ANN001
                 styles: dict[str, tuple[str, str]], scale: float = 1.0, suffix: str = "") -> bool:
    drawn = False
    for n, (sweep, label) in enumerate(zip(sweeps, labels)):
        levels = series.by_load(sweep)
        for stat, (ls, marker) in styles.items():
            y = [series.level_value(level, f"{path}.{stat}") for level in levels]
            if any(v is not None for v in y):
                ax.plot([level.value for level in levels], [np.nan if v is None else v * scale for v in y],
                        color=colour(n), linestyle=ls, marker=marker, markersize=4, linewidth=1.4,
                        label=f"{label} {suffix}{stat}")
                drawn = True
    return drawn


def sweep_speech(sweeps: Sequence[SweepResults], labels: Sequence[str]) -> Figure | None:
    """Onset (first audible) beside first chunk, and content error, against load: is the speech heard in time and
    right as the load grows (docs/speech.md)? Only sweeps that listened (--onset, --check-content) draw it."""
    fig, (onset, content) = _figure(5.2, rows=2)
    heard = _plot_levels(onset, sweeps, labels, "metrics.first_audible_latency_ms",
                         {"p50": ("-", "o"), "p95": ("--", "s")}, suffix="first audible ")
    if heard:
        _plot_levels(onset, sweeps, labels, "metrics.first_chunk_latency_ms", {"p95": (":", ".")},
                     suffix="first chunk ")
    words = _plot_levels(content, sweeps, labels, "metrics.content_error_rate",
                         {"p50": ("-", "o"), "p95": ("--", "s")}, scale=100.0, suffix="content error ")
    if not heard and not words:
        return None
    for sweep in sweeps[:1]:
        _objectives(onset, series.sweep_objectives(sweep, "first_audible_latency_ms"), horizontal=True)
    onset.set_ylabel("latency (ms)")
    onset.set_ylim(bottom=0)
    _legend(onset, loc="upper left", ncols=2)
    _against_load(content, sweeps, labels, "content error (%)")
    return Figure("Speech against load: heard in time, the right words", _png(fig),
                  "Top: first audible (send to the first speech sample a player hears) p50 / p95, with first-chunk "
                  "p95 dotted: the gap is leading silence. Bottom: word (English) or character (Chinese) error rate "
                  "of the transcripts, p50 / p95 per level. Vertical lines: capacity and knee.")


SWEEP_FIGURES: tuple[Callable[[Sequence[SweepResults], Sequence[str]], Figure | None], ...] = (
    sweep_latency, sweep_throughput, sweep_speech)
