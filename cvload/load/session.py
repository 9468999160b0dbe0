"""One measured run from start to results folder, shared by ``cvload run`` and ``cvload tui``.

``Session.run(view)`` is the one lifecycle: prepare everything that can fail before the first request (inputs,
objectives, emulator, server, model, mode), take Ctrl-C/SIGTERM as "stop and write the results", run the engine,
write the summary, evaluate objectives, give the exit code. Views only listen (``RunView``): the console of
``cvload run`` and the dashboard's measuring process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import platform
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from cvload import __version__
from cvload.apis import api_spec, run_label
from cvload.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_SLO_FAILED, UsageError
from cvload.load.driver import EngineState, Events, LoadDriver, RunResult
from cvload.load.engine import Engine
from cvload.load.gc_pause import QuietCollections
from cvload.measure.barge_in_summary import BargeInTally
from cvload.measure.loop_health import LoopHealth
from cvload.measure.metrics import Tally
from cvload.results.exporter import DEFAULT_LINGER_S, Exporter, LiveGauges
from cvload.results.records import RequestRecord
from cvload.results.writer import SUMMARY_SCHEMA, ResultsWriter, default_out_dir
from cvload.settings.config import RunConfig
from cvload.settings.transport import INSECURE_WARNING
from cvload.targets import make_target
from cvload.targets.base import Target, TargetInfo
from cvload.telemetry.server_release import TRACE_GRACE_S

if TYPE_CHECKING:
    from cvload.emulator.launch import Emulator
    from cvload.listen.live import ContentChecker, ContentTally
    from cvload.measure.slo import Objective
    from cvload.telemetry import Telemetry


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"cvload": __version__, "python": platform.python_version()}
    for pkg in ("tritonclient", "grpcio", "numpy", "textual"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


class RunView(Protocol):
    """What ``Session.run`` tells a view, in order: preparing, attach (the engine is ready), detach (the run is
    over or failed), final (the summary is written)."""

    def preparing(self, config: RunConfig) -> None: ...

    def attach(self, session: Session) -> None: ...

    def detach(self, session: Session) -> None: ...

    def final(self, session: Session, summary: dict[str, Any]) -> None: ...


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RECENT = 2000  # finished requests a live view may look at (the console's percentiles over the latest)


@dataclass
class Session:
    """``engine``: the run's ``LoadDriver`` (an ``Engine``, or a fleet of load processes). ``events``: what it
    tells, made before the driver so that a sweep can listen from the first request; ``until_drained``: the
    driver sends until ``drain()`` (a sweep) instead of one pass over the inputs."""

    config: RunConfig
    out_dir: Path | None = None
    writer: ResultsWriter | None = None
    engine: LoadDriver | None = None
    events: Events = field(default_factory=Events)
    until_drained: bool = False
    # The latest finished requests, for a live view (the console's percentiles over the latest).
    recent: deque[RequestRecord] = field(default_factory=lambda: deque(maxlen=RECENT))
    targets: list[Target] = field(default_factory=list)
    infos: list[TargetInfo] = field(default_factory=list)
    objectives: list[Objective] = field(default_factory=list)
    telemetry: Telemetry | None = None
    server: Emulator | None = None  # the API's emulated server when --emulator (cvload.emulator.launch.Emulator)
    stats_before: dict[str, Any] | None = None
    started_wall: float = 0.0
    summary: dict[str, Any] | None = None
    result: RunResult | None = None
    # The summary's inputs, folded from every record as it finishes (the records themselves go to records.jsonl).
    tally: Tally = field(default_factory=Tally)
    stop_asked: bool = False
    # This process's own timing error, beside a bare loop's on the same host (what the host alone costs).
    loop_health: LoopHealth = field(default_factory=lambda: LoopHealth(reference=True))
    # --check-content: the checker (cvload.listen.live.ContentChecker), validated before any load; it runs in this
    # process's helpers for an in-process engine, while a fleet's load processes each run their own.
    content: ContentChecker | None = None
    content_tally: ContentTally | None = None  # --check-content: the run's content counters
    exporter: Exporter | None = None  # --prometheus-port / --prometheus-push
    barge_in: BargeInTally | None = None  # --barge-in: the abandoned requests and the survivors' first chunk
    emulator_trace: Path | None = None  # the emulated server's per-request trace (--emulator)
    baseline: tuple[dict[str, Any], str] | None = None  # --barge-in-baseline: that run's summary and folder
    triton_trace: Path | None = None  # --triton-trace: Triton's request trace, switched on for the run
    trace_restore: dict[str, list[str]] | None = None  # the trace settings the server had before
    trace_problem: str | None = None  # why --triton-trace gives nothing (said in the barge_in section)
    _loop: asyncio.AbstractEventLoop | None = None
    _linger_cut: asyncio.Event | None = None

    # ---- the lifecycle -------------------------------------------------------------------------------------------
    async def run(self, view: RunView) -> int:
        """Prepare, run, write the results folder, close; the exit code (errors of preparing propagate)."""
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        try:
            view.preparing(self.config)
            engine = await self.prepare()
            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, self.interrupt)
                handled.append(sig)
            if self.stop_asked:  # asked while preparing: the run stops at once and still writes its results
                engine.interrupt()
            view.attach(self)
            try:
                await self.execute()
            finally:
                view.detach(self)
                summary = await self.finish()
            view.final(self, summary)
            await self.linger()
            return self.exit_code()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            await self.close()

    def interrupt(self) -> None:
        """The user's stop (Ctrl-C, SIGTERM, the dashboard's q): stop sending, drain, write the results."""
        self.stop_asked = True
        if self._linger_cut is not None:
            self._linger_cut.set()
        if self.engine is not None and not self.engine.state.stopping:
            self.engine.interrupt()

    # ---- before the first request --------------------------------------------------------------------------
    def start_emulator(self, texts: tuple[str, ...] = ()) -> None:
        """Start the API's emulated server (blocking, ~1 s) into the results folder and point the run at it. The
        run's ``texts`` are spoken into the emulator's speech cache first (once: later runs find them there)."""
        from cvload.emulator import get_profile
        from cvload.emulator.launch import EmulatorSettings

        cfg = self.config
        root = (self.out_dir / "emulator") if self.out_dir else Path(tempfile.mkdtemp(prefix="cvload-emu-"))
        settings = EmulatorSettings(profile=get_profile(cfg.profile or "demo", cfg.profile_set), model=cfg.model,
                                    mode=cfg.mode, pipeline=cfg.pipeline, max_conc=cfg.max_conc,
                                    sample_rate=cfg.sample_rate, workdir=root, texts=texts,
                                    unload_on_stop=False)
        self.server = api_spec(cfg.api).emulated(settings).start()
        self.emulator_trace = self.server.trace_path
        self.config = cfg.merged({"server": [self.server.address(cfg.protocol_used)]})
        if cfg.metrics_url is None:  # None where the server has no metrics endpoint
            self.config = self.config.merged({"metrics_url": self.server.metrics_url})

    async def prepare(self) -> LoadDriver:
        from cvload.measure.slo import parse_objectives, request_check
        from cvload.settings.inputs import load_items

        cfg = self.config.validate()
        self.objectives = parse_objectives(cfg.slo)  # a misspelled metric fails before any load
        items = load_items(cfg.inputs, spk_cache=cfg.spk_cache)
        if not items:
            raise UsageError(f"no input items in {cfg.inputs or 'the built-in set'}")
        label = run_label(cfg.api, cfg.protocol, cfg.mode, cfg.name)
        self.out_dir = Path(cfg.out) if cfg.out else default_out_dir(label)
        self.writer = ResultsWriter(self.out_dir)
        if cfg.emulator:
            # In this (main) thread: the server's parent-death signal follows the thread that started it.
            self.start_emulator(tuple(item.target_text for item in items))
            cfg = self.config
        for address in cfg.addresses():
            self.targets.append(make_target(cfg.protocol_used, cfg.mode, address, cfg.model,
                                            timeout=cfg.request_timeout, config=cfg))
        try:
            self.infos = list(await asyncio.gather(*(t.open() for t in self.targets)))
        except BaseException:
            await self.close()
            raise
        await self._start_listening()
        await self._trace_on()
        self.stats_before = await self._statistics()
        self.started_wall = time.time()
        self.writer.write_json("config.json", {
            "config": cfg.public_json(),  # header values as ***
            "versions": _versions(),
            "servers": [{"address": i.address, "protocol": i.protocol, "mode": i.mode, "model": i.model,
                         "decoupled": i.decoupled, "server_version": i.server_version} for i in self.infos],
            "inputs": {"count": len(items), "source": cfg.inputs or "built-in"},
            "started_at": _iso(self.started_wall),
        })
        if self.infos and self.infos[0].model_config:
            self.writer.write_json("model_config.json", self.infos[0].model_config)
        self._loop = asyncio.get_running_loop()
        # The results folder first: a listener added later (a sweep's levels) finds every record written.
        self.events.finished.add_listener(self.writer.on_record, first=True)
        self.tally = Tally(meets=request_check(self.objectives))
        self.events.finished.add_listener(self.tally.add)
        if cfg.barge_in is not None:
            self.barge_in = BargeInTally(cfg.barge_in)
            self.events.finished.add_listener(self.barge_in.add)
        self.events.finished.add_listener(self.recent.append)
        self.writer.on_error = self._records_failed
        if cfg.save_audio:
            self.events.audio.add_listener(self.writer.write_audio)
        self.exporter = self._make_exporter()
        driver = self.engine = await self._driver(cfg, items)
        if driver.health is not None:  # a fleet: the client section is its load processes' loops
            self.loop_health = driver.health
        self.telemetry = self._make_telemetry()
        return driver

    async def _driver(self, cfg: RunConfig, items: list[Any]) -> LoadDriver:
        """The run's driver, started: a Ray fleet (--ray-address), a fleet of this host's processes
        (--processes N), or an engine in this process."""
        driver: LoadDriver
        if cfg.ray_address:
            from cvload.load.ray_fleet import ray_fleet

            driver = await ray_fleet(cfg, len(items), self.events, until_drained=self.until_drained)
        else:
            from cvload.load.process_fleet import ProcessFleet, resolve_processes

            count = resolve_processes(cfg)
            driver = (ProcessFleet(cfg, count, len(items), self.events, until_drained=self.until_drained)
                      if count > 1 else
                      Engine(cfg, self.targets, items, events=self.events, until_drained=self.until_drained))
        try:
            if self.content is not None and isinstance(driver, Engine):  # a fleet's processes check their own
                await self.content.start()
                driver.content = self.content
            await driver.start()
        except BaseException:
            await driver.close()
            raise
        return driver

    def _make_exporter(self) -> Exporter | None:
        """--prometheus-port/--prometheus-push: listening and the first push happen here, before the driver
        starts, so a busy port or a refused Pushgateway fails before any load (exit 2)."""
        cfg = self.config
        if cfg.prometheus_port is None and not cfg.prometheus_push:
            return None
        assert self.out_dir is not None and self.writer is not None

        def state() -> EngineState:
            return self.engine.state if self.engine is not None else EngineState()

        gauges = LiveGauges(
            in_flight=lambda: self.engine.inflight_count if self.engine is not None else None,
            requested_concurrency=lambda: state().concurrency if cfg.closed_loop else None,
            requested_rate=lambda: None if cfg.closed_loop else state().rate,
            client=lambda: self.loop_health.live() if state().started else None)
        mode = self.infos[0].mode if self.infos else cfg.mode
        exporter = Exporter(run_id=self.out_dir.name, api=cfg.api, protocol=cfg.protocol_used, mode=mode,
                            gauges=gauges)
        if cfg.prometheus_port is not None:
            exporter.serve(cfg.prometheus_port, cfg.prometheus_address)
            print(f"cvload: metrics on {exporter.url} (run_id {self.out_dir.name})", file=sys.stderr, flush=True)
        if cfg.prometheus_push:
            exporter.push_to(cfg.prometheus_push)
        self.events.finished.add_listener(exporter.observe)
        return exporter

    def export_level(self, level: float | None) -> None:
        """A sweep's load level, as the ``cvload_sweep_level`` gauge."""
        if self.exporter is not None:
            self.exporter.set_level(level)

    async def linger(self) -> None:
        """Keep the metrics endpoint up ``--prometheus-linger`` after the run (the last scrape sees the final
        numbers), unless the user stops; then stop it, after the last push."""
        exporter = self.exporter
        if exporter is None:
            return
        self.exporter = None
        linger = self.config.prometheus_linger if self.config.prometheus_linger is not None else DEFAULT_LINGER_S
        self._linger_cut = asyncio.Event()
        exporter.finish()
        if exporter.port is not None and linger > 0 and not self.stop_asked:
            print(f"cvload: metrics stay on {exporter.url} for {linger:g} s for the last scrape "
                  "(--prometheus-linger; Ctrl-C ends it now)", file=sys.stderr, flush=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._linger_cut.wait(), linger)
        loop = asyncio.get_running_loop()
        for warning in await loop.run_in_executor(None, exporter.close):
            print(f"cvload: --prometheus-push: {warning}", file=sys.stderr, flush=True)

    async def _start_listening(self) -> None:
        """The VAD model and the recogniser are checked before any load (the recogniser's processes start with the
        driver: in this process's helpers, or in each load process of a fleet)."""
        cfg = self.config
        if cfg.onset:
            from cvload.listen.vad import model_path

            model_path()
        if cfg.check_content is not None:
            from cvload.listen.live import ContentChecker, ContentTally

            self.content = ContentChecker.for_run(cfg)
            self.content_tally = ContentTally()
            self.events.finished.add_listener(self.content_tally.add)
            try:
                await self.content.validate()
            except BaseException:
                await self.close()
                raise

    def _records_failed(self, reason: str) -> None:
        """From the records writer's thread: a record could not be written, so stop sending (exit 1)."""
        engine, loop = self.engine, self._loop
        if engine is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: the run is over anyway
                loop.call_soon_threadsafe(engine.abort, reason)

    def _metrics_url(self) -> str | None:
        from cvload.telemetry import default_metrics_url, normalize_metrics_url

        cfg = self.config
        if cfg.metrics_url:
            return None if cfg.metrics_url == "none" else normalize_metrics_url(cfg.metrics_url)
        if not api_spec(cfg.api).triton_telemetry:  # no metrics beside it: GPU from NVML or a given --metrics-url
            return None
        return default_metrics_url(cfg.addresses()[0], cfg.protocol_used)

    def _make_telemetry(self) -> Telemetry | None:
        if self.config.gpu_source == "none" and self.config.metrics_url == "none":
            return None
        from cvload.telemetry import Telemetry

        assert self.out_dir is not None
        triton = api_spec(self.config.api).triton_telemetry
        telemetry = Telemetry(metrics_url=self._metrics_url(), stats_source=self._statistics if triton else None,
                              interval=self.config.telemetry_interval, gpu_source=self.config.gpu_source,
                              out_path=self.out_dir / "telemetry.jsonl")
        if not triton:  # said on the dashboard's GPU panel and in the summary's telemetry warnings
            telemetry.warnings.append(
                f"--api {self.config.api}: no Triton statistics or metrics; GPU from "
                + (f"--metrics-url {self.config.metrics_url}" if telemetry.metrics_url else
                   "this host's NVML (--gpu-source nvml), or pass --metrics-url (e.g. a DCGM exporter)"))
        return telemetry

    def _server_here(self) -> bool:
        """Whether the server runs on this host (the embedded one, or a loopback address): it shares its CPUs."""
        if self.config.emulator:
            return True
        hosts = [urlsplit(a if "://" in a else f"//{a}").hostname or "" for a in self.config.addresses()]
        return bool(hosts) and all(h in ("localhost", "::1") or h.startswith("127.") for h in hosts)

    async def _statistics(self) -> dict[str, Any] | None:
        try:
            return await self.targets[0].statistics() if self.targets else None
        except Exception:  # noqa: BLE001 - statistics are a bonus, never a failure
            return None

    # ---- the run -------------------------------------------------------------------------------------------
    async def execute(self) -> RunResult:
        assert self.engine is not None
        if self.telemetry is not None:
            await self.telemetry.start()
            self.events.measure_start.add_listener(self.telemetry.mark_measure_start)
        quiet = QuietCollections()
        quiet.start()
        self.loop_health.server_here = self._server_here()
        self.loop_health.start()
        try:
            self.result = await self.engine.run()
        finally:
            self.loop_health.stop()
            quiet.stop()
            if self.telemetry is not None:
                await self.telemetry.stop()
        return self.result

    async def finish(self) -> dict[str, Any]:
        """Write summary, stats diff and audio; evaluate objectives. Safe to call after a failed run."""
        assert self.writer is not None and self.engine is not None
        result = self.result
        state = self.engine.state
        cfg = self.config
        load = ({"kind": "closed", "num_tasks": cfg.concurrency} if cfg.closed_loop else
                {"kind": "open", "rate": cfg.rate, "arrival": cfg.arrival, "max_inflight": cfg.max_inflight})
        status = "aborted" if state.aborted else "interrupted" if state.interrupted else "completed"
        measured = self.tally.summary(wall_s=result.wall_s if result else 0.0,
                                      concurrency=result.concurrency if result else None)
        from cvload.telemetry.server_release import token2wav_calls

        barge_in = await self.barge_in_section(self.barge_in, self.out_dir, token2wav_calls(self.stats_before))
        await self._trace_off()
        summary = self.build_summary(measured, load=load, status=status, abort_reason=state.aborted,
                                     started_wall=self.started_wall, finished_wall=time.time(), extra=barge_in)
        stats_after = await self._statistics()
        if self.stats_before is not None and stats_after is not None:
            from cvload.telemetry import stats_diff

            self.writer.write_json("server_stats.json", {"models": stats_diff(self.stats_before, stats_after)})
        self.writer.write_summary(summary)
        self.summary = summary
        return summary

    async def barge_in_section(self, tally: BargeInTally | None, out_dir: Path | None,
                               token2wav_before: int | None = None) -> dict[str, Any]:
        """--barge-in: the summary's ``barge_in`` section (cvload/measure/barge_in_summary.py) of a run or a sweep level,
        its release times from Triton's request trace (--triton-trace) or the emulated server's own trace where
        there is one (waited for: a server ignoring cancellations ends its requests late), and the token2wav calls
        since ``token2wav_before`` (Triton's statistics, once the server went quiet)."""
        if tally is None:
            return {}
        baseline = self.baseline
        wait_s = min(30.0, self.config.request_timeout)
        calls = None
        if token2wav_before is not None:
            after = await self._quiet_token2wav(wait_s)
            calls = None if after is None else after - token2wav_before
            if calls is not None:  # the server is done: a trace not written within seconds will not come
                wait_s = min(wait_s, TRACE_GRACE_S)
        own_trace = None if self.config.triton_trace is not None else self.emulator_trace
        section = await asyncio.get_running_loop().run_in_executor(None, lambda: tally.summary(
            out_dir, own_trace, wait_s=wait_s, triton_trace=self.triton_trace, token2wav_calls=calls,
            baseline=baseline[0] if baseline else None, baseline_dir=baseline[1] if baseline else None))
        if self.trace_problem is not None:
            section["triton_trace_problem"] = self.trace_problem
        return {"barge_in": section}

    async def _quiet_token2wav(self, wait_s: float) -> int | None:
        """The server's token2wav calls once no new one came for ``QUIET_S`` (a front that ignores cancellation
        goes on after the run), or after ``wait_s``."""
        from cvload.telemetry.server_release import Settling, token2wav_calls

        first = token2wav_calls(await self._statistics())
        if first is None:
            return None
        calls, deadline = Settling(first), time.monotonic() + wait_s
        while not calls.settled(deadline):
            await asyncio.sleep(0.2)
            calls.see(token2wav_calls(await self._statistics()))
        return calls.last

    async def _trace_on(self) -> None:
        """--triton-trace: every request traced (timestamps) for the run, through the trace API; the server must
        name its trace file at start (``--trace-config triton,file=F``: the API cannot set it)."""
        from cvload.telemetry.server_release import TRACE_KEYS, TRACE_ON

        wanted = self.config.triton_trace
        if wanted is None or not self.targets:
            return
        try:
            before = await self.targets[0].trace_setting()
            named = ((before or {}).get("trace_file") or [""])[0]
            mode = ((before or {}).get("trace_mode") or ["triton"])[0]
            if before is None:
                self.trace_problem = "this target has no trace API"
            elif not named:
                self.trace_problem = ("the server has no trace file: start tritonserver with --trace-config "
                                      "triton,file=FILE (the trace API cannot set the file)")
            elif mode != "triton":
                self.trace_problem = f"the server traces in {mode} mode: start it with --trace-config mode=triton"
            else:
                self.trace_restore = {k: before[k] for k in TRACE_KEYS if k in before}
                await self.targets[0].trace_setting(TRACE_ON)
                self.triton_trace = Path(wanted or named)
        except Exception as exc:  # noqa: BLE001 - the trace is a bonus: the run goes on with the client's view
            self.trace_problem = f"the trace settings could not be changed: {str(exc).splitlines()[0][:200]}"
        if self.trace_problem is not None:
            sys.stderr.write(f"warning: --triton-trace: {self.trace_problem}; the release comes from the client\n")

    async def _trace_off(self) -> None:
        """The trace settings the server had before the run."""
        restore, self.trace_restore = self.trace_restore, None
        if restore and self.targets:
            with contextlib.suppress(Exception):  # a server gone away keeps what it had
                await self.targets[0].trace_setting(restore)

    def build_summary(self, measured: dict[str, Any], *, load: dict[str, Any], status: str,
                      abort_reason: str | None, started_wall: float, finished_wall: float,
                      window: tuple[float, float] | None = None,
                      extra: dict[str, Any] | None = None,
                      content: ContentTally | None = None) -> dict[str, Any]:
        """summary.json (schema cvload.summary/1) of this session's run, or of a part of it (a sweep level):
        the one builder, so every summary has the same keys. ``measured``: ``Tally.summary``/``summarize`` over
        its records; ``window``: the part's monotonic start and end (outages and telemetry over it); ``extra``:
        keys of the part's own (a sweep level's ``sweep_level``), after ``load``; ``content``: the part's content
        counters (cvload.listen.live.ContentTally of its records; default: the run's). Objectives judged on it."""
        from cvload.measure.slo import all_met, evaluate

        cfg = self.config
        state = self.engine.state if self.engine is not None else EngineState()
        summary: dict[str, Any] = {"schema": SUMMARY_SCHEMA, "cvload_version": __version__}
        summary["target"] = {"servers": cfg.addresses(), "protocol": cfg.protocol, "mode": cfg.mode,
                             "model": cfg.model}
        tls = self.targets[0].transport.describe() if self.targets else None
        if tls is not None:
            summary["target"]["tls"] = tls
        if api_spec(cfg.api).in_summary:  # another server API: its request kind says what a chunk is
            summary["target"].update(api=cfg.api, mode=self.infos[0].mode if self.infos else cfg.mode,
                                     inference=cfg.inference)
        summary["load"] = load
        summary.update(extra or {})
        summary["status"] = status
        summary["abort_reason"] = abort_reason
        outages = state.outages if window is None else [  # --on-server-loss continue
            o for o in state.outages if o.start < window[1] and (o.end is None or o.end > window[0])]
        summary["outages"] = [outage.to_json(state.started) for outage in outages]
        summary["started_at"] = _iso(started_wall)
        summary["finished_at"] = _iso(finished_wall)
        summary.update(measured)
        if cfg.insecure:
            summary["warnings"] = [INSECURE_WARNING, *summary.get("warnings", [])]
        live, tally = self._checker_live(), content or self.content_tally
        if live is not None and tally is not None:  # --check-content: the checker's settings, the part's counts
            summary["content"] = tally.section(live)
        if self.telemetry is not None:
            summary["telemetry"] = self.telemetry.summary(None if window is None else window[0])
        summary["client"] = self.loop_health.summary()
        if self.exporter is not None:
            summary["prometheus"] = {"run_id": self.exporter.run_labels[0], "port": self.exporter.port,
                                     "push": cfg.prometheus_push}
        verdicts = evaluate(self.objectives, summary)
        summary["slo"] = verdicts
        summary["slo_passed"] = all_met(verdicts)
        return summary

    def _checker_live(self) -> dict[str, Any] | None:
        """--check-content: the checker's live word (sample, backlog, recogniser speed), of this process's checker
        or of a fleet's load processes' together; None without checks."""
        if self.config.check_content is None or self.engine is None:
            return None
        return self.engine.content_summary()

    def content_live(self) -> dict[str, Any] | None:
        """What views show of the checks now: the checker's live word with the run's content counts so far (from
        its records); None without checks."""
        live = self._checker_live()
        return live if live is None or self.content_tally is None else self.content_tally.section(live)

    def exit_code(self) -> int:
        assert self.summary is not None
        if self.summary["status"] == "aborted":
            return EXIT_RUNTIME
        if self.summary["status"] == "interrupted" and self.summary["requests"]["total"] == 0:
            return EXIT_INTERRUPTED  # stopped before anything was measured
        return EXIT_OK if self.summary["slo_passed"] else EXIT_SLO_FAILED

    async def close(self) -> None:
        await self._trace_off()  # a run that failed before its summary
        if self.content is not None:
            self.content.close()
            self.content = None
        if self.engine is not None:  # a fleet's load processes end here
            await self.engine.close()
        for target in self.targets:
            with contextlib.suppress(Exception):  # closing a broken connection must not hide the result
                await target.close()
        if self.exporter is not None:  # the run failed before its linger: no waiting, but the last push
            await asyncio.get_running_loop().run_in_executor(None, self.exporter.close)
            self.exporter = None
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.server.stop)
            self.server = None
