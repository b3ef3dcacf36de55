"""Fixtures for the conversation service: a real SQLite file, a real webhook receiver."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

import afterwork as aw
from afterwork.conversations import (
    Conversation,
    ConversationCompleted,
    Extractor,
    RetryPolicy,
    RuleExtractor,
    Services,
    ServiceSettings,
    Store,
    build_pipeline,
    create_app,
)
from afterwork.conversations._receiver import Receiver
from afterwork.conversations._service import Service
from afterwork.testing import base_url, serving

MOMENT = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)


def conversation(
    cid: str = "c1",
    uid: str = "u1",
    user: tuple[str, ...] = (),
    other: tuple[str, ...] = (),
    **structured: Any,
) -> Conversation:
    """A conversation: ``user`` lines said by the user, ``other`` lines by a friend."""
    lines = [("user", text) for text in user] + [("friend", text) for text in other]
    segments = [
        {"speaker": speaker, "text": text, "start": float(i), "end": i + 0.5}
        for i, (speaker, text) in enumerate(lines)
    ]
    return Conversation.model_validate(
        {
            "id": cid,
            "uid": uid,
            "created_at": MOMENT,
            "transcript_segments": segments,
            "structured": {"title": "A chat", "category": "personal", **structured},
        }
    )


def completed(conv: Conversation, reprocess: bool = False) -> ConversationCompleted:
    return ConversationCompleted(conversation=conv, reprocess=reprocess)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An initialised store in a fresh SQLite file, closed after the test."""
    result = Store(tmp_path / "test.db")
    result.initialise()
    yield result
    result.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


@contextmanager
def threaded_server(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` from a thread with its own event loop; yield its base URL.

    A fixture cannot hold a task group across its yield (setup and teardown run in different
    tasks), so servers that a fixture provides run beside the test's loop, not in it.
    """
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    if not _wait_for(lambda: server.started):
        raise RuntimeError("the test server did not start within 10 s")
    try:
        yield base_url(server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _wait_for(condition: Callable[[], bool], limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    """The demo's webhook receiver on a free loopback port, and its base URL."""
    hooks = Receiver(retry_after_s=0)
    with threaded_server(hooks.app) as url:
        yield hooks, url


Runner = Callable[..., Any]


@pytest.fixture
def run_jobs(store: Store, client: httpx.AsyncClient) -> Runner:
    """Run some jobs (or all) for an event through a real dispatcher; return the report."""

    async def run(
        event: ConversationCompleted, *jobs: str, max_threads: int = 4, **options: Any
    ) -> aw.Report:
        services = Services(
            store=store,
            extractor=options.pop("extractor", RuleExtractor()),
            client=client,
            webhook_policy=options.pop("policy", RetryPolicy((0.0, 0.0, 0.0))),
            **options,
        )
        pipeline = build_pipeline(services, only=jobs or None)
        async with aw.Dispatcher(
            max_threads=max_threads, lanes={"llm": 2, "http": 2}
        ) as dispatcher:
            return await dispatcher.run(pipeline, event)

    return run


class GateExtractor(RuleExtractor):
    """A rule-based extractor whose ``memories`` blocks until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def memories(self, conversation: Conversation) -> list[str]:
        self.entered.set()
        if not self.gate.wait(timeout=20):  # bounded, so a failing test cannot hang
            raise RuntimeError("the test never opened the gate")
        return super().memories(conversation)


@asynccontextmanager
async def running_service(
    tmp_path: Path,
    extractor: Extractor | None = None,
    *,
    client: dict[str, Any] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, Service]]:
    """The service on a fresh database under uvicorn, a client for it (``client``: more
    httpx options; no token sent), and its running parts."""
    defaults: dict[str, Any] = {"max_threads": 4, "lanes": {"llm": 2, "http": 4}}
    settings = ServiceSettings(db=tmp_path / "service.db", port=0, **{**defaults, **options})
    app = create_app(settings, extractor=extractor)
    async with (
        serving(app) as server,
        httpx.AsyncClient(base_url=base_url(server), **{"timeout": 30, **(client or {})}) as http,
    ):
        yield http, app.state.service
