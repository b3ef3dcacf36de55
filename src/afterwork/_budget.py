"""The thread budget (G1): at most ``max_threads`` threads run dispatcher work at any moment.

anyio's asyncio backend hands a ``CapacityLimiter`` token back as soon as an
``abandon_on_cancel=True`` caller is cancelled, while the thread runs on. A caller that times
out or is cancelled would then let a new thread start beside the old one, and the budget would
leak. So the caller never owns the token: a *runner* task in the budget's own task group does.
The runner takes a token, starts the thread, waits for it to return and only then releases the
token. The caller just waits for the runner's result, and can walk away (timeout, cancellation)
without touching the token.

The runner passes the budget's own limiter to ``anyio.to_thread.run_sync``, so a call never
draws on anyio's default 40-token limiter as well. The runner is cancelled only when the
dispatcher closes, after its drain: the one moment a token may go back before its thread
returns, when nothing is left to take it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._exceptions import DispatcherClosed, JobTimeout, UnknownLane
from ._loopcall import call_soon_threadsafe

T = TypeVar("T")


class _ThreadCall(Generic[T]):
    """One blocking call: the runner and its thread fill it in, the caller reads it."""

    __slots__ = (
        "abandoned",
        "args",
        "budget",
        "error",
        "finished",
        "fn",
        "started",
        "thread_running",
        "value",
    )

    def __init__(
        self, budget: ThreadBudget, fn: Callable[..., T], args: tuple[object, ...], timed: bool
    ) -> None:
        self.budget = budget
        self.fn = fn
        self.args = args
        # Only a timed call needs to know when its thread starts: its clock starts there.
        self.started = anyio.Event() if timed else None
        self.finished = anyio.Event()
        self.abandoned = False
        # Written by the worker thread, read by stats(): a plain bool is atomic enough.
        self.thread_running = False
        self.value: T | None = None
        self.error: BaseException | None = None

    def invoke(self) -> T | None:
        """Runs in the worker thread, which holds a budget token until this returns."""
        if self.abandoned:
            return None  # the caller left while this call queued for a token: do nothing
        self.thread_running = True
        self.budget.note_thread_started()
        if self.started is not None:
            call_soon_threadsafe(self.budget.token, self.started.set)
        try:
            return self.fn(*self.args)
        finally:
            self.thread_running = False


class ThreadBudget:
    """Runs blocking calls in worker threads, never more than ``max_threads`` at once."""

    def __init__(self, max_threads: int) -> None:
        self.max_threads = max_threads
        self.peak = 0
        self._peak_lock = threading.Lock()
        self._tokens = anyio.CapacityLimiter(max_threads)
        self._runners: TaskGroup | None = None
        self._overdue: set[_ThreadCall[object]] = set()

    @property
    def busy(self) -> int:
        """Tokens held now, each by a thread that has not returned yet."""
        return int(self._tokens.borrowed_tokens)

    @property
    def stuck(self) -> int:
        """Threads still running after their caller's deadline passed."""
        self._overdue = {call for call in self._overdue if call.thread_running}
        return len(self._overdue)

    async def __aenter__(self) -> ThreadBudget:
        self.token = anyio.lowlevel.current_token()
        self._runners = anyio.create_task_group()
        await self._runners.__aenter__()
        return self

    def note_thread_started(self) -> None:
        """Called by each worker thread as it starts, while it holds its token."""
        with self._peak_lock:
            self.peak = max(self.peak, self.busy)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._runners is not None
        # By now the drain is over: stop waiting for threads that still run (a hung job),
        # and let them finish unattended. Only here may the group's scope be cancelled, since
        # before exit it also encloses the code inside ``async with Dispatcher()``.
        self._runners.cancel_scope.cancel()
        return await self._runners.__aexit__(exc_type, exc, tb)

    async def run_sync(
        self, fn: Callable[..., T], *args: object, timeout: float | None = None
    ) -> T:
        """Run ``fn(*args)`` in a worker thread under the budget and return its result.

        ``timeout`` starts when the thread starts: waiting for a token does not count. Past it
        the caller gets ``JobTimeout`` and the thread runs on, still holding its token.
        """
        assert self._runners is not None, "the budget is used only inside the dispatcher"
        call: _ThreadCall[T] = _ThreadCall(self, fn, args, timeout is not None)
        self._runners.start_soon(self._run, call)
        try:
            if call.started is None:
                await call.finished.wait()
            else:
                await call.started.wait()
                with anyio.move_on_after(timeout if timeout is not None else math.inf):
                    await call.finished.wait()
        except BaseException:
            call.abandoned = True
            raise
        if not call.finished.is_set():
            call.abandoned = True
            self._overdue.add(call)  # type: ignore[arg-type]
            raise JobTimeout(f"{_name_of(fn)} ran past its timeout of {timeout} s")
        if call.error is not None:
            error, call.error = call.error, None
            raise error
        return call.value  # type: ignore[return-value]

    async def _run(self, call: _ThreadCall[T]) -> None:
        # The runner, not the caller, owns the token: anyio takes it for this task and gives
        # it back only when the thread returns, whatever happens to the caller meanwhile.
        try:
            call.value = await anyio.to_thread.run_sync(
                call.invoke, limiter=self._tokens, abandon_on_cancel=True
            )
        except anyio.get_cancelled_exc_class():
            call.error = DispatcherClosed(
                f"the dispatcher closed while {_name_of(call.fn)} was still running; "
                "its thread runs on unattended"
            )
            raise
        except BaseException as error:
            if call.abandoned and not isinstance(error, Exception):
                raise  # KeyboardInterrupt or SystemExit with nobody left to receive it
            call.error = error
        finally:
            call.finished.set()


def _name_of(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class Lanes:
    """Named sub-limits (bulkheads) on concurrently running jobs, inside the thread budget."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self._limiters = {name: anyio.CapacityLimiter(size) for name, size in sizes.items()}

    def get(self, lane: str) -> anyio.CapacityLimiter:
        try:
            return self._limiters[lane]
        except KeyError:
            raise UnknownLane(self.unknown_message(lane)) from None

    def check(self, lanes: set[str]) -> None:
        """Raise ``UnknownLane`` for the first lane in ``lanes`` this dispatcher lacks."""
        for lane in sorted(lanes - self._limiters.keys()):
            raise UnknownLane(self.unknown_message(lane))

    def unknown_message(self, lane: str) -> str:
        known = ", ".join(sorted(self._limiters)) or "none"
        return (
            f"lane {lane!r} is not configured on this dispatcher (its lanes: {known}); "
            f"pass lanes={{{lane!r}: N}} to Dispatcher(...)"
        )
