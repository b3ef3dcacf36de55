"""The frozen snapshot ``Dispatcher.stats()`` returns, read from the live parts (G9)."""

from __future__ import annotations

from ._config import Config
from ._host import Host
from ._models import DispatcherState, Stats
from ._runtime import Counters


def snapshot(
    state: DispatcherState, config: Config, counters: Counters, host: Host | None
) -> Stats:
    """Copy what the dispatcher knows now into a ``Stats`` that never changes."""
    c, journal = counters, config.journal
    budget = host.runtime.budget if host is not None and host.runtime is not None else None
    return Stats(
        state=state,
        max_threads=config.max_threads,
        max_pending=config.max_pending,
        max_delayed=config.max_delayed,
        threads_busy=budget.busy if budget is not None else 0,
        threads_peak=budget.peak if budget is not None else 0,
        threads_stuck=budget.stuck if budget is not None else 0,
        threads_journal=int(journal is not None and journal.running),
        pending=len(host.admission.pending) if host is not None else 0,
        queued=host.admission.queued if host is not None else 0,
        delayed=len(host.delayed) if host is not None else 0,
        replaying=host is not None and host.replaying,
        running=c.running,
        admitted=c.admitted,
        completed=c.completed,
        retried=c.retried,
        journal_error=journal.failure if journal is not None else None,
        **{status.value: n for status, n in c.by_status.items()},
    )
