"""cvload's live numbers as Prometheus metrics (``--prometheus-port``, ``--prometheus-push``), so what the clients
experienced lines up on one Grafana time axis with what the server says about itself (Triton's ``/metrics``).

Every number comes from a definition made elsewhere: the histograms are the request metrics of
``cvload.measure.metrics`` (same counted values as summary.json, so Prometheus' quantiles agree with the summary within
a bucket), the request counters follow ``RunTotals.add`` (warm-up and user-cancelled requests apart from the
measured ones), the gauges read the driver's state and the measuring process's own loop health at scrape time.

Cheap where it matters: a finished record costs a few histogram observations (a lock and a bisect each) on the
measuring loop; rendering the text happens in the scrape's (or the push's) own thread, once per scrape.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cvload.errors import UsageError
from cvload.measure.metrics import BY_NAME, counted, playback_stalls
from cvload.results.records import ERR_CANCELLED, RequestRecord

PREFIX = "cvload"
DEFAULT_LINGER_S = 15.0  # one scrape interval of the usual 15 s: the last scrape sees the final numbers
PUSH_INTERVAL_S = 5.0

# Classic buckets (the Python client has no native histograms) chosen for TTS: first chunks of 50 ms to a few
# seconds with 25-100 ms steps where objectives usually sit (200-800 ms); whole requests of seconds; RTF around 1.
_LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8,
                    1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
_TOTAL_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0)
_RTF_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)


@dataclass(frozen=True)
class ExportedHistogram:
    """A request metric of ``cvload.measure.metrics`` as a Prometheus histogram (latencies in seconds, its base unit)."""

    metric: str  # name in cvload.measure.metrics.BY_NAME
    name: str  # without the prefix
    buckets: tuple[float, ...]

    @property
    def scale(self) -> float:
        return 0.001 if BY_NAME[self.metric].unit == "ms" else 1.0


HISTOGRAMS = (
    ExportedHistogram("first_chunk_latency_ms", "first_chunk_seconds", _LATENCY_BUCKETS),
    ExportedHistogram("second_chunk_latency_ms", "second_chunk_seconds", _LATENCY_BUCKETS),
    ExportedHistogram("total_latency_ms", "total_latency_seconds", _TOTAL_BUCKETS),
    ExportedHistogram("rtf", "rtf", _RTF_BUCKETS),
)
RUN_LABELS = ("run_id", "api", "protocol", "mode")  # on every series; request series add ``server``


def bucket_of(value_s: float, buckets: tuple[float, ...]) -> tuple[float, float]:
    """The (lower, upper] bounds of the classic bucket ``value_s`` falls in (for checks against summary.json)."""
    lower = 0.0
    for upper in buckets:
        if value_s <= upper:
            return lower, upper
        lower = upper
    return lower, float("inf")


@dataclass
class LiveGauges:
    """Where the gauges read from at scrape time: callables, so fleets and single engines look alike."""

    in_flight: Callable[[], float | None] = lambda: None
    requested_concurrency: Callable[[], float | None] = lambda: None
    requested_rate: Callable[[], float | None] = lambda: None
    client: Callable[[], dict[str, Any] | None] = lambda: None  # the loop health's ``live()``


class _GaugeCollector(Collector):
    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ex, labels = self.exporter, list(self.exporter.run_labels)
        live = ex.gauges

        def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily | None:
            if value is None:
                return None
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(RUN_LABELS))
            family.add_metric(labels, float(value))
            return family

        client: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # a scrape must never fail on a reading that is not there yet
            client = live.client() or {}
        lag = (client.get("loop_lag_ms") or {}).get("p99")
        families = (
            gauge("in_flight_requests", "Requests sent and not finished, now", _safe(live.in_flight)),
            gauge("requested_concurrency", "Closed loop: workers asked for now", _safe(live.requested_concurrency)),
            gauge("requested_rate", "Open loop: requests per second asked for now", _safe(live.requested_rate)),
            gauge("sweep_level", "The sweep's load level being measured (streams or requests/s)", ex.level),
            gauge("loop_lag_seconds", "The measuring loop's lag, p99 over the last ~2 s (timing error of the "
                  "stamps)", None if lag is None else lag / 1000.0),
            gauge("client_cpu_cores", "CPU cores the measuring process used recently", client.get("cpu_cores")),
            gauge("run_start_timestamp_seconds", "Unix time the run started", ex.started_at),
            gauge("run_finished", "1 once the run ended (the numbers are final)", 1.0 if ex.finished else 0.0),
        )
        yield from (f for f in families if f is not None)


def _safe(read: Callable[[], float | None]) -> float | None:
    try:
        return read()
    except Exception:  # noqa: BLE001 - see _GaugeCollector.collect
        return None


class Exporter:
    """The run's metrics in one private registry: ``observe`` each finished record (the measuring loop),
    ``serve`` them on a port and/or ``push`` them to a Pushgateway; ``close`` after the linger."""

    def __init__(self, *, run_id: str, api: str, protocol: str, mode: str,
                 gauges: LiveGauges | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.run_labels = (run_id, api, protocol, mode)
        self.gauges = gauges or LiveGauges()
        self.level: float | None = None
        self.started_at = time.time()
        self.finished = False
        request_labels = (*RUN_LABELS, "server")
        self._histograms = [(h, Histogram(f"{PREFIX}_{h.name}", BY_NAME[h.metric].title + " (measured requests)",
                                          request_labels, registry=self.registry, buckets=h.buckets))
                            for h in HISTOGRAMS]
        self._requests = Counter(f"{PREFIX}_requests", "Finished requests by outcome: ok and failed are the "
                                 "measured ones (summary requests.total); warmup, cancelled and barged_in (abandoned by "
                                 "their listener, --barge-in) are not",
                                 (*request_labels, "outcome"), registry=self.registry)
        self._errors = Counter(f"{PREFIX}_request_errors", "Failed measured requests by error kind",
                               (*request_labels, "kind"), registry=self.registry)
        self._flags = Counter(f"{PREFIX}_audio_flags", "Measured requests whose audio failed a check, by flag",
                              (*request_labels, "flag"), registry=self.registry)
        self._audio = Counter(f"{PREFIX}_audio_seconds", "Audio of the successful measured requests",
                              request_labels, registry=self.registry)
        self._stalls = Counter(f"{PREFIX}_playback_stalls", "Playback stalls of successful measured requests",
                               request_labels, registry=self.registry)
        self._stall_s = Counter(f"{PREFIX}_playback_stall_seconds", "Time listeners waited in stalls",
                                request_labels, registry=self.registry)
        self.registry.register(_GaugeCollector(self))
        self._series: dict[str, _ServerSeries] = {}
        self._http: Any = None
        self._http_thread: threading.Thread | None = None
        self._push: _Pusher | None = None

    # ---- the measuring loop's side ---------------------------------------------------------------------------
    def observe(self, record: RequestRecord) -> None:
        """Count one finished request, the way ``RunTotals.add`` and ``Tally.add`` do."""
        series = self._series.get(record.server)
        if series is None:
            series = self._series[record.server] = _ServerSeries(self, record.server)
        if record.warmup:
            series.warmup.inc()
            return
        if record.error_kind == ERR_CANCELLED:
            series.cancelled.inc()
            return
        if record.barged_in:  # abandoned by its listener: its own outcome; its first chunk was heard
            series.barged_in.inc()
            for metric, scale, histogram in series.histograms:
                value = counted(record, metric)
                if value is not None:
                    histogram.observe(value * scale)
            return
        if record.error_kind:
            self._errors.labels(*series.labels, record.error_kind).inc()
        for flag in record.flags:
            self._flags.labels(*series.labels, flag).inc()
        for metric, scale, histogram in series.histograms:
            value = counted(record, metric)
            if value is not None:
                histogram.observe(value * scale)
        if not record.ok:
            series.failed.inc()
            return
        series.ok.inc()
        series.audio.inc(record.audio_s)
        stalls, waited = playback_stalls(record)
        if stalls:
            series.stalls.inc(stalls)
            series.stall_s.inc(waited)

    def set_level(self, level: float | None) -> None:
        self.level = level

    # ---- outputs -----------------------------------------------------------------------------------------
    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """The scrape endpoint in its own thread (``/metrics``); a busy port is the user's to fix (exit 2)."""
        from prometheus_client import start_http_server

        try:
            self._http, self._http_thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise UsageError(f"--prometheus-port {port}: cannot listen on {address}:{port} ({exc.strerror or exc})",
                             hint="pick a free port (or 0 for any free one)") from exc

    @property
    def port(self) -> int | None:
        return self._http.server_port if self._http is not None else None

    def push_to(self, url: str, interval_s: float = PUSH_INTERVAL_S) -> None:
        """Push to a Pushgateway now (a refused or wrong URL fails here, before any load) and every
        ``interval_s`` from a thread; the last push happens in ``close``."""
        self._push = _Pusher(self, url, interval_s)
        self._push.push()
        self._push.start()

    @property
    def url(self) -> str | None:
        if self._http is None:
            return None
        host = self._http.server_address[0]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}/metrics"

    def finish(self) -> None:
        """The run is over: ``cvload_run_finished`` turns 1, so a scraper (or a test) knows the numbers are final."""
        self.finished = True

    def close(self) -> list[str]:
        """The last push, then the endpoint stops. Returns warnings (a failed push)."""
        self.finished = True
        warnings: list[str] = []
        if self._push is not None:
            warnings += self._push.stop()
            self._push = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        return warnings


class _ServerSeries:
    """One server's labelled children, looked up once (``labels()`` per observation costs more than the rest)."""

    def __init__(self, exporter: Exporter, server: str) -> None:
        self.labels = (*exporter.run_labels, server)
        counter = exporter._requests
        self.ok, self.failed = counter.labels(*self.labels, "ok"), counter.labels(*self.labels, "failed")
        self.warmup, self.cancelled = counter.labels(*self.labels, "warmup"), counter.labels(*self.labels, "cancelled")
        self.barged_in = counter.labels(*self.labels, "barged_in")
        self.histograms = [(BY_NAME[h.metric], h.scale, hist.labels(*self.labels)) for h, hist in exporter._histograms]
        self.audio = exporter._audio.labels(*self.labels)
        self.stalls, self.stall_s = exporter._stalls.labels(*self.labels), exporter._stall_s.labels(*self.labels)


class _Pusher:
    def __init__(self, exporter: Exporter, url: str, interval_s: float) -> None:
        self.exporter, self.url, self.interval_s = exporter, url, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cvload-prometheus-push", daemon=True)
        self.failures: list[str] = []

    def push(self) -> None:
        from prometheus_client import push_to_gateway

        run_id = self.exporter.run_labels[0]
        try:
            push_to_gateway(self.url, job=PREFIX, registry=self.exporter.registry,
                            grouping_key={"run_id": run_id}, timeout=5)
        except Exception as exc:  # noqa: BLE001 - urllib's errors vary; all mean "could not push"
            raise UsageError(f"--prometheus-push {self.url}: {exc}",
                             hint="start a Pushgateway there (default port 9091) or fix the URL") from exc

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.push()
            except UsageError as exc:
                self.failures.append(str(exc))

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 6)
        try:
            self.push()
        except UsageError as exc:
            return [f"the last push failed: {exc}"]
        return [f"{len(self.failures)} push(es) during the run failed: {self.failures[-1]}"] if self.failures else []
