"""The running service: its store, HTTP client, dispatcher and pipeline, opened and closed
together, with the report writer that persists each completion's report.

On the way in, the dispatcher opens its journal and replays what had not finished; each
report, replayed ones included, is saved before the journal lets go of its completion
(``on_report`` waits for the save), so nothing has to be reconciled after a crash. On the way
out, the dispatcher drains first, while the HTTP client and the store are still open for the
jobs that are finishing.

Request handlers never borrow the jobs' thread budget: their blocking calls (the database) go
through ``Service.blocking``, a limiter of their own (``request_threads``), so a budget that
long jobs saturate cannot stall a response (G4).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import anyio
import httpx
import structlog
from starlette.applications import Starlette

import afterwork as aw
from afterwork.asgi import open_dispatcher

from . import _outcomes
from ._backend import Backend, Local, Remote, Sent, open_producer
from ._extractor import Extractor, RuleExtractor
from ._jobs import Services, build_pipeline
from ._metrics import Metrics
from ._models import ConversationCompleted
from ._redact import redact
from ._reports import ReportWriter
from ._settings import ServiceSettings
from ._store import Claim, Store
from ._webhook import RetryPolicy

T = TypeVar("T")
#: Builds the service's pipeline from its services (``build_pipeline``: the seven jobs).
PipelineFactory = Callable[[Services], aw.Pipeline[ConversationCompleted]]

logger = structlog.get_logger("afterwork.conversations")


@dataclass
class Service:
    """What the routes use, published as ``app.state.service`` while the app runs."""

    settings: ServiceSettings
    store: Store
    backend: Backend
    pipeline: aw.Pipeline[ConversationCompleted]
    metrics: Metrics
    reports: ReportWriter
    request_limiter: anyio.CapacityLimiter

    @property
    def dispatcher(self) -> aw.Dispatcher:
        """The dispatcher running the jobs here (not in broker mode)."""
        if not isinstance(self.backend, Local):
            raise AttributeError(
                "this service sends its conversations to workers (AFTERWORK_BROKER) and runs "
                "no dispatcher; read the queue with 'await service.backend.stats()'"
            )
        return self.backend.dispatcher

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run the blocking ``fn(*args)`` for a request, on the requests' own threads."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.request_limiter)

    async def admit(self, event: ConversationCompleted) -> Sent:
        """Take room, claim the conversation for its uid, and admit it.

        Room comes first and is never waited for: a full or draining backend refuses at
        once (``Overloaded``/``DispatcherClosed``: a 503) and nothing is written. Another
        uid's conversation id raises ``OwnershipConflict`` (a 409) and changes nothing. It
        returns once the admission is in the journal (or Redis); if that fails, the post is
        taken back (``_outcomes.undo``), so a refusal leaves nothing half-done.
        """
        conversation = event.conversation
        async with self.backend.room() as send:
            receipt = await self.blocking(_outcomes.receive, self.store, event)
            if receipt.claim is Claim.CONFLICT:
                raise OwnershipConflict(
                    f"conversation {conversation.id!r} belongs to another user; a conversation "
                    "belongs to the uid that first posted it: post it with that uid, or use "
                    "a new id"
                )
            try:
                return await send(event)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.blocking(_outcomes.undo, self.store, conversation.id, receipt)
                raise


class OwnershipConflict(aw.AfterworkError):
    """A conversation id posted with a uid other than its owner's (a 409)."""


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


@asynccontextmanager
async def _journal_hint() -> AsyncIterator[None]:
    """A journal refused at start gets the service's own fix added to its message."""
    try:
        yield
    except aw.JournalError as error:
        raise aw.JournalError(
            f"{error}. The service keeps its journal beside AFTERWORK_DB (--db): choose "
            "another database, or run without a journal (AFTERWORK_JOURNAL=false, "
            "--no-journal)"
        ) from error


@asynccontextmanager
async def run_service(
    app: Starlette,
    settings: ServiceSettings,
    extractor: Extractor | None = None,
    jobs: PipelineFactory = build_pipeline,
) -> AsyncIterator[Service]:
    """Open everything the service needs for ``app``'s lifetime; drain and close on exit.

    ``extractor`` replaces the rule-based one (a real model client, or a test double).
    With ``settings.broker`` the jobs run in ``afterwork worker`` processes instead.
    """
    limiter = anyio.CapacityLimiter(settings.request_threads)
    async with http_client(settings) as client:
        services = services_for(settings, client, extractor)
        store = services.store
        await anyio.to_thread.run_sync(store.initialise, limiter=limiter)
        pipeline = jobs(services)
        reports = ReportWriter(store)
        metrics: Metrics = app.state.metrics
        if settings.api_token is None:
            logger.warning(
                "service.unauthenticated",
                host=settings.host,
                hint="no API token: serving this machine only; set AFTERWORK_API_TOKEN to "
                "require one",
            )
        opened = _remote if settings.broker is not None else _local
        try:
            async with opened(app, settings, pipeline, reports) as backend:
                app.state.service = Service(
                    settings=settings,
                    store=store,
                    backend=backend,
                    pipeline=pipeline,
                    metrics=metrics,
                    reports=reports,
                    request_limiter=limiter,
                )
                logger.info(
                    "service.started",
                    db=str(settings.db),
                    journal=str(settings.journal_path) if _journals(settings) else None,
                    broker=redact(settings.broker) if settings.broker else None,
                    port=settings.port,
                )
                yield app.state.service
        finally:
            metrics.watch(None)
            if hasattr(app.state, "service"):
                del app.state.service
            store.close()  # the jobs have finished (or were cut): their connections go


def _journals(settings: ServiceSettings) -> bool:
    # With a broker, admitted work waits in Redis: the workers' side is the durable one.
    return settings.journal and settings.broker is None


@asynccontextmanager
async def _local(
    app: Starlette,
    settings: ServiceSettings,
    pipeline: aw.Pipeline[ConversationCompleted],
    reports: ReportWriter,
) -> AsyncIterator[Backend]:
    metrics: Metrics = app.state.metrics

    async def on_report(report: aw.Report) -> None:  # replayed reports come here too
        metrics.observe(report)
        await reports.save(report)

    dispatcher = aw.Dispatcher(
        **settings.dispatcher_kwargs(),
        journal=settings.journal_path if _journals(settings) else None,
        pipelines=[pipeline],
        on_report=on_report,
    )
    async with _journal_hint(), open_dispatcher(app, dispatcher):
        metrics.watch(dispatcher.stats)
        yield Local(dispatcher, pipeline)


@asynccontextmanager
async def _remote(
    app: Starlette,
    settings: ServiceSettings,
    pipeline: aw.Pipeline[ConversationCompleted],
    reports: ReportWriter,
) -> AsyncIterator[Backend]:
    assert settings.broker is not None
    producer = open_producer(settings.broker, settings.queue, settings.max_pending, pipeline)
    async with producer:
        yield Remote(producer, pipeline)
