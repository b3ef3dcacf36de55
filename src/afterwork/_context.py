"""JobContext: what a running job may ask of the dispatcher."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.from_thread
from structlog.typing import FilteringBoundLogger

if TYPE_CHECKING:
    from ._completion import Completion

T = TypeVar("T")


class JobContext:
    """Handed to a job that declares a ``ctx`` parameter.

    ``idempotency_key`` is ``"{pipeline}:{key}:{job}"``: the same on every attempt and, with
    the journal on, on every replay, so a job can make its side effects effectively-once.
    """

    __slots__ = (
        "_completion",
        "_loop_thread",
        "attempt",
        "idempotency_key",
        "job",
        "key",
        "log",
        "pipeline",
    )

    def __init__(
        self, completion: Completion, job: str, attempt: int, log: FilteringBoundLogger
    ) -> None:
        self._completion = completion
        self._loop_thread = threading.get_ident()
        self.pipeline = completion.pipeline.name
        self.key = completion.key
        self.job = job
        self.attempt = attempt
        self.idempotency_key = f"{self.pipeline}:{self.key}:{job}"
        self.log = log

    def __repr__(self) -> str:
        return f"JobContext({self.idempotency_key!r}, attempt={self.attempt})"

    async def run_sync(self, fn: Callable[..., T], *args: object) -> T:
        """Run the blocking ``fn(*args)`` in a worker thread under the dispatcher's budget.

        The token is borrowed only while ``fn`` runs, so an async job holds none while it
        awaits anything else.
        """
        return await self._completion.runtime.budget.run_sync(fn, *args)

    def spawn(self, fn: Callable[..., Any], *args: object, name: str | None = None) -> None:
        """Add the child job ``fn(*args)`` to this completion, named ``"{job}/{name}"``.

        The child runs concurrently under the same budget and lane, with this job's timeout
        and retries, and is reported on its own. ``fn`` is sync or async and may declare a
        ``ctx`` parameter. The parent does not wait for it, so a parent never holds a thread
        token while its children queue for one. Callable from async and sync jobs alike.
        """
        if threading.get_ident() == self._loop_thread:
            self._completion.spawn(self.job, fn, args, name)
        else:
            anyio.from_thread.run_sync(self._completion.spawn, self.job, fn, args, name)
