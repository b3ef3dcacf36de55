"""What the demo shows: the live panel while traffic runs, the summary table, the plot."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

import afterwork as aw

from ._metrics import os_threads


@dataclass(frozen=True)
class Sample:
    """One poll of the running service."""

    t: float
    threads_busy: int  #: budget tokens held: threads running jobs
    os_threads: int  #: every OS thread of the process, above the count before it started
    pending: int
    delayed: int


@dataclass
class Progress:
    """The demo's traffic so far, and the service's stats as last polled."""

    total: int
    baseline_threads: int = 0
    posted: int = 0
    rejected: int = 0
    errors: int = 0
    stats: aw.Stats | None = None
    samples: list[Sample] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    live: Live | None = None

    def sample(self, stats: aw.Stats) -> None:
        self.stats = stats
        self.samples.append(
            Sample(
                t=time.perf_counter() - self.started,
                threads_busy=stats.threads_busy,
                os_threads=os_threads() - self.baseline_threads,
                pending=stats.pending,
                delayed=stats.delayed,
            )
        )

    def __rich__(self) -> Table:
        # rich's Live redraws this on its own schedule, so the panel never goes stale.
        return live_table(self)


def live_table(progress: Progress) -> Table:
    """The panel the live display redraws while the conversations are processed."""
    stats = progress.stats
    table = Table(title="afterwork demo: conversations in flight", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("posted (202)", f"{progress.posted} / {progress.total}")
    table.add_row("refused with 503, retried", str(progress.rejected))
    if stats is not None:
        table.add_row("admitted", str(stats.admitted))
        table.add_row("finished", str(stats.completed))
        table.add_row("pending", f"{stats.pending} / {stats.max_pending}")
        table.add_row("job failures / timeouts", f"{stats.failed} / {stats.timed_out}")
        table.add_row(
            "threads now / peak / budget",
            f"{stats.threads_busy} / {stats.threads_peak} / {stats.max_threads}",
        )
    return table


def summary_tables(
    jobs: dict[str, dict[str, int]], figures: dict[str, str], checks: list[tuple[str, bool, str]]
) -> list[Table]:
    """The per-job outcome table, the figures, and the expectations with a verdict each."""
    statuses = ("succeeded", "failed", "timed_out", "skipped", "cancelled", "deferred")
    per_job = Table(title="Job outcomes")
    per_job.add_column("job")
    for status in statuses:
        per_job.add_column(status, justify="right")
    for job, counts in jobs.items():
        per_job.add_row(job, *(str(counts.get(status, 0)) for status in statuses))
    numbers = Table(title="What happened", show_header=False)
    numbers.add_column(style="bold")
    numbers.add_column(justify="right")
    for name, value in figures.items():
        numbers.add_row(name, value)
    verdicts = Table(title="Expectations")
    verdicts.add_column("check")
    verdicts.add_column("result")
    verdicts.add_column("detail")
    for name, ok, detail in checks:
        verdicts.add_row(name, "[green]ok[/green]" if ok else "[red]FAILED[/red]", detail)
    return [per_job, numbers, verdicts]


def print_summary(console: Console, tables: list[Table]) -> None:
    for table in tables:
        console.print(table)


def plot(progress: Progress, max_threads: int, ceiling: int, max_pending: int, path: Path) -> Path:
    """Threads and admission over time, as a PNG at ``path``: two panels sharing the time
    axis, each with its own scale, drawn as steps (a value holds until the next poll), with
    gaps in the polling left as gaps."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    from matplotlib import pyplot
    from matplotlib.ticker import MaxNLocator

    figure, (threads, admission) = pyplot.subplots(
        2, 1, figsize=(9, 6.5), dpi=110, sharex=True, height_ratios=(1, 1)
    )
    try:
        samples = progress.samples
        _steps(threads, samples, lambda s: s.os_threads, "OS threads above start", "tab:gray")
        _steps(threads, samples, lambda s: s.threads_busy, "threads running jobs", "tab:blue")
        threads.axhline(max_threads, color="tab:blue", linestyle="--", linewidth=1)
        threads.annotate(f"thread budget {max_threads}", (0, max_threads), xytext=(4, 3),
                         textcoords="offset points", color="tab:blue", fontsize=8)  # fmt: skip
        threads.axhline(ceiling, color="tab:gray", linestyle=":", linewidth=1)
        threads.annotate(
            f"budget + request and writer threads: {ceiling}", (0, ceiling), xytext=(4, 3),
            textcoords="offset points", color="tab:gray", fontsize=8,
        )  # fmt: skip
        top = max([ceiling, *(s.os_threads for s in samples)]) + 3
        threads.set_ylim(0, top)
        threads.set_ylabel("threads")
        threads.set_title("afterwork demo: threads and admission over time", fontsize=10)
        _steps(admission, samples, lambda s: s.pending, "completions pending", "tab:orange")
        _steps(admission, samples, lambda s: s.delayed, "parked or delayed", "tab:green")
        admission.axhline(max_pending, color="tab:orange", linestyle="--", linewidth=1)
        admission.annotate(f"max_pending {max_pending}", (0, max_pending), xytext=(4, 3),
                           textcoords="offset points", color="tab:orange", fontsize=8)  # fmt: skip
        admission.set_ylim(0, max([max_pending, *(s.pending for s in samples)]) * 1.15 + 1)
        admission.set_ylabel("completions")
        admission.set_xlabel("seconds since the first request")
        for axes in (threads, admission):
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))
            axes.grid(alpha=0.3)
            axes.legend(loc="upper right", fontsize=8)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        pyplot.close(figure)
    return path


def _steps(axes: Any, samples: list[Sample], value: Any, label: str, color: str) -> None:
    """Draw ``value`` of each sample as steps; a gap in the polling (over 5 times the usual
    interval) breaks the line instead of being drawn as a ramp."""
    times, values = _with_gaps([s.t for s in samples], [float(value(s)) for s in samples])
    axes.plot(times, values, drawstyle="steps-post", label=label, color=color, linewidth=1.3)


def _with_gaps(times: list[float], values: list[float]) -> tuple[list[float], list[float]]:
    if len(times) < 3:
        return times, values
    steps = sorted(b - a for a, b in itertools.pairwise(times))
    usual = steps[len(steps) // 2]
    out_t, out_v = [times[0]], [values[0]]
    for (a, b), v in zip(itertools.pairwise(times), values[1:], strict=True):
        if b - a > 5 * usual:
            out_t.append(a + usual)
            out_v.append(math.nan)
        out_t.append(b)
        out_v.append(v)
    return out_t, out_v
