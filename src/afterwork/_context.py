"""JobContext: what a running job may ask of the dispatcher, while its attempt lasts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, TypeVarTuple, overload

import anyio.from_thread
from anyio import RunFinishedError
from structlog.typing import FilteringBoundLogger

from ._exceptions import UsageError

if TYPE_CHECKING:
    from ._budget import Lease
    from ._completion import Completion

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _TakesCtx(Protocol[*Ts]):
    """A child function that also declares ``ctx``: called as ``fn(*args, ctx=ctx)``."""

    def __call__(self, *args: *Ts, ctx: JobContext) -> object: ...


class JobContext:
    """Handed to a job that declares a ``ctx`` parameter, for one attempt.

    ``idempotency_key`` is ``"{pipeline}:{key}:{job}"``: the same on every attempt, retry,
    follow-up and, with the journal on, replay, so a job can make its side effects
    effectively-once. Once the attempt has ended (it returned, failed or timed out),
    ``run_sync`` and ``spawn`` raise ``UsageError``: a thread that outlived its timeout
    cannot start more work.
    """

    __slots__ = (
        "_completion",
        "_lease",
        "_open",
        "attempt",
        "idempotency_key",
        "job",
        "key",
        "log",
        "pipeline",
    )

    def __init__(
        self,
        completion: Completion,
        job: str,
        attempt: int,
        log: FilteringBoundLogger,
        lease: Lease | None,
    ) -> None:
        self._completion = completion
        self._lease = lease
        self._open = True
        self.pipeline = completion.pipeline.name
        self.key = completion.key
        self.job = job
        self.attempt = attempt
        self.idempotency_key = f"{self.pipeline}:{self.key}:{job}"
        self.log = log

    def __repr__(self) -> str:
        return f"JobContext({self.idempotency_key!r}, attempt={self.attempt})"

    @property
    def is_open(self) -> bool:
        """True while the attempt this context belongs to is running."""
        return self._open

    def close(self) -> None:
        self._open = False

    def check_open(self, action: str) -> None:
        if not self._open:
            raise UsageError(
                f"job {self.job!r} of {self.pipeline}:{self.key} called {action} after its "
                f"attempt {self.attempt} ended (it returned, failed or ran past its timeout); "
                "nothing was started: a job may start work only while it runs"
            )

    async def run_sync(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run the blocking ``fn(*args)`` in a worker thread under the dispatcher's budget.

        The token is borrowed only while ``fn`` runs, so an async job holds none while it
        awaits anything else. The job's lane token stays taken until the thread returns.
        """
        self.check_open("run_sync")
        return await self._completion.runtime.budget.run_sync(
            fn, *args, lease=self._lease, label=self.idempotency_key
        )

    @overload
    def spawn(
        self,
        fn: Callable[[*Ts], object],
        *args: *Ts,
        name: str | None = None,
        lane: str | None = None,
    ) -> None: ...

    @overload
    def spawn(
        self, fn: _TakesCtx[*Ts], *args: *Ts, name: str | None = None, lane: str | None = None
    ) -> None: ...

    def spawn(self, fn: Any, *args: *Ts, name: str | None = None, lane: str | None = None) -> None:
        """Add the child job ``fn(*args)`` to this completion, named ``"{job}/{name}"``.

        The child runs concurrently under the same budget, with this job's timeout, retries
        and lane (or ``lane``: another of the dispatcher's lanes, so an HTTP call spawned by
        an LLM job need not hold an LLM token), and is reported on its own. ``fn`` is sync or
        async and may declare a ``ctx`` parameter. The parent does not wait for it, so a
        parent never holds a thread token while its children queue for one. Callable from
        the job's task, its threads, and threads those start.
        """
        completion = self._completion
        if threading.get_ident() == completion.runtime.loop_thread:
            completion.spawn(self, fn, args, name, lane)
            return
        try:
            anyio.from_thread.run_sync(
                completion.spawn, self, fn, args, name, lane, token=completion.runtime.token
            )
        except RunFinishedError:
            raise UsageError(
                f"job {self.job!r} called spawn after the dispatcher's event loop stopped; "
                "nothing was started"
            ) from None
