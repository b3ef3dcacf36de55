"""Prometheus metrics of the service, under conventional names and units.

- the dispatcher's stats, read when ``/metrics`` is scraped (gauges, and ``_total`` counters);
- ``afterwork_process_threads``: the process's OS threads, against ``afterwork_threads_max``;
- ``afterwork_job_outcomes_total{job,status}``, counted as reports land;
- ``http_request_duration_seconds{route,method,status}``, a histogram by route template;
- ``afterwork_refusals_total{reason}``: requests turned away (overloaded, draining, conflict,
  unauthorized, invalid, too_large, unsupported_media_type, timeout);
- ``afterwork_build_info{version,python}``.

Each service has a registry of its own (no process-wide default registry), so two services in
one process, as in the tests, never collide. The ``_created`` series are left out.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import afterwork as aw

#: The content type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_GAUGES = {
    "threads_busy": ("afterwork_threads_busy", "Budget threads running work now."),
    "threads_peak": ("afterwork_threads_peak", "The most budget threads ever busy at once."),
    "threads_stuck": ("afterwork_threads_stuck", "Threads still running past their deadline."),
    "max_threads": ("afterwork_threads_max", "The thread budget."),
    "pending": ("afterwork_completions_pending", "Completions admitted and not finished."),
    "max_pending": ("afterwork_completions_pending_max", "The admission bound."),
    "delayed": ("afterwork_completions_delayed", "Delayed work and parked jobs waiting."),
    "running": ("afterwork_jobs_running", "Jobs executing now."),
}
_COUNTERS = {
    "admitted": ("afterwork_completions_admitted", "Completions admitted."),
    "completed": ("afterwork_completions_finished", "Completions finished."),
    "retried": ("afterwork_job_retries", "Job attempts that failed and were tried again."),
}
#: Why a request may be refused; each status the API documents maps to one.
REFUSALS = {
    401: "unauthorized",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
}


def job_label(job: str) -> str:
    """A child's outcome is counted under ``parent/*``: one series per job, not per persona."""
    parent, _, child = job.partition("/")
    return f"{parent}/*" if child else parent


def os_threads() -> int:
    """The OS threads of this process (Linux: ``/proc/self/task``)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


class _StatsCollector(Collector):
    def __init__(self) -> None:
        self.stats: Callable[[], aw.Stats] | None = None

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "afterwork_process_threads", "OS threads of this process.", value=os_threads()
        )
        if self.stats is None:
            return
        stats = self.stats()
        for field, (name, doc) in _GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=getattr(stats, field))
        for field, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=getattr(stats, field))


class Metrics:
    """The service's registry: stats read on scrape; outcomes, requests and refusals counted
    as they happen."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.registry = CollectorRegistry(auto_describe=False)
        self._stats = _StatsCollector()
        self.registry.register(self._stats)
        self.outcomes = Counter(
            "afterwork_job_outcomes", "Job outcomes by job and status.", ["job", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.requests = Histogram(
            "http_request_duration_seconds",
            "Time from a request's arrival to its last response byte.",
            ["route", "method", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.refusals = Counter(
            "afterwork_refusals", "Requests turned away, by reason.", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        build = Gauge(
            "afterwork_build_info", "The running version.", ["version", "python"],
            registry=self.registry,
        )  # fmt: skip
        build.labels(version=aw.__version__, python=platform.python_version()).set(1)

    def watch(self, stats: Callable[[], aw.Stats] | None) -> None:
        """Read the dispatcher's stats at each scrape (None: the service is not running)."""
        self._stats.stats = stats

    def observe(self, report: aw.Report) -> None:
        for outcome in report.outcomes:
            self.outcomes.labels(job=job_label(outcome.job), status=outcome.status.value).inc()

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).observe(seconds)
        reason = REFUSALS.get(status)
        if reason is not None:
            self.refusals.labels(reason=reason).inc()

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason=reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
