"""The running service: its store, HTTP client, dispatcher and pipeline, opened and closed
together, with the report writer that persists each completion's report.

On the way in, the store is put right after any crash (``_recovery``) before the dispatcher
opens its journal and replays what had not finished. On the way out, the dispatcher drains
first, while the HTTP client and the store are still open for the jobs that are finishing;
then the report writer saves the last reports and stops.

Request handlers never borrow the jobs' thread budget: their blocking calls (the database) go
through ``Service.blocking``, a limiter of their own (``request_threads``), so a budget that
long jobs saturate cannot stall a response (G4).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
import httpx
import structlog
from starlette.applications import Starlette

import afterwork as aw
from afterwork.asgi import open_dispatcher

from . import _outcomes
from ._extractor import Extractor, RuleExtractor
from ._jobs import PIPELINE, Services, build_pipeline
from ._metrics import Metrics
from ._models import ConversationCompleted
from ._recovery import recover
from ._reports import ReportWriter
from ._settings import ServiceSettings
from ._store import Store
from ._webhook import RetryPolicy

T = TypeVar("T")

logger = structlog.get_logger("afterwork.conversations")


@dataclass
class Service:
    """What the routes use, published as ``app.state.service`` while the app runs."""

    settings: ServiceSettings
    store: Store
    dispatcher: aw.Dispatcher
    pipeline: aw.Pipeline[ConversationCompleted]
    metrics: Metrics
    reports: ReportWriter
    request_limiter: anyio.CapacityLimiter

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run the blocking ``fn(*args)`` for a request, on the requests' own threads."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.request_limiter)

    async def admit(self, event: ConversationCompleted) -> aw.Handle:
        """Store the conversation and admit it, or raise ``Overloaded``/``DispatcherClosed``.

        It returns once the admission is in the journal, and never waits for room: a full
        dispatcher answers at once (503).
        """
        await self.blocking(_outcomes.receive, self.store, event)
        try:
            return await self.dispatcher.submit(self.pipeline, event, timeout=0)
        except (aw.Overloaded, aw.DispatcherClosed):
            await self.blocking(_outcomes.withdraw, self.store, event.conversation.id)
            raise


def http_client(settings: ServiceSettings) -> httpx.AsyncClient:
    """The one client every webhook and task sync shares for the service's lifetime."""
    timeout = httpx.Timeout(
        settings.webhook_read_timeout_s, connect=settings.webhook_connect_timeout_s
    )
    return httpx.AsyncClient(timeout=timeout, headers={"User-Agent": "afterwork-conversations"})


def services_for(
    settings: ServiceSettings, client: httpx.AsyncClient, extractor: Extractor | None = None
) -> Services:
    return Services(
        store=Store(settings.db),
        extractor=RuleExtractor(settings.llm_latency_s) if extractor is None else extractor,
        client=client,
        webhook_policy=RetryPolicy(
            settings.webhook_retry_delays_s, settings.webhook_max_retry_after_s
        ),
        persona_window_s=settings.persona_window_s,
        job_timeout_s=settings.job_timeout_s,
    )


async def check_journal(path: Path) -> None:
    """Open and close the journal at ``path``: a file there that is not one stops the start.

    The dispatcher would refuse it too, but from inside the service's task group, which an
    error on entering the dispatcher leaves in a broken state; here it fails cleanly first.
    """
    probe = aw.SqliteJournal(path)
    try:
        probe.open()
    except aw.JournalError as error:
        raise aw.JournalError(
            f"{error}. The service keeps its journal beside AFTERWORK_DB (--db): choose "
            "another database, or run without a journal (AFTERWORK_JOURNAL=false, "
            "--no-journal)"
        ) from error
    await probe.close()


@asynccontextmanager
async def run_service(
    app: Starlette, settings: ServiceSettings, extractor: Extractor | None = None
) -> AsyncIterator[Service]:
    """Open everything the service needs for ``app``'s lifetime; drain and close on exit.

    ``extractor`` replaces the rule-based one (a real model client, or a test double).
    """
    limiter = anyio.CapacityLimiter(settings.request_threads)
    journal = settings.journal_path if settings.journal else None
    async with http_client(settings) as client:
        services = services_for(settings, client, extractor)
        store = services.store
        await anyio.to_thread.run_sync(store.initialise, limiter=limiter)
        if journal is not None:
            await check_journal(journal)
        lost = await anyio.to_thread.run_sync(recover, store, journal, PIPELINE, limiter=limiter)
        pipeline = build_pipeline(services)
        reports = ReportWriter(store)

        def on_report(report: aw.Report) -> None:  # replayed reports come here too
            metrics.observe(report)
            reports.put(report)

        dispatcher = aw.Dispatcher(
            **settings.dispatcher_kwargs(),
            journal=journal,
            pipelines=[pipeline],
            on_report=on_report,
        )
        metrics = Metrics(dispatcher.stats)
        async with anyio.create_task_group() as writer:
            writer.start_soon(reports.run, name="afterwork:reports")
            try:
                async with open_dispatcher(app, dispatcher):
                    for event in lost:  # their report was lost after their jobs ran: again
                        await dispatcher.submit(pipeline, event)
                    app.state.service = Service(
                        settings=settings,
                        store=store,
                        dispatcher=dispatcher,
                        pipeline=pipeline,
                        metrics=metrics,
                        reports=reports,
                        request_limiter=limiter,
                    )
                    logger.info(
                        "service.started",
                        db=str(settings.db),
                        journal=str(journal) if journal else None,
                        resubmitted=len(lost),
                        port=settings.port,
                    )
                    yield app.state.service
            finally:
                reports.close()  # the dispatcher has drained: no report comes after this
                if hasattr(app.state, "service"):
                    del app.state.service
