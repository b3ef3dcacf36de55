"""Prometheus metrics of the service: the dispatcher's stats, and job outcomes by job.

Each service has a registry of its own (no process-wide default registry), so two services in
one process, as in the tests, never collide. Stats are read when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import afterwork as aw

_GAUGES = {
    "threads_busy": "Budget threads running work now.",
    "threads_peak": "The most budget threads ever busy at once.",
    "threads_stuck": "Threads still running past their job's deadline.",
    "max_threads": "The thread budget.",
    "pending": "Completions admitted and not finished.",
    "max_pending": "The admission bound.",
    "running": "Jobs executing now.",
}
_COUNTERS = {
    "admitted": "Completions admitted.",
    "completed": "Completions finished.",
    "retried": "Job attempts that failed and were tried again.",
}


def job_label(job: str) -> str:
    """A child's outcome is counted under ``parent/*``: one series per job, not per persona."""
    parent, _, child = job.partition("/")
    return f"{parent}/*" if child else parent


class _StatsCollector(Collector):
    def __init__(self, stats: Callable[[], aw.Stats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for name, doc in _GAUGES.items():
            yield GaugeMetricFamily(f"afterwork_{name}", doc, value=getattr(stats, name))
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(f"afterwork_{name}", doc, value=getattr(stats, name))


class Metrics:
    """The service's registry: stats read on scrape, job outcomes counted as reports land."""

    def __init__(self, stats: Callable[[], aw.Stats]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatsCollector(stats))
        self.outcomes = Counter(
            "afterwork_job_outcomes",
            "Job outcomes by job and status.",
            ["job", "status"],
            registry=self.registry,
        )

    def observe(self, report: aw.Report) -> None:
        for outcome in report.outcomes:
            self.outcomes.labels(job=job_label(outcome.job), status=outcome.status).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
