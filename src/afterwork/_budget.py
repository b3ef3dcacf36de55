"""The thread budget (G1): at most ``max_threads`` threads run dispatcher work at any moment.

anyio's asyncio backend hands a ``CapacityLimiter`` token back as soon as an
``abandon_on_cancel=True`` caller is cancelled, while the thread runs on. A caller that times
out or is cancelled would then let a new thread start beside the old one, and the budget would
leak. So the caller never owns the token: a *runner* task in the budget's own task group does.
The runner takes a token, starts the thread, waits for it to return and only then releases the
token. The caller just waits for the runner's result, and can walk away (timeout, cancellation)
without touching the token. Lane tokens follow the same rule: a ``Lease`` is given back only
once its attempt has ended *and* every thread started under it has returned.

On asyncio a runner is a plain task of the loop. anyio's ``start_soon`` costs more than the
hand-off to the thread itself (a no-op call came to 1.6x bare ``anyio.to_thread.run_sync``
with it, 1.2x without), so the budget keeps those tasks and cancels them at close itself. On
trio, whose nursery start is cheap, runners stay in an anyio task group.

The runner passes the budget's own limiter to ``anyio.to_thread.run_sync``, so a call never
draws on anyio's default 40-token limiter as well. The runner is cancelled only when the
dispatcher closes, after its drain: the one moment a token may go back before its thread
returns, when nothing is left to take it.

Whatever the called function raises, ``BaseException`` included, is caught in the worker
thread and handed to the caller: anyio's worker and the runner never see it, so a job's
``SystemExit`` or ``CancelledError`` can never pass for the dispatcher's own cancellation (G2).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._exceptions import DispatcherClosed, JobTimeout, UnknownLane
from ._loop import call_soon_threadsafe

T = TypeVar("T")


class _Flag(Protocol):
    """What a call needs of an event: ``anyio.Event``, or on asyncio the bare
    ``asyncio.Event`` it wraps (a sixth of the cost to make, once per call)."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> object: ...


class Lease:
    """One lane token, held by an attempt and by every thread that attempt started."""

    __slots__ = ("_holders", "_limiter")

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self._limiter = limiter
        self._holders = 1  # the attempt itself

    async def acquire(self) -> None:
        await self._limiter.acquire_on_behalf_of(self)

    def hold(self) -> None:
        """A thread starts under this lease: the token stays until it returns."""
        self._holders += 1

    def drop(self) -> None:
        """The attempt ended, or one of its threads returned; the last one frees the token."""
        self._holders -= 1
        if self._holders == 0:
            self._limiter.release_on_behalf_of(self)


class _ThreadCall(Generic[T]):
    """One blocking call: the runner and its thread fill it in, the caller reads it."""

    __slots__ = (
        "abandoned",
        "args",
        "budget",
        "error",
        "finished",
        "fn",
        "label",
        "lease",
        "runner",
        "running",
        "started",
        "value",
    )

    def __init__(
        self,
        budget: ThreadBudget,
        fn: Callable[..., T],
        args: tuple[object, ...],
        *,
        timed: bool,
        lease: Lease | None,
        label: str,
    ) -> None:
        self.budget = budget
        self.fn: Callable[..., T] | None = fn
        self.args: tuple[object, ...] = args
        self.label = label
        self.lease = lease
        self.runner: asyncio.Task[None] | None = None  # its runner task, on asyncio
        # Only a timed call needs to know when its thread starts: its clock starts there.
        self.started = budget.new_flag() if timed else None
        self.finished = budget.new_flag()
        self.abandoned = False
        # Written by the worker thread, read on the loop: a plain bool is atomic enough.
        self.running = False
        self.value: T | None = None
        self.error: BaseException | None = None

    def invoke(self) -> None:
        """Runs in the worker thread, which holds a budget token until this returns."""
        fn = self.fn
        if self.abandoned or fn is None:
            return  # the caller left while this call queued for a token: do nothing
        if self.budget.before_call is not None:
            self.budget.before_call()  # holding the token, before the clock starts
            if self.abandoned:
                return  # the caller left meanwhile
        self.running = True
        self.budget.note_thread_started()
        if self.started is not None:
            call_soon_threadsafe(self.budget.token, self.started.set)
        try:
            self.value = fn(*self.args)
        except BaseException as error:  # every kind belongs to the caller (G2)
            self.error = error
        finally:
            self.running = False


class ThreadBudget:
    """Runs blocking calls in worker threads, never more than ``max_threads`` at once."""

    def __init__(self, max_threads: int) -> None:
        self.max_threads = max_threads
        self.peak = 0
        self._peak_lock = threading.Lock()
        self._tokens = anyio.CapacityLimiter(max_threads)
        self._runners: TaskGroup | None = None
        # Calls whose caller left while the thread still runs; pruned as each thread returns.
        self._overdue: set[_ThreadCall[Any]] = set()
        self._live: set[_ThreadCall[Any]] = set()
        #: Called on the loop whenever a thread returns its token (a waiting consumer).
        self.on_release: Callable[[], None] | None = None
        #: Called in each worker thread, with its token held, before the call's function (the
        #: scale-out worker waits there until earlier outcomes are stored). Must not raise.
        self.before_call: Callable[[], None] | None = None
        # Callers inside run_sync now, and (only while a drain waits for them) an event set
        # when there are none: made on demand, since most calls are not watched.
        self._callers = 0
        self._no_callers: anyio.Event | None = None
        # The loop, on asyncio, whose runners are plain tasks (see the module's docstring).
        self._loop: asyncio.AbstractEventLoop | None = None
        self.new_flag: Callable[[], _Flag] = anyio.Event

    @property
    def busy(self) -> int:
        """Tokens held now, each by a thread that has not returned yet."""
        return int(self._tokens.borrowed_tokens)

    @property
    def waiting(self) -> int:
        """Calls queued for a token: the budget's backlog."""
        return int(self._tokens.statistics().tasks_waiting)

    @property
    def stuck(self) -> int:
        """Threads still running after their caller timed out or was cancelled (or, once the
        dispatcher has closed, still running at all: abandoned)."""
        self._overdue = {call for call in self._overdue if call.running}
        return len(self._overdue)

    def running_labels(self) -> list[str]:
        """What each thread running now is doing (its job), for the close-time report."""
        return sorted(call.label for call in self._live if call.running)

    async def __aenter__(self) -> ThreadBudget:
        self.token = anyio.lowlevel.current_token()
        native = self.token.native_token
        if isinstance(native, asyncio.AbstractEventLoop):
            self._loop, self.new_flag = native, asyncio.Event
        else:
            self._runners = anyio.create_task_group()
            await self._runners.__aenter__()
        return self

    async def wait_for_callers(self) -> None:
        """Wait until no caller is waiting in ``run_sync`` (a drain lets them finish)."""
        while self._callers:
            if self._no_callers is None:
                self._no_callers = anyio.Event()
            await self._no_callers.wait()

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
        # By now the drain is over: stop waiting for threads that still run (a hung job),
        # and let them finish unattended.
        if self._runners is not None:
            self._runners.cancel_scope.cancel()
            return await self._runners.__aexit__(exc_type, exc, tb)
        tasks = {call.runner for call in self._live if call.runner is not None}
        try:
            for task in tasks:
                task.cancel()
            if tasks:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(tasks)
        finally:
            # A task cancelled before its first step never ran its body, and a native
            # cancel (the loop shutting down) may cut this wait short: such calls are
            # finished here instead.
            for call in list(self._live):
                self._finish(call, closed=True)
        return None

    async def run_sync(
        self,
        fn: Callable[..., T],
        *args: object,
        timeout: float | None = None,
        lease: Lease | None = None,
        label: str = "",
    ) -> T:
        """Run ``fn(*args)`` in a worker thread under the budget and return its result.

        ``timeout`` starts when the thread starts: waiting for a token does not count. Past it
        the caller gets ``JobTimeout`` and the thread runs on, still holding its token (and
        ``lease``'s lane token).
        """
        assert self._loop or self._runners, "the budget is used only inside the dispatcher"
        call: _ThreadCall[T] = _ThreadCall(
            self, fn, args, timed=timeout is not None, lease=lease, label=label or _name_of(fn)
        )
        if lease is not None:
            lease.hold()
        self._live.add(call)
        # Started from the caller's task, so the thread runs in the caller's context (G8).
        if self._loop is not None:
            call.runner = self._loop.create_task(self._run(call))
        else:
            assert self._runners is not None
            self._runners.start_soon(self._run, call)
        self._callers += 1
        try:
            if call.started is None:
                await call.finished.wait()
            else:
                await call.started.wait()
                with anyio.move_on_after(timeout if timeout is not None else math.inf):
                    await call.finished.wait()
        except BaseException:
            self._leave(call)
            raise
        finally:
            self._callers -= 1
            if self._callers == 0 and self._no_callers is not None:
                self._no_callers.set()
                self._no_callers = None
        if not call.finished.is_set():
            self._leave(call)
            raise JobTimeout(f"{label or _name_of(fn)} ran past its timeout of {timeout:g} s")
        error, call.error = call.error, None
        if error is not None:
            raise error
        value, call.value = call.value, None
        return value  # type: ignore[return-value]

    def _leave(self, call: _ThreadCall[Any]) -> None:
        call.abandoned = True
        if not call.finished.is_set():
            self._overdue.add(call)

    async def _run(self, call: _ThreadCall[Any]) -> None:
        # The runner, not the caller, owns the token: anyio takes it for this task and gives
        # it back only when the thread returns, whatever happens to the caller meanwhile.
        closed = False
        try:
            await anyio.to_thread.run_sync(
                call.invoke, limiter=self._tokens, abandon_on_cancel=True
            )
        except anyio.get_cancelled_exc_class():
            closed = True
            raise
        except Exception as error:  # anyio's own failure (its loop closing, say): the caller's
            call.error = error
        finally:
            self._finish(call, closed=closed)

    def _finish(self, call: _ThreadCall[Any], *, closed: bool) -> None:
        """The thread has returned (or the dispatcher closed): keep nothing of the job."""
        if call.finished.is_set():
            return
        if closed:
            call.error = DispatcherClosed(
                f"the dispatcher closed while {call.label} was still running; "
                "its thread runs on unattended"
            )
            # Abandoned: still counted (stuck) until its thread says it returned.
            self._overdue.add(call)
        else:
            self._overdue.discard(call)
        call.runner = None
        call.fn, call.args = None, ()
        self._live.discard(call)
        if call.lease is not None:
            call.lease.drop()
        if call.started is not None:
            call.started.set()  # a timed caller waits for the start first: a thread never
            # started (refused by the OS, or the dispatcher closed first) must not hang it
        call.finished.set()
        if self.on_release is not None:
            self.on_release()


def _name_of(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class Lanes:
    """Named sub-limits (bulkheads) on concurrently running jobs, inside the thread budget."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self._limiters = {name: anyio.CapacityLimiter(size) for name, size in sizes.items()}

    async def lease(self, lane: str) -> Lease:
        """Wait for a token of ``lane``, held by the returned lease until it is dropped."""
        try:
            limiter = self._limiters[lane]
        except KeyError:
            raise UnknownLane(self.unknown_message(lane)) from None
        lease = Lease(limiter)
        await lease.acquire()
        return lease

    def check(self, lanes: set[str]) -> None:
        """Raise ``UnknownLane`` for the first lane in ``lanes`` this dispatcher lacks."""
        for lane in sorted(lanes - self._limiters.keys()):
            raise UnknownLane(self.unknown_message(lane))

    def unknown_message(self, lane: str) -> str:
        known = ", ".join(sorted(self._limiters)) or "none"
        return (
            f"lane {lane!r} is not configured on this dispatcher (its lanes: {known}); "
            f"pass it with a size, e.g. Dispatcher(lanes={{{lane!r}: 6}})"
        )
