"""Prometheus metrics of a serving or worker process, exposed at /metrics (adserve/app.py).

Events are counted where they happen through the small `observe_*` functions; what is a state
(the log writer's queue, spool and replay, the scorer and policy serving) is read at scrape time
by `ProcessStateCollector`, so no code path has to remember to update a gauge.

With several uvicorn workers set ``PROMETHEUS_MULTIPROC_DIR`` (an empty folder, before start):
counters and histograms are then summed over the workers (prometheus-client's multiprocess mode),
while the state series are those of the worker that answered the scrape.
"""

from __future__ import annotations

import gc
import os
import time
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from prometheus_client.metrics_core import Metric


__all__ = [
    "CONTENT_TYPE",
    "ProcessStateCollector",
    "build_registry",
    "exposition",
    "observe_decision",
    "observe_job_run",
    "observe_model_load",
    "observe_request",
    "observe_writer_flush",
    "watch_gc",
]

CONTENT_TYPE = (
    "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes, and every Prometheus reads
)
DecisionOutcome = Literal["served", "no_eligible_creative"]

disable_created_metrics()  # a `_created` series per counter doubles the scrape for nothing we use

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# one placement's scoring or choice: tens of microseconds (empirical) to milliseconds (Transformer)
_INFERENCE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_JOB_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)

# registry=None: each app builds its own registry over these (`build_registry`), so several apps in
# one process (tests) share the counts without registering a name twice.
HTTP_REQUEST_SECONDS = Histogram(
    "adserve_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
    registry=None,
)
DECISIONS = Counter(
    "adserve_decisions",
    "Placement decisions by outcome (served, no_eligible_creative)",
    ["outcome"],
    registry=None,
)
ELIGIBILITY_REMOVED = Counter(
    "adserve_eligibility_removed",
    "Creatives removed from placement decisions, by the first eligibility rule they failed",
    ["rule"],
    registry=None,
)
EXPLORED = Counter(
    "adserve_decisions_explored",
    "Served decisions whose creative the policy chose by exploring; explore rate = "
    "rate(adserve_decisions_explored_total) / rate(adserve_decisions_total{outcome='served'})",
    registry=None,
)
SCORING_SECONDS = Histogram(
    "adserve_scoring_seconds",
    "Scoring one placement's eligible creatives (the serving scorer: adserve_serving_info)",
    buckets=_INFERENCE_BUCKETS,
    registry=None,
)
CHOOSE_SECONDS = Histogram(
    "adserve_policy_choose_seconds",
    "The policy's choice for one placement (VW predict and sampling when the policy is vw)",
    buckets=_INFERENCE_BUCKETS,
    registry=None,
)
JOB_RUNS = Counter(
    "adserve_job_runs", "Job run attempts by job and status (ok, failed)", ["job", "status"], registry=None
)
JOB_SECONDS = Histogram(
    "adserve_job_run_duration_seconds",
    "Duration of job run attempts",
    ["job"],
    buckets=_JOB_BUCKETS,
    registry=None,
)
MODEL_LOADS = Counter(
    "adserve_model_loads",
    "Champion models this process loaded (hot swaps included), by kind and result (loaded, failed)",
    ["kind", "result"],
    registry=None,
)
WRITER_FLUSH_SECONDS = Histogram(
    "adserve_writer_flush_seconds",
    "Time to store (or spool) one log writer batch, by table",
    ["table"],
    buckets=_LATENCY_BUCKETS,
    registry=None,
)
GC_PAUSE_SECONDS = Histogram(
    "adserve_gc_pause_seconds",
    "Time the garbage collector held the process (and its event loop), by generation",
    ["generation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=None,
)
_EVENT_METRICS = (
    HTTP_REQUEST_SECONDS,
    DECISIONS,
    ELIGIBILITY_REMOVED,
    EXPLORED,
    SCORING_SECONDS,
    CHOOSE_SECONDS,
    JOB_RUNS,
    JOB_SECONDS,
    MODEL_LOADS,
    WRITER_FLUSH_SECONDS,
    GC_PAUSE_SECONDS,
)
for _outcome in ("served", "no_eligible_creative"):
    DECISIONS.labels(_outcome)  # both series exist from the start, at 0


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUEST_SECONDS.labels(method, route, str(status)).observe(seconds)


def observe_decision(
    outcome: DecisionOutcome,
    removed: Mapping[str, int],
    *,
    explored: bool = False,
    score_s: float | None = None,
    choose_s: float | None = None,
) -> None:
    """One placement decision: its outcome, the creatives eligibility removed by rule and, when
    served, whether the choice explored and how long scoring and choosing took."""
    DECISIONS.labels(outcome).inc()
    for rule, count in removed.items():
        ELIGIBILITY_REMOVED.labels(rule).inc(count)
    if explored:
        EXPLORED.inc()
    if score_s is not None:
        SCORING_SECONDS.observe(score_s)
    if choose_s is not None:
        CHOOSE_SECONDS.observe(choose_s)


_GC_PAUSES = [GC_PAUSE_SECONDS.labels(str(generation)) for generation in range(3)]
_gc_started = 0.0


def _observe_gc(phase: str, info: Mapping[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _GC_PAUSES[info["generation"]].observe(time.perf_counter() - _gc_started)


def watch_gc() -> None:
    """Times this process's garbage collections (once per process, however many apps it runs):
    a full collection stops every request the event loop holds."""
    if _observe_gc not in gc.callbacks:
        gc.callbacks.append(_observe_gc)


def observe_job_run(job: str, status: str, seconds: float) -> None:
    JOB_RUNS.labels(job, status).inc()
    JOB_SECONDS.labels(job).observe(seconds)


def observe_model_load(kind: str, result: Literal["loaded", "failed"]) -> None:
    MODEL_LOADS.labels(kind, result).inc()


def observe_writer_flush(table: str, seconds: float) -> None:
    WRITER_FLUSH_SECONDS.labels(table).observe(seconds)


class LogWriterState(Protocol):
    """What the scrape reads of `events.writer.LogWriter` (typed here: the writer reports its
    flushes to this module, so this module does not import it)."""

    online: bool
    caught_up: bool

    def stats(self) -> dict[str, int]: ...


# LogWriter.stats() keys that are levels, not running totals.
_WRITER_GAUGES = {
    "pending": (
        "adserve_writer_queue_rows",
        "Rows accepted by the log writer, not yet stored, spooled or dropped",
    ),
    "spool_bytes": ("adserve_writer_spool_bytes", "Bytes in this process's spool, waiting for Postgres"),
}
_ROWS_WRITTEN = "rows_written_"


def _writer_families(writer: LogWriterState) -> Iterator[Metric]:
    rows_written = CounterMetricFamily(
        "adserve_writer_rows_written", "Rows the log writer committed to Postgres, by table", labels=["table"]
    )
    for key, value in writer.stats().items():
        if key in _WRITER_GAUGES:
            name, documentation = _WRITER_GAUGES[key]
            yield GaugeMetricFamily(name, documentation, value=value)
        elif key.startswith(_ROWS_WRITTEN):
            rows_written.add_metric([key.removeprefix(_ROWS_WRITTEN)], value)
        else:
            yield CounterMetricFamily(f"adserve_writer_{key}", f"Log writer total: {key}", value=value)
    yield rows_written
    yield GaugeMetricFamily(
        "adserve_writer_online",
        "1 while Postgres answers the log writer (else it spools)",
        value=writer.online,
    )
    yield GaugeMetricFamily(
        "adserve_writer_caught_up",
        "1 when nothing spooled on this host waits to be replayed; 0 while a spool replays or waits",
        value=writer.caught_up,
    )


def _serving_families(serving: Mapping[str, Any]) -> Iterator[Metric]:
    info = InfoMetricFamily(
        "adserve_serving", "The scorer and policy the decision pipeline serves now", labels=["component"]
    )
    for component in ("scorer", "policy"):
        if component in serving:
            described = serving[component]
            info.add_metric(
                [component], {"kind": str(described["kind"]), "version": str(described["version"])}
            )
    yield info
    loaded = InfoMetricFamily(
        "adserve_champion_loaded", "Champion model versions this process has loaded", labels=["kind"]
    )
    for kind, version in (serving.get("champions_loaded") or {}).items():
        loaded.add_metric([kind], {"version": str(version)})
    yield loaded
    learned = (serving.get("policy") or {}).get("examples_learned")
    if learned is not None:
        yield GaugeMetricFamily(
            "adserve_policy_examples_learned",
            "Examples the serving VW policy has learned from",
            value=learned,
        )


def _job_families(finishes: Mapping[tuple[str, str], float]) -> Iterator[Metric]:
    latest = GaugeMetricFamily(
        "adserve_job_last_finished_timestamp_seconds",
        "When each job last finished with each status (job_runs, last 7 days), whichever process ran it",
        labels=["job", "status"],
    )
    for (job, status), finished in sorted(finishes.items()):
        latest.add_metric([job, status], finished)
    yield latest


class ProcessStateCollector(Collector):
    """Reads the process's state at scrape time: the log writer (`LogWriter.stats()`, online,
    caught up), what serves and the jobs' last finishes (read from job_runs before the scrape, so
    a separate jobs worker's runs show on every serving node). The writer getter returns None
    before the app has started."""

    def __init__(
        self,
        writer: Callable[[], LogWriterState | None],
        serving: Callable[[], Mapping[str, Any]],
        job_finishes: Callable[[], Mapping[tuple[str, str], float]] = dict,
    ) -> None:
        self._writer = writer
        self._serving = serving
        self._job_finishes = job_finishes

    def collect(self) -> Iterator[Metric]:
        writer = self._writer()
        if writer is not None:
            yield from _writer_families(writer)
        yield from _serving_families(self._serving())
        yield from _job_families(self._job_finishes())


def build_registry(state: ProcessStateCollector) -> CollectorRegistry:
    """One app's registry: the event counters (summed over workers in multiprocess mode), this
    process's CPU and memory, and its state read at scrape time."""
    registry = CollectorRegistry()
    watch_gc()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        for metric in _EVENT_METRICS:
            registry.register(metric)
        ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(state)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `registry` (CONTENT_TYPE)."""
    return generate_latest(registry)
