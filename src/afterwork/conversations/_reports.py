"""The report writer: every finished completion's report, saved in group commits.

The dispatcher awaits ``ReportWriter.save`` for each report (``on_report``), replayed ones
included; with a journal it keeps the completion until the save returns, so a crash before
the save hands the report over again on restart. Reports that arrive while a save is under
way wait and go together in the next transaction: the first caller to find no save running
takes everything queued and writes it, on a thread of its own (a limiter of one), beyond the
jobs' budget, so saving what the jobs did never queues behind the jobs.
"""

from __future__ import annotations

import anyio
import structlog

import afterwork as aw

from ._outcomes import save_reports
from ._store import Store

logger = structlog.get_logger("afterwork.conversations")

#: The most reports saved in one transaction.
BATCH = 256


class ReportWriter:
    """Saves reports in batches; ``save`` returns once its report is written."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[aw.Report] = []
        self._limiter = anyio.CapacityLimiter(1)
        self._saving = False
        self._changed = anyio.Event()
        self.queued = 0
        self.saved = 0  # saved or given up on: a failed batch is logged, never retried

    async def save(self, report: aw.Report) -> None:
        """Queue ``report`` and return once it is saved (or its batch failed, loudly)."""
        self._queue.append(report)
        self.queued += 1
        mine = self.queued
        while self.saved < mine:
            if self._saving:
                await self._changed.wait()
            else:
                await self._save_batch()

    async def _save_batch(self) -> None:
        self._saving = True
        batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
        try:
            # Shielded: a batch taken is written even if its caller is cancelled meanwhile.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    save_reports, self.store, batch, limiter=self._limiter
                )
        except Exception:
            # The writer must never take the service down: these reports are lost, loudly.
            logger.exception("report.save_failed", keys=[r.key for r in batch])
        finally:
            self._saving = False
            self.saved += len(batch)
            changed, self._changed = self._changed, anyio.Event()
            changed.set()
