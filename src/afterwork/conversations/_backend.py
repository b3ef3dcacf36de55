"""Where the service's completions go: a dispatcher in this process, or workers over Redis.

The routes see one face, ``Backend``:

- ``room()`` refuses at once when there is no room or the service is shutting down
  (``Overloaded``/``DispatcherClosed``: a 503), before anything is written, and yields the
  function that sends the event;
- ``waiting(key)`` says, for each of ``key``'s unfinished completions, when it resumes
  (``None``: running or queued now);
- ``stats()``, ``state()`` and ``not_ready()`` feed /v1/stats, /healthz and /readyz;
- ``close()`` refuses new work from the moment the server starts shutting down.

``Local`` runs the jobs in this process's ``Dispatcher``. ``Remote`` sends each completion
to ``afterwork worker --conversations`` processes through a ``Producer``
(``AFTERWORK_BROKER``); the workers save the reports in the shared store, so the processing
state reads the same in both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field

import afterwork as aw

from ._models import ConversationCompleted

if TYPE_CHECKING:
    from afterwork.taskiq import Producer


class Sent(Protocol):
    """A sent completion: a local ``Handle`` or a ``RemoteHandle``."""

    @property
    def key(self) -> str: ...

    async def wait(self) -> aw.Report: ...


Send = Callable[[ConversationCompleted], Awaitable[Sent]]


class QueueStats(BaseModel):
    """/v1/stats of a service that enqueues to workers: each worker keeps its own stats."""

    state: str = Field(description="open, or draining once the service shuts down.")
    queue: str
    backlog: int = Field(description="Completions queued or being processed by workers.")
    max_pending: int


class Backend(Protocol):
    def room(self) -> AbstractAsyncContextManager[Send]: ...

    async def waiting(self, key: str) -> list[datetime | None]: ...

    async def stats(self) -> BaseModel: ...

    def state(self) -> str: ...

    async def not_ready(self) -> list[str]: ...

    def close(self) -> None: ...


class Local:
    """The jobs run here, in ``dispatcher``."""

    def __init__(self, dispatcher: aw.Dispatcher, pipeline: aw.Pipeline[ConversationCompleted]):
        self.dispatcher = dispatcher
        self.pipeline = pipeline

    @asynccontextmanager
    async def room(self) -> AsyncIterator[Send]:
        async with self.dispatcher.reserve(timeout=0) as room:

            async def send(event: ConversationCompleted) -> Sent:
                return await room.submit(self.pipeline, event)

            yield send

    async def waiting(self, key: str) -> list[datetime | None]:
        return [handle.due_at for handle in self.dispatcher.unfinished(self.pipeline, key)]

    async def stats(self) -> aw.Stats:
        return self.dispatcher.stats()

    def state(self) -> str:
        return self.dispatcher.stats().state.value

    async def not_ready(self) -> list[str]:
        stats = self.dispatcher.stats()
        reasons = []
        if stats.state is not aw.DispatcherState.OPEN:
            reasons.append(f"the dispatcher is {stats.state.value}")
        if stats.replaying:
            reasons.append("the journal's unfinished work is still being re-admitted")
        if stats.pending >= stats.max_pending:
            reasons.append(f"no room: {stats.pending} completions pending (max_pending)")
        if stats.journal_error is not None:
            reasons.append(f"the journal failed: {stats.journal_error}")
        return reasons

    def close(self) -> None:
        self.dispatcher.close()


class BrokerUnavailable(aw.AfterworkError):
    """Redis could not be reached to enqueue a conversation (a 503: nothing was kept)."""


class Remote:
    """The jobs run in ``afterwork worker`` processes; this process only enqueues."""

    def __init__(self, producer: Producer, pipeline: aw.Pipeline[ConversationCompleted]):
        from redis.exceptions import ConnectionError, TimeoutError

        self.producer = producer
        self.pipeline = pipeline
        self._closing = False
        self._unreachable = (ConnectionError, TimeoutError, OSError)

    @asynccontextmanager
    async def _reaching(self) -> AsyncIterator[None]:
        try:
            yield
        except self._unreachable as error:
            raise BrokerUnavailable(
                f"the workers' queue {self.producer.keys.queue!r} cannot be reached "
                f"({type(error).__name__}: {error}); the conversation was not kept: retry "
                "after Retry-After"
            ) from error

    @asynccontextmanager
    async def room(self) -> AsyncIterator[Send]:
        if self._closing:
            raise aw.DispatcherClosed(
                "the service is shutting down and takes no new conversations; retry after "
                "Retry-After, on this service once it is back or on another"
            )
        # Checked before the conversation is claimed, so a refusal writes nothing; submit
        # checks again (timeout=0) and raises Overloaded itself if the queue filled meanwhile.
        async with self._reaching():
            backlog = await self.producer.backlog()
        if backlog >= self.producer.max_pending:
            raise aw.Overloaded(
                f"the workers' queue {self.producer.keys.queue!r} holds {backlog} "
                f"conversations, max_pending={self.producer.max_pending}; retry later",
                pending=backlog,
                max_pending=self.producer.max_pending,
            )

        async def send(event: ConversationCompleted) -> Sent:
            # A failure here comes after the claim; Service.admit then removes a
            # conversation this request created, so the 503 leaves nothing behind.
            async with self._reaching():
                return await self.producer.submit(self.pipeline, event, timeout=0)

        yield send

    async def waiting(self, key: str) -> list[datetime | None]:
        # Workers do not park: a queued or running completion is simply unfinished.
        return [None] * await self.producer.unfinished(self.pipeline, key)

    async def stats(self) -> QueueStats:
        return QueueStats(
            state=self.state(),
            queue=self.producer.keys.queue,
            backlog=await self.producer.backlog(),
            max_pending=self.producer.max_pending,
        )

    def state(self) -> str:
        return "draining" if self._closing else "open"

    async def not_ready(self) -> list[str]:
        if self._closing:
            return ["the service is shutting down"]
        try:
            backlog = await self.producer.backlog()
        except self._unreachable as error:
            return [f"the broker is unreachable: {type(error).__name__}: {error}"]
        if backlog >= self.producer.max_pending:
            return [f"no room: {backlog} conversations queued for the workers (max_pending)"]
        return []

    def close(self) -> None:
        self._closing = True


def open_producer(url: str, queue: str, max_pending: int, pipeline: Any) -> Producer:
    """A Producer for ``AFTERWORK_BROKER``; the taskiq extra is needed only in this mode."""
    try:
        from afterwork.taskiq import Producer
    except ImportError as error:
        raise aw.InvalidOption(
            f"AFTERWORK_BROKER is set, but the Redis scale-out is not installed ({error}); "
            "install afterwork[taskiq], or unset AFTERWORK_BROKER to run the jobs here"
        ) from None
    return Producer(url, pipelines=[pipeline], max_pending=max_pending, queue=queue)
