"""The running service: its store, HTTP client, dispatcher and pipeline, opened and closed
together, and the watchers that persist each completion's report.

Order matters on the way out. The dispatcher drains first, while the HTTP client and the store
are still open for the jobs that are finishing. A watcher saves each report through the thread
budget; a report that lands while the dispatcher is draining cannot borrow a budget thread any
more (the dispatcher refuses new work), so it is kept and saved once the drain is over.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httpx
import structlog
from anyio.abc import TaskGroup
from starlette.applications import Starlette

import afterwork as aw
from afterwork.asgi import open_dispatcher

from ._extractor import Extractor, RuleExtractor
from ._jobs import Services, build_pipeline
from ._metrics import Metrics
from ._models import ConversationCompleted
from ._settings import ServiceSettings
from ._store import Store
from ._webhook import RetryPolicy

logger = structlog.get_logger("afterwork.conversations")


@dataclass
class Service:
    """What the routes use, published as ``app.state.service`` while the app runs."""

    settings: ServiceSettings
    store: Store
    dispatcher: aw.Dispatcher
    pipeline: aw.Pipeline[ConversationCompleted]
    metrics: Metrics
    watchers: TaskGroup
    in_flight: Counter[str] = field(default_factory=Counter)  # key -> unfinished handles
    unsaved: list[aw.Report] = field(default_factory=list)

    def admit(self, event: ConversationCompleted) -> tuple[aw.Handle, anyio.Event]:
        """Admit the event without waiting (or raise ``Overloaded``/``DispatcherClosed``).

        Its report is saved in the background when it finishes; the event says when.
        """
        handle = self.dispatcher.submit_nowait(self.pipeline, event)
        self.in_flight[handle.key] += 1
        saved = anyio.Event()
        self.watchers.start_soon(self._save, handle, saved, name=f"watch:{handle.key}")
        return handle, saved

    async def _save(self, handle: aw.Handle, saved: anyio.Event) -> None:
        report = await handle.wait()
        self.metrics.observe(report)
        try:
            await self.dispatcher.run_sync(self.store.save_report, report)
        except aw.DispatcherClosed:
            self.unsaved.append(report)
        except Exception:
            # A watcher must never take the service down: the report is lost, loudly.
            logger.exception("report.save_failed", key=report.key)
        finally:
            self.in_flight[report.key] -= 1
            if not self.in_flight[report.key]:
                del self.in_flight[report.key]
            saved.set()

    def save_unsaved(self) -> None:
        for report in self.unsaved:
            self.store.save_report(report)
        self.unsaved.clear()


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
async def run_service(
    app: Starlette, settings: ServiceSettings, extractor: Extractor | None = None
) -> AsyncIterator[Service]:
    """Open everything the service needs for ``app``'s lifetime; drain and close on exit.

    ``extractor`` replaces the rule-based one (a real model client, or a test double).
    """
    service: Service | None = None
    async with http_client(settings) as client:
        services = services_for(settings, client, extractor)
        dispatcher = aw.Dispatcher(**settings.dispatcher_kwargs())
        try:
            # Leaving this drains the dispatcher first; then every watcher holds its report
            # and the task group finishes at once.
            async with anyio.create_task_group() as watchers, open_dispatcher(app, dispatcher):
                await dispatcher.run_sync(services.store.initialise)
                service = Service(
                    settings=settings,
                    store=services.store,
                    dispatcher=dispatcher,
                    pipeline=build_pipeline(services),
                    metrics=Metrics(dispatcher.stats),
                    watchers=watchers,
                )
                app.state.service = service
                logger.info("service.started", db=str(settings.db), port=settings.port)
                yield service
        finally:
            if service is not None:
                service.save_unsaved()  # the budget is closed; this runs once, at exit
                del app.state.service
