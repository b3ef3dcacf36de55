"""The report writer: every finished completion's report, saved on a thread of its own.

The dispatcher hands each report to ``ReportWriter.put`` on the event loop (``on_report``),
replayed ones included. ``put`` only queues it; one writer task saves whatever has queued in
one transaction, in finishing order. Its thread is its own (a limiter of one), beyond the
jobs' budget: saving what the jobs did never queues behind the jobs, and while the
dispatcher drains, or after it has closed, reports are still saved.
"""

from __future__ import annotations

import math

import anyio
import structlog

import afterwork as aw

from ._outcomes import save_reports
from ._store import Store

logger = structlog.get_logger("afterwork.conversations")

#: The most reports saved in one transaction.
BATCH = 256


class ReportWriter:
    """Queue reports with ``put``; ``run`` saves them until ``close`` and the queue is empty."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Unbounded, but a report is small and put never waits: it runs on the event loop.
        self._send, self._receive = anyio.create_memory_object_stream[aw.Report](math.inf)
        self._limiter = anyio.CapacityLimiter(1)
        self._changed = anyio.Event()
        self.queued = 0
        self.saved = 0  # saved or given up on: a failed batch is logged, never retried

    def put(self, report: aw.Report) -> None:
        self.queued += 1
        self._send.send_nowait(report)

    def close(self) -> None:
        """No more reports will come; ``run`` returns once the queued ones are saved."""
        self._send.close()

    async def flushed(self) -> None:
        """Wait until every report queued before this call has been saved."""
        target = self.queued
        while self.saved < target:
            await self._changed.wait()

    async def run(self) -> None:
        async with self._receive:
            async for report in self._receive:
                batch = [report]
                while len(batch) < BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                await self._save(batch)

    async def _save(self, batch: list[aw.Report]) -> None:
        try:
            # Shielded: a report handed over is saved even while the service shuts down.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    save_reports, self.store, batch, limiter=self._limiter
                )
        except Exception:
            # The writer must never take the service down: these reports are lost, loudly.
            logger.exception("report.save_failed", keys=[r.key for r in batch])
        finally:
            self.saved += len(batch)
            self._changed.set()
            self._changed = anyio.Event()
