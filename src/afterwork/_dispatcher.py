"""The Dispatcher: admission, the life of completions, stats, and the drain."""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, TypeVar

import anyio
import structlog
from anyio.abc import TaskGroup

from ._admission import Admission
from ._budget import Lanes, ThreadBudget
from ._completion import Completion, Counters, NullRecorder, Recorder, Runtime
from ._exceptions import DispatcherClosed, DispatcherNotOpen, JournalError, Overloaded
from ._handle import Handle
from ._journal import JournalRow, SqliteJournal
from ._models import DispatcherState, Report, Stats
from ._pipeline import Pipeline
from ._replay import JournalRecorder, read_backlog, replay

T = TypeVar("T")

logger = structlog.get_logger("afterwork")


def _check_count(setting: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{setting} must be an int >= {minimum}, got {value!r}; "
            f"pass e.g. {setting}={max(minimum, 32)}"
        )
    return value


def _check_seconds(setting: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value >= 0 and math.isfinite(value))
    ):
        raise ValueError(f"{setting} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


class Dispatcher:
    """Runs pipelines' jobs in the background of an async service, within a thread budget.

    Use it as ``async with Dispatcher(...) as dispatcher:``. Leaving the block drains it
    (see ``aclose``).

    - ``max_threads``: at most this many threads run blocking work at any moment (G1).
    - ``max_pending``: at most this many completions are admitted and unfinished (G4).
    - ``max_active``: at most this many admitted completions run their jobs at once; the rest
      wait in a FIFO queue, holding only their event, so a backlog of thousands costs memory
      for the events and not for thousands of waiting tasks. Raise it for pipelines whose jobs
      are mostly async and wait long (webhooks with retries).
    - ``drain_timeout``: how long ``aclose`` lets admitted work finish before cancelling it.
    - ``lanes``: named caps on concurrently running jobs, e.g. ``{"llm": 6}``.
    - ``journal``: a path (or a ``SqliteJournal``) to make admitted work durable (G6). On
      entry, unfinished work of the ``pipelines`` (or those passed to ``register``) runs again.
    - ``on_report``: called on the event loop with the Report of every finished completion,
      replayed ones included (they have no Handle). It must not block: queue or spawn the
      work. An exception from it is logged as ``dispatcher.on_report_failed``.
    """

    def __init__(
        self,
        *,
        max_threads: int = 32,
        max_pending: int = 1000,
        max_active: int = 256,
        drain_timeout: float = 30.0,
        lanes: Mapping[str, int] | None = None,
        journal: str | os.PathLike[str] | SqliteJournal | None = None,
        pipelines: Iterable[Pipeline[Any]] = (),
        on_report: Callable[[Report], object] = lambda report: None,
    ) -> None:
        self.max_threads = _check_count("max_threads", max_threads, 1)
        self.max_pending = _check_count("max_pending", max_pending, 1)
        self.max_active = _check_count("max_active", max_active, 1)
        self.drain_timeout = _check_seconds("drain_timeout", drain_timeout)
        self._lane_sizes = {
            name: _check_count(f"lanes[{name!r}]", size, 1) for name, size in (lanes or {}).items()
        }
        self._journal = (
            journal
            if journal is None or isinstance(journal, SqliteJournal)
            else SqliteJournal(journal)
        )
        if not callable(on_report):
            raise TypeError(f"on_report must be a function taking a Report, got {on_report!r}")
        self._on_report = on_report
        self._pipelines: dict[str, Pipeline[Any]] = {}
        self.register(*pipelines)
        self._state = DispatcherState.NEW
        self._counters = Counters()
        self._recorder: Recorder = NullRecorder()
        self._budget: ThreadBudget | None = None
        self._admission: Admission | None = None  # made on entry: it binds to the loop
        self._group: TaskGroup | None = None
        self._runtime: Runtime | None = None
        self._stack = AsyncExitStack()

    @property
    def _completions(self) -> set[Completion]:
        return self._admission.unfinished if self._admission is not None else set()

    @property
    def _room(self) -> Admission:
        assert self._admission is not None, "admission exists once the dispatcher is entered"
        return self._admission

    def __repr__(self) -> str:
        return (
            f"<Dispatcher {self._state.value} max_threads={self.max_threads} "
            f"pending={len(self._completions)}/{self.max_pending}>"
        )

    # -- lifecycle --------------------------------------------------------------------------

    def register(self, *pipelines: Pipeline[Any]) -> None:
        """Name the pipelines whose unfinished work the journal may replay on entry."""
        for pipeline in pipelines:
            if not isinstance(pipeline, Pipeline):
                raise TypeError(f"register() takes Pipeline objects, got {pipeline!r}")
            known = self._pipelines.setdefault(pipeline.name, pipeline)
            if known is not pipeline:
                raise ValueError(
                    f"another pipeline named {pipeline.name!r} is already registered; "
                    "pipeline names must be unique within a dispatcher"
                )

    async def __aenter__(self) -> Dispatcher:
        if self._state is not DispatcherState.NEW:
            raise RuntimeError(
                f"this Dispatcher is {self._state.value} and cannot be entered again; "
                "create a new Dispatcher"
            )
        if self._journal is not None:
            # First, so that a bad path or file (JournalError) leaves nothing half-open.
            self._journal.open()
        try:
            await self._open()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stack.aclose()
                if self._journal is not None:
                    await self._journal.close()
            raise
        self._state = DispatcherState.OPEN
        return self

    async def _open(self) -> None:
        # Loop-bound state is made here, on entry, never at construction.
        self._budget = await self._stack.enter_async_context(ThreadBudget(self.max_threads))
        self._group = await self._stack.enter_async_context(anyio.create_task_group())
        self._admission = Admission(self.max_pending, self.max_active, self._start)
        self._replay_scope = anyio.CancelScope()
        self._drained = anyio.Event()
        self._closed = anyio.Event()
        self._runtime = Runtime(
            budget=self._budget,
            lanes=Lanes(self._lane_sizes),
            counters=self._counters,
            log=logger,
            recorder=self._recorder,
        )
        if self._journal is not None:
            self._recorder = self._runtime.recorder = JournalRecorder(self._journal)
            self._group.start_soon(
                self._replay, read_backlog(self._journal), name="afterwork:replay"
            )

    async def _replay(self, backlog: Callable[[], Awaitable[list[JournalRow]]]) -> None:
        assert self._journal is not None
        with self._replay_scope:
            await replay(self._journal, backlog, self._pipelines, self._readmit, logger)

    async def _readmit(
        self,
        pipeline: Pipeline[Any],
        row: JournalRow,
        event: Any,
        rerun: set[str],
        finished_children: set[str],
    ) -> None:
        # Replay honours max_pending like any producer: it waits here, in the background.
        if not await self._room.wait_for_room(None):
            return  # a drain began: the row stays in the journal
        assert self._runtime is not None
        self._admit(
            Completion(
                self._runtime,
                pipeline,
                event,
                row.key,
                cid=row.id,
                only=rerun,
                finished_children=frozenset(finished_children),
            )
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        # Drain even when the block was cancelled: the drain is bounded by drain_timeout.
        with anyio.CancelScope(shield=True):
            await self.aclose()
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Drain and close. Idempotent, and safe to call from any task.

        1. New work is refused at once with ``DispatcherClosed``.
        2. Admitted work gets up to ``drain_timeout`` seconds to finish.
        3. What is left is cancelled, and each unfinished job is named in one
           ``dispatcher.unfinished`` event.
        """
        if self._state is DispatcherState.NEW:
            self._state = DispatcherState.CLOSED
            return
        if self._state is not DispatcherState.OPEN:
            await self._closed.wait()
            return
        self._state = DispatcherState.DRAINING
        logger.info(
            "dispatcher.draining",
            pending=len(self._completions),
            drain_timeout_s=self.drain_timeout,
        )
        self._replay_scope.cancel()  # what replay has not re-admitted stays in the journal
        self._room.refuse_waiters()
        if self._completions:
            with anyio.move_on_after(self.drain_timeout):
                await self._drained.wait()
        if self._completions:
            self._cancel_unfinished()
            await self._drained.wait()
        if self._journal is not None:
            await self._journal.close()
        self._state = DispatcherState.CLOSED
        logger.info("dispatcher.closed", **self._summary())
        self._closed.set()

    def _cancel_unfinished(self) -> None:
        jobs = sorted(
            f"{c.pipeline.name}:{c.key}:{job}" for c in self._completions for job in c.unfinished
        )
        logger.warning(
            "dispatcher.unfinished",
            completions=len(self._completions),
            jobs=jobs,
            drain_timeout_s=self.drain_timeout,
            kept_in_journal=self._journal is not None,
        )
        for completion in self._completions:
            completion.scope.cancel()
        # Queued ones start at once in their cancelled scope, only to report "cancelled".
        self._room.start_queued(all_of_them=True)

    # -- admission --------------------------------------------------------------------------

    def submit_nowait(self, pipeline: Pipeline[Any], event: object) -> Handle:
        """Admit ``event`` without waiting, or raise ``Overloaded`` when there is no room."""
        completion = self._prepare(pipeline, event)
        if not self._room.take_room_nowait():
            raise Overloaded(
                f"cannot admit {pipeline.name}:{completion.key}: {len(self._completions)} "
                f"completions are pending, max_pending={self.max_pending}; retry later, or "
                "use 'await dispatcher.submit(...)' to wait for room",
                pending=len(self._completions),
                max_pending=self.max_pending,
            )
        return self._admit(completion)

    async def submit(
        self, pipeline: Pipeline[Any], event: object, *, timeout: float | None = None
    ) -> Handle:
        """Admit ``event``, waiting for room if ``max_pending`` completions are unfinished.

        Raises ``Overloaded`` if no room comes within ``timeout`` seconds (``timeout=0``: no
        wait at all), and ``DispatcherClosed`` if the dispatcher starts draining meanwhile.
        With a journal it returns once the admission is on disk; ``submit_nowait`` cannot
        wait for the disk, so use ``submit(..., timeout=0)`` when that matters.
        """
        completion = self._prepare(pipeline, event)
        # Room now is taken at once: timeout=0 means "no wait for room".
        acquired = self._room.take_room_nowait() or await self._room.wait_for_room(timeout)
        if self._state is not DispatcherState.OPEN:
            if acquired:
                self._room.give_back_room()
            raise DispatcherClosed(self._closed_message(pipeline))
        if not acquired:
            raise Overloaded(
                f"cannot admit {pipeline.name}:{completion.key}: no room within {timeout} s "
                f"({len(self._completions)} pending, max_pending={self.max_pending})",
                pending=len(self._completions),
                max_pending=self.max_pending,
            )
        handle = self._admit(completion)
        if completion.durable is not None:
            # Shielded: once admitted, the caller learns whether it is on disk.
            with anyio.CancelScope(shield=True):
                try:
                    await completion.durable()
                except JournalError as exc:
                    raise JournalError(
                        f"{pipeline.name}:{completion.key} was admitted and runs, but the "
                        f"journal could not record it, so it would not survive a crash ({exc})"
                    ) from exc
        return handle

    async def run(
        self, pipeline: Pipeline[Any], event: object, *, timeout: float | None = None
    ) -> Report:
        """Admit ``event`` (waiting up to ``timeout`` for room) and return its report.

        Job errors are in the report, never raised. Cancelling the caller stops the wait,
        not the completion: admitted work runs to the end.
        """
        handle = await self.submit(pipeline, event, timeout=timeout)
        return await handle.wait()

    async def run_sync(self, fn: Callable[..., T], *args: object) -> T:
        """Run the blocking ``fn(*args)`` in a worker thread under the thread budget.

        Allowed while draining, since work finishing during a drain may need a thread (to
        save its report, say); refused once the dispatcher is closed.
        """
        if self._state is not DispatcherState.DRAINING:
            self._check_open(fn)
        assert self._budget is not None
        return await self._budget.run_sync(fn, *args)

    def _prepare(self, pipeline: Pipeline[Any], event: object) -> Completion:
        self._check_open(pipeline)
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"expected a Pipeline, got {pipeline!r}")
        model = pipeline.coerce(event)
        key = pipeline.key_of(model)
        assert self._runtime is not None
        self._runtime.lanes.check(pipeline.lanes)
        if self._journal is not None:
            self.register(pipeline)
        return Completion(self._runtime, pipeline, model, key)

    def _admit(self, completion: Completion) -> Handle:
        self._counters.admitted += 1
        completion.durable = self._recorder.admitted(completion)
        self._room.admit(completion)
        return Handle(completion)

    def _start(self, completion: Completion) -> None:
        assert self._group is not None
        self._group.start_soon(
            self._drive, completion, name=f"afterwork:{completion.pipeline.name}:{completion.key}"
        )

    async def _drive(self, completion: Completion) -> None:
        try:
            report = await completion.run()
            logger.info(
                "completion.finished",
                pipeline=report.pipeline,
                key=report.key,
                ok=report.ok,
                jobs=len(report.outcomes),
                replayed=report.replayed,
            )
            try:
                self._on_report(report)
            except Exception:
                logger.exception(
                    "dispatcher.on_report_failed", pipeline=report.pipeline, key=report.key
                )
        finally:
            self._counters.completed += 1
            self._room.finished(completion)
            if not self._completions and self._state is DispatcherState.DRAINING:
                self._drained.set()

    def _check_open(self, what: object) -> None:
        if self._state is DispatcherState.OPEN:
            return
        if self._state is DispatcherState.NEW:
            raise DispatcherNotOpen(
                "this Dispatcher is not open yet; use "
                "'async with Dispatcher(...) as dispatcher:' before submitting work"
            )
        raise DispatcherClosed(self._closed_message(what))

    def _closed_message(self, what: object) -> str:
        name = what.name if isinstance(what, Pipeline) else getattr(what, "__name__", repr(what))
        return (
            f"cannot accept {name}: the dispatcher is {self._state.value} and admits no new "
            "work; submit before aclose(), or to a new Dispatcher"
        )

    # -- observability ----------------------------------------------------------------------

    def stats(self) -> Stats:
        """A frozen snapshot of the dispatcher now."""
        c = self._counters
        budget = self._budget
        return Stats(
            state=self._state,
            max_threads=self.max_threads,
            max_pending=self.max_pending,
            threads_busy=budget.busy if budget is not None else 0,
            threads_peak=budget.peak if budget is not None else 0,
            threads_stuck=budget.stuck if budget is not None else 0,
            threads_journal=int(self._journal is not None and self._journal.running),
            pending=len(self._completions),
            queued=self._admission.queued if self._admission is not None else 0,
            running=c.running,
            admitted=c.admitted,
            completed=c.completed,
            retried=c.retried,
            **c.by_status,
        )

    def _summary(self) -> dict[str, Any]:
        return self.stats().model_dump(
            include={
                "admitted",
                "completed",
                "succeeded",
                "failed",
                "timed_out",
                "cancelled",
                "threads_peak",
                "threads_stuck",
            }
        )
