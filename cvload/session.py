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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cvload import __version__
from cvload.config import RunConfig
from cvload.engine import Engine, RunResult
from cvload.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_SLO_FAILED, UsageError
from cvload.loop_health import LoopHealth
from cvload.metrics import Tally
from cvload.results import SUMMARY_SCHEMA, ResultsWriter, default_out_dir
from cvload.targets import make_target
from cvload.targets.base import Target, TargetInfo
from cvload.transport import INSECURE_WARNING


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


@dataclass
class Session:
    config: RunConfig
    out_dir: Path | None = None
    writer: ResultsWriter | None = None
    engine: Engine | None = None
    targets: list[Target] = field(default_factory=list)
    infos: list[TargetInfo] = field(default_factory=list)
    objectives: list[Any] = field(default_factory=list)
    telemetry: Any = None
    server: Any = None  # the embedded TritonServer when --emulator
    stats_before: dict[str, Any] | None = None
    started_wall: float = 0.0
    summary: dict[str, Any] | None = None
    result: RunResult | None = None
    # The summary's inputs, folded from every record as it finishes (the records themselves go to records.jsonl).
    tally: Tally = field(default_factory=Tally)
    stop_asked: bool = False
    loop_health: LoopHealth = field(default_factory=LoopHealth)  # this process's own timing error
    content: Any = None  # --check-content: the live checker (cvload.listening.ContentChecker)
    _loop: asyncio.AbstractEventLoop | None = None

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
            return self.exit_code()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            await self.close()

    def interrupt(self) -> None:
        """The user's stop (Ctrl-C, SIGTERM, the dashboard's q): stop sending, drain, write the results."""
        self.stop_asked = True
        if self.engine is not None and not self.engine.state.stopping:
            self.engine.interrupt()

    # ---- before the first request --------------------------------------------------------------------------
    def start_emulator(self) -> None:
        """Start the embedded server (blocking, ~1 s) into the results folder and point the run at it."""
        from cvload.emulator import EmulatedModel, build_pipeline_repository, build_repository, get_profile
        from cvload.triton.launcher import TritonServer

        cfg = self.config
        profile = get_profile(cfg.profile or "demo", cfg.profile_set)
        root = (self.out_dir / "emulator") if self.out_dir else Path(tempfile.mkdtemp(prefix="cvload-emu-"))
        if cfg.api == "openai":  # the OpenAI-style speech server, in its own process, with the same profile
            from cvload.emulator.openai_server import OpenAIServer

            self.server = OpenAIServer(profile, model=cfg.model, max_conc=cfg.max_conc or 0, workdir=root,
                                       die_with_parent=True).start()
            self.config = cfg.merged({"server": [self.server.url]})
            return
        if cfg.api == "cosyvoice":  # CosyVoice's Python runtime, in a child process; it has no metrics endpoint
            from cvload.emulator.runtime_server import DEFAULT_MAX_CONC, RuntimeServer

            self.server = RuntimeServer(profile, max_conc=cfg.max_conc or DEFAULT_MAX_CONC,
                                        sample_rate=cfg.sample_rate or 24000, workdir=root, die_with_parent=True)
            self.server.start()
            address = self.server.grpc_url if cfg.protocol == "grpc" else self.server.http_url
            self.config = cfg.merged({"server": [address]})
            return
        if cfg.pipeline:
            repo = build_pipeline_repository(root, profile, name=cfg.model, mode=cfg.mode)
        else:
            repo = build_repository(root, [EmulatedModel(name=cfg.model, profile=profile, mode=cfg.mode)])
        self.server = TritonServer(repo, workdir=root, die_with_parent=True)
        self.server.start()
        address = self.server.grpc_url if cfg.protocol == "grpc" else self.server.http_url
        self.config = cfg.merged({"server": [address]})
        if cfg.metrics_url is None:
            self.config = self.config.merged({"metrics_url": self.server.metrics_url})

    async def prepare(self) -> Engine:
        from cvload.inputs import load_items
        from cvload.slo import parse_objectives, request_check

        cfg = self.config.validate()
        self.objectives = parse_objectives(cfg.slo)  # a misspelled metric fails before any load
        items = load_items(cfg.inputs, spk_cache=cfg.spk_cache)
        if not items:
            raise UsageError(f"no input items in {cfg.inputs or 'the built-in set'}")
        label = f"{cfg.mode if cfg.api == 'triton' else cfg.api}-{cfg.protocol}" + (f"-{cfg.name}" if cfg.name else "")
        self.out_dir = Path(cfg.out) if cfg.out else default_out_dir(label)
        self.writer = ResultsWriter(self.out_dir)
        if cfg.emulator:
            # In this (main) thread: the server's parent-death signal follows the thread that started it.
            self.start_emulator()
            cfg = self.config
        for address in cfg.addresses():
            self.targets.append(make_target(cfg.protocol, cfg.mode, address, cfg.model,
                                            timeout=cfg.request_timeout, api=cfg.api, options=cfg))
        try:
            self.infos = list(await asyncio.gather(*(t.open() for t in self.targets)))
        except BaseException:
            await self.close()
            raise
        await self._start_listening()
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
        if cfg.ray_address:  # the load processes on a Ray cluster's nodes
            from cvload.ray_fleet import start_ray_fleet

            fleet = await start_ray_fleet(cfg, len(items))
        else:  # --processes: the load in several processes of this host
            from cvload.multiproc import start_fleet

            fleet = await start_fleet(cfg, len(items))
        if fleet is not None:
            self.engine, self.loop_health = fleet, fleet.health  # type: ignore[assignment]
        else:
            self.engine = Engine(cfg, self.targets, items)
        self._loop = asyncio.get_running_loop()
        if self.content is not None:
            self.engine.content = self.content
        self.engine.listeners.append(self.writer.on_record)
        self.tally = Tally(meets=request_check(self.objectives))
        self.engine.listeners.append(self.tally.add)
        self.writer.on_error = self._records_failed
        if cfg.save_audio:
            self.engine.on_audio = self.writer.write_audio
        self.telemetry = self._make_telemetry()
        return self.engine

    async def _start_listening(self) -> None:
        """The VAD model and the recogniser are checked (and the recogniser's processes loaded) before any load."""
        cfg = self.config
        if cfg.onset:
            from cvload.vad import model_path

            model_path()
        if cfg.check_content is not None:
            from cvload.content import DEFAULT_MAX_ERROR
            from cvload.listening import ContentChecker, Sampling

            max_error = DEFAULT_MAX_ERROR if cfg.max_content_error is None else float(cfg.max_content_error)
            self.content = ContentChecker(cfg.asr, Sampling.parse(cfg.check_content), max_error=max_error,
                                          workers=cfg.check_workers, language=cfg.language)
            try:
                await self.content.start()
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
        if cfg.api != "triton":  # no Triton metrics beside these servers: GPU from NVML or a given --metrics-url
            return None
        return default_metrics_url(cfg.addresses()[0], cfg.protocol)

    def _make_telemetry(self) -> Any:
        if self.config.gpu_source == "none" and self.config.metrics_url == "none":
            return None
        from cvload.telemetry import Telemetry

        assert self.out_dir is not None
        triton = self.config.api == "triton"
        telemetry = Telemetry(metrics_url=self._metrics_url(), stats_source=self._statistics if triton else None,
                              interval=self.config.telemetry_interval, gpu_source=self.config.gpu_source,
                              out_path=self.out_dir / "telemetry.jsonl")
        if not triton:  # said on the dashboard's GPU panel and in the summary's telemetry warnings
            telemetry.warnings.append(
                f"--api {self.config.api}: no Triton statistics or metrics; GPU from "
                + (f"--metrics-url {self.config.metrics_url}" if telemetry.metrics_url else
                   "this host's NVML (--gpu-source nvml), or pass --metrics-url (e.g. a DCGM exporter)"))
        return telemetry

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
            self.engine.on_measure_start = self.telemetry.mark_measure_start
        self.loop_health.start()
        try:
            self.result = await self.engine.run()
        finally:
            self.loop_health.stop()
            if self.telemetry is not None:
                await self.telemetry.stop()
        return self.result

    async def finish(self) -> dict[str, Any]:
        """Write summary, stats diff and audio; evaluate objectives. Safe to call after a failed run."""
        from cvload.slo import all_met, evaluate

        assert self.writer is not None and self.engine is not None
        result = self.result
        state = self.engine.state
        wall = result.wall_s if result else 0.0
        summary: dict[str, Any] = {"schema": SUMMARY_SCHEMA, "cvload_version": __version__}
        cfg = self.config
        summary["target"] = {"servers": cfg.addresses(), "protocol": cfg.protocol, "mode": cfg.mode,
                             "model": cfg.model}
        tls = self.targets[0].transport.describe() if self.targets else None
        if tls is not None:
            summary["target"]["tls"] = tls
        if cfg.insecure:
            summary["warnings"] = [INSECURE_WARNING]
        if cfg.api != "triton":  # another server API: its request kind says what a chunk is
            summary["target"].update(api=cfg.api, mode=self.infos[0].mode if self.infos else cfg.mode,
                                     inference=cfg.inference)
        summary["load"] = ({"kind": "closed", "num_tasks": cfg.concurrency} if cfg.closed_loop else
                           {"kind": "open", "rate": cfg.rate, "arrival": cfg.arrival,
                            "max_inflight": cfg.max_inflight})
        summary["status"] = "aborted" if state.aborted else "interrupted" if state.interrupted else "completed"
        summary["abort_reason"] = state.aborted
        summary["outages"] = [outage.to_json(state.started) for outage in state.outages]  # --on-server-loss continue
        summary["started_at"] = _iso(self.started_wall)
        summary["finished_at"] = _iso(time.time())
        summary.update(self.tally.summary(wall_s=wall, concurrency=result.concurrency if result else None))
        if self.content is not None:
            summary["content"] = self.content.summary()
        if self.telemetry is not None:
            summary["telemetry"] = self.telemetry.summary()
        summary["client"] = self.loop_health.summary()
        stats_after = await self._statistics()
        if self.stats_before is not None and stats_after is not None:
            from cvload.telemetry import stats_diff

            self.writer.write_json("server_stats.json", {"models": stats_diff(self.stats_before, stats_after)})
        verdicts = evaluate(self.objectives, summary)
        summary["slo"] = verdicts
        summary["slo_passed"] = all_met(verdicts)
        self.writer.write_summary(summary)
        self.summary = summary
        return summary

    def exit_code(self) -> int:
        assert self.summary is not None
        if self.summary["status"] == "aborted":
            return EXIT_RUNTIME
        if self.summary["status"] == "interrupted" and self.summary["requests"]["total"] == 0:
            return EXIT_INTERRUPTED  # stopped before anything was measured
        return EXIT_OK if self.summary["slo_passed"] else EXIT_SLO_FAILED

    async def close(self) -> None:
        if self.content is not None:
            self.content.close()
            self.content = None
        close_processes = getattr(self.engine, "close_processes", None)  # a fleet's load processes end here
        if close_processes is not None:
            await asyncio.get_running_loop().run_in_executor(None, close_processes)
        for target in self.targets:
            with contextlib.suppress(Exception):  # closing a broken connection must not hide the result
                await target.close()
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.server.stop)
            self.server = None
