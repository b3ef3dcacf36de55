"""What the demo shows: the live panel while traffic runs, the summary table, the plot."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

import afterwork as aw


@dataclass
class Progress:
    """The demo's traffic so far, and the service's stats as last polled."""

    total: int
    posted: int = 0
    rejected: int = 0
    errors: int = 0
    stats: aw.Stats | None = None
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, busy, pending)
    started: float = field(default_factory=time.perf_counter)

    def sample(self, stats: aw.Stats) -> None:
        self.stats = stats
        self.samples.append((time.perf_counter() - self.started, stats.threads_busy, stats.pending))

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
    statuses = ("succeeded", "failed", "timed_out", "skipped", "cancelled")
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


def plot(progress: Progress, max_threads: int, max_pending: int, path: Path) -> Path:
    """Threads in use and pending completions over time, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    from matplotlib import pyplot

    times = [t for t, _, _ in progress.samples]
    busy = [b for _, b, _ in progress.samples]
    waiting = [p for _, _, p in progress.samples]
    figure, threads = pyplot.subplots(figsize=(9, 4.5), dpi=110)
    try:
        threads.plot(times, busy, color="tab:blue", label="threads busy")
        threads.axhline(max_threads, color="tab:blue", linestyle="--", label="thread budget")
        threads.set_xlabel("seconds since the first request")
        threads.set_ylabel("threads")
        threads.set_ylim(0, max_threads * 1.25)
        pending = threads.twinx()
        pending.plot(times, waiting, color="tab:orange", label="pending")
        pending.axhline(max_pending, color="tab:orange", linestyle=":", label="max_pending")
        pending.set_ylabel("completions pending")
        pending.set_ylim(0, max_pending * 1.25)
        lines = threads.get_legend_handles_labels()
        more = pending.get_legend_handles_labels()
        threads.legend(
            lines[0] + more[0],
            lines[1] + more[1],
            loc="upper center",
            ncol=4,
            bbox_to_anchor=(0.5, -0.14),
        )
        threads.set_title("afterwork demo: thread budget and admission over time")
        figure.tight_layout()
        figure.savefig(path)
    finally:
        pyplot.close(figure)
    return path
