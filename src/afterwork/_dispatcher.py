"""The Dispatcher: the public face of admission, the lifecycle, and stats.

The work itself runs in the dispatcher's host task (``_host``); admission keeps its books in
``_admission`` and ``_delay``. A dispatcher lives on the event loop it was entered in: every
call is checked to come from that loop's thread, so a mistake fails where it is made.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar, TypeVarTuple, Unpack

import anyio
import anyio.lowlevel
import structlog
from pydantic import BaseModel

from . import _codec, _options
from ._admission import Admission
from ._completion import Completion
from ._delay import Delayed
from ._exceptions import (
    DispatcherClosed,
    DispatcherNotOpen,
    DuplicateJob,
    InvalidOption,
    JournalError,
    Overloaded,
    UsageError,
)
from ._handle import Handle
from ._host import Host, current_host
from ._journal import SqliteJournal
from ._journal_db import Row
from ._loop import is_current
from ._models import DispatcherState, Report, Stats
from ._pipeline import Pipeline
from ._replay import JournalRecorder, replay
from ._runtime import Counters, NullRecorder, Recorder

T = TypeVar("T")
E = TypeVar("E", bound=BaseModel)
Ts = TypeVarTuple("Ts")

logger = structlog.get_logger("afterwork")


class Dispatcher:
    """Runs pipelines' jobs in the background of an async service, within a thread budget.

    Use it as ``async with Dispatcher(...) as dispatcher:``. Leaving the block drains it
    (see ``aclose``). The options, each checked here (G10):

    - ``max_threads``: at most this many threads run blocking work at any moment (G1).
    - ``max_pending``: at most this many completions are admitted and unfinished (G4).
    - ``max_active``: at most this many of them run their jobs at once; the rest wait in a
      FIFO queue holding little more than their event.
    - ``max_delayed``: delayed submissions and parked jobs waiting for their time (G11).
    - ``park_after``: a retry wait longer than this many seconds parks the job (G11).
    - ``drain_timeout``: how long ``aclose`` lets admitted work finish before cancelling it.
    - ``lanes``: named caps on concurrently running jobs, e.g. ``{"llm": 6}``.
    - ``journal``: a path (or a ``SqliteJournal``) to make admitted work durable (G6). On
      entry, unfinished work of the ``pipelines`` (or those passed to ``register``) runs again.
    - ``on_report``: called on the event loop with the Report of every completion that ran,
      replayed ones and follow-ups included. It must not block; it may be ``async``, and with
      a journal a completion is kept until it returns, so each report is handed on at least
      once. An exception from it is logged as ``dispatcher.on_report_failed``.
    """

    def __init__(
        self,
        *,
        max_threads: int = 32,
        max_pending: int = 1000,
        max_active: int = 256,
        max_delayed: int = 10_000,
        park_after: float = 5.0,
        drain_timeout: float = 30.0,
        lanes: Mapping[str, int] | None = None,
        journal: str | os.PathLike[str] | SqliteJournal | None = None,
        pipelines: Iterable[Pipeline[Any]] = (),
        on_report: Callable[[Report], object] = lambda report: None,
    ) -> None:
        self.max_threads = _count("max_threads", max_threads, 1, 32)
        self.max_pending = _count("max_pending", max_pending, 1, 1000)
        self.max_active = _count("max_active", max_active, 1, 256)
        self.max_delayed = _count("max_delayed", max_delayed, 0, 10_000)
        self.park_after = _seconds("park_after", park_after, "5.0")
        self.drain_timeout = _seconds("drain_timeout", drain_timeout, "30")
        self._lanes = _lanes(lanes)
        self._journal = _journal(journal)
        if not callable(on_report):
            raise InvalidOption(
                f"on_report must be a function taking a Report, got {on_report!r}; "
                "e.g. Dispatcher(on_report=lambda report: print(report.ok))"
            )
        self._on_report = on_report
        self._pipelines: dict[str, Pipeline[Any]] = {}
        self.register(*pipelines)
        self._counters = Counters()
        self._recorder: Recorder = (
            NullRecorder() if self._journal is None else JournalRecorder(self._journal)
        )
        self._state = DispatcherState.NEW
        self._host: Host | None = None  # made on entry: it binds to the loop

    def __repr__(self) -> str:
        pending = len(self._host.admission.pending) if self._host is not None else 0
        return (
            f"<Dispatcher {self.state.value} max_threads={self.max_threads} "
            f"pending={pending}/{self.max_pending}>"
        )

    @property
    def state(self) -> DispatcherState:
        if self._host is not None and self._host.closed:
            return DispatcherState.CLOSED
        return self._state

    # -- lifecycle --------------------------------------------------------------------------

    def register(self, *pipelines: Pipeline[Any]) -> None:
        """Name the pipelines whose unfinished work the journal may replay on entry.

        With a journal, each pipeline's event model is checked to survive the journal's JSON
        exactly (``InvalidEvent`` names a field that would not, such as a secret).
        """
        for pipeline in pipelines:
            if not isinstance(pipeline, Pipeline):
                raise InvalidOption(
                    f"register() takes Pipeline objects, got {pipeline!r}; "
                    "e.g. dispatcher.register(pipeline)"
                )
            known = self._pipelines.get(pipeline.name)
            if known is pipeline:
                continue
            if known is not None:
                raise DuplicateJob(
                    f"another pipeline named {pipeline.name!r} is already registered; "
                    "pipeline names must be unique within a dispatcher"
                )
            if self._journal is not None:
                _codec.check_model(pipeline.event)
            self._pipelines[pipeline.name] = pipeline

    async def __aenter__(self) -> Dispatcher:
        if self._state is not DispatcherState.NEW:
            raise UsageError(
                f"this Dispatcher is {self.state.value} and cannot be entered again; "
                "create a new Dispatcher for each 'async with'"
            )
        self._state = DispatcherState.OPEN  # before any await: a second entry is refused
        token = anyio.lowlevel.current_token()
        rows: list[Row] = []
        if self._journal is not None:
            # First, so a bad path or file (JournalError) leaves nothing half-open.
            rows = await anyio.to_thread.run_sync(self._journal.open, token)
        host = Host(
            max_threads=self.max_threads,
            lanes=self._lanes,
            admission=Admission(self.max_pending, self.max_active),
            delayed=Delayed(self.max_delayed, self.park_after),
            counters=self._counters,
            recorder=self._recorder,
            on_report=self._on_report,
            drain_timeout=self.drain_timeout,
            journal=self._journal,
            log=logger,
        )
        journal, pipelines = self._journal, self._pipelines
        background = None
        if journal is not None:
            background = lambda host: replay(host, journal, rows, pipelines, logger)  # noqa: E731
        isolate = journal is not None and any(
            0 < row.crashes < journal.max_recoveries and row.pipeline in pipelines for row in rows
        )
        try:
            await host.start(background, isolate=isolate)
        except BaseException:
            self._state = DispatcherState.CLOSED
            if journal is not None:
                with anyio.CancelScope(shield=True):
                    await journal.close()
            raise
        self._host = host
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Drain even when the block was cancelled: the drain is bounded by drain_timeout.
        with anyio.CancelScope(shield=True):
            await self.aclose()

    async def aclose(self) -> None:
        """Drain and close. Idempotent, cancel-safe, and callable from any task of the loop.

        1. New work is refused at once with ``DispatcherClosed``.
        2. Admitted work gets up to ``drain_timeout`` seconds to finish; what is still queued
           at the deadline never starts.
        3. What is left is cancelled, and each unfinished job is named in one
           ``dispatcher.unfinished`` event; with a journal it is kept for the next start.

        The drain runs in the dispatcher's own task: a caller who gives up on ``aclose``
        stops only its own wait, and ``aclose`` called from a job starts the drain and
        returns at once, since a job cannot wait for its own completion to finish.
        """
        host = self._host
        if host is None:
            if self._state is DispatcherState.NEW:
                self._state = DispatcherState.CLOSED
            return
        self._check_loop("aclose")
        if self._state is DispatcherState.OPEN:
            self._state = DispatcherState.DRAINING
            host.stop()
        if current_host.get() is not host:
            await host.wait_closed()

    # -- admission --------------------------------------------------------------------------

    def submit_nowait(
        self, pipeline: Pipeline[E], event: E | Mapping[str, Any], *, delay: float | None = None
    ) -> Handle:
        """Admit ``event`` without waiting, or raise ``Overloaded`` when there is no room.

        With ``delay``, it starts that many seconds from now and holds no pending place until
        then (it takes one of ``max_delayed`` instead). With a journal, the admission's write
        is queued, not awaited: use ``await submit(..., timeout=0)`` to know it is on disk.
        """
        completion = self._prepare(pipeline, event, delay)
        host = self._open_host()
        if delay is None:
            if not host.admission.take_room_nowait():
                raise self._overloaded(completion, None, delayed=False)
        elif not host.delayed.take_slot_nowait():
            raise self._overloaded(completion, None, delayed=True)
        self._admit(host, completion)
        return Handle(completion)

    async def submit(
        self,
        pipeline: Pipeline[E],
        event: E | Mapping[str, Any],
        *,
        timeout: float | None = None,
        delay: float | None = None,
    ) -> Handle:
        """Admit ``event``, waiting for room if ``max_pending`` completions are unfinished.

        Raises ``Overloaded`` if no room comes within ``timeout`` seconds (``timeout=0``: no
        wait at all), and ``DispatcherClosed`` if the dispatcher starts draining meanwhile.
        With ``delay``, see ``submit_nowait``. With a journal it returns once the admission
        is on disk, or raises ``JournalError`` if it could not be written.
        """
        limit = None if timeout is None else _seconds("submit timeout", timeout, "0", call=True)
        completion = self._prepare(pipeline, event, delay)
        host = self._open_host()
        if delay is None:
            room = host.admission.take_room_nowait() or await host.admission.wait_for_room(limit)
            give_back = host.admission.give_back_room
        else:
            room = host.delayed.take_slot_nowait() or await host.delayed.wait_for_slot(limit)
            give_back = host.delayed.give_back_slot
        if self.state is not DispatcherState.OPEN:
            if room:
                give_back()
            raise DispatcherClosed(self._closed_message(pipeline))
        if not room:
            raise self._overloaded(completion, limit, delayed=delay is not None)
        self._admit(host, completion)
        if completion.durable is not None:
            # Shielded: once admitted, the caller learns whether it is on disk.
            with anyio.CancelScope(shield=True):
                await completion.durable()
            completion.durable = None
        return Handle(completion)

    async def run(
        self,
        pipeline: Pipeline[E],
        event: E | Mapping[str, Any],
        *,
        timeout: float | None = None,
    ) -> Report:
        """Admit ``event`` (waiting up to ``timeout`` for room) and return its report.

        Job errors are in the report, never raised. Cancelling the caller stops the wait,
        not the completion: admitted work runs to the end.
        """
        handle = await self.submit(pipeline, event, timeout=timeout)
        return await handle.wait()

    async def run_sync(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Run the blocking ``fn(*args)`` in a worker thread under the thread budget.

        Allowed while draining, since work finishing during a drain may need a thread (to
        save its report, say); refused once the dispatcher is closed.
        """
        host = self._host
        if self.state is not DispatcherState.DRAINING or host is None:
            host = self._open_host(fn)
        self._check_loop("run_sync")
        assert host.runtime is not None
        return await host.runtime.budget.run_sync(fn, *args)

    def _prepare(
        self, pipeline: Pipeline[E], event: E | Mapping[str, Any], delay: float | None
    ) -> Completion:
        """Everything checked before any room is taken: a refusal leaves nothing behind."""
        host = self._open_host(pipeline)
        self._check_loop("submit")
        if not isinstance(pipeline, Pipeline):
            raise InvalidOption(
                f"submit() takes a Pipeline first, got {pipeline!r}; "
                "e.g. dispatcher.submit(pipeline, event)"
            )
        if self._journal is not None:
            self.register(pipeline)
            if self._journal.failure is not None:
                raise JournalError(
                    f"cannot admit work to {pipeline.name!r}: the journal failed "
                    f"({self._journal.failure}); restart once it is fixed"
                )
        model = pipeline.coerce(event)
        key = pipeline.key_of(model)
        assert host.runtime is not None
        host.runtime.lanes.check(pipeline.lanes)
        due = None
        if delay is not None:
            seconds = _seconds("submit delay", delay, "30", call=True)
            due = datetime.now(UTC) + timedelta(seconds=seconds)
        return Completion(
            host.runtime,
            pipeline,
            model,
            key,
            # The submitter's context, so the jobs see what it bound (G8).
            context=contextvars.copy_context(),
            encoded=_codec.encode(pipeline.event, model) if self._recorder.encodes_events else None,
            due_at=due,
        )

    def _admit(self, host: Host, completion: Completion) -> None:
        self._counters.admitted += 1
        completion.durable = self._recorder.admitted(completion)
        if completion.due_at is None:
            host.admit(completion)
        else:
            host.schedule(completion)

    def _open_host(self, what: object = None) -> Host:
        if self.state is DispatcherState.OPEN and self._host is not None:
            return self._host
        if self.state is DispatcherState.NEW:
            raise DispatcherNotOpen(
                "this Dispatcher is not open yet; use "
                "'async with Dispatcher(...) as dispatcher:' before submitting work"
            )
        raise DispatcherClosed(self._closed_message(what))

    def _check_loop(self, action: str) -> None:
        host = self._host
        if host is not None and host.runtime is not None and not is_current(host.runtime.token):
            raise UsageError(
                f"{action} was called outside the event loop this Dispatcher runs on (another "
                "loop, or a thread that is not the loop's); a Dispatcher lives on the loop "
                "that entered it: from a worker thread use anyio.from_thread.run(...), or "
                "give each event loop a Dispatcher of its own"
            )

    def _overloaded(
        self, completion: Completion, waited: float | None, *, delayed: bool
    ) -> Overloaded:
        host = self._host
        assert host is not None
        if delayed:
            count, bound, name = len(host.delayed), self.max_delayed, "max_delayed"
            what, short = "delayed completions are waiting", "delayed"
        else:
            count, bound, name = len(host.admission.pending), self.max_pending, "max_pending"
            what, short = "completions are pending", "pending"
        if waited is None:
            message = (
                f"cannot admit {completion.label}: {count} {what}, {name}={bound}; retry "
                "later, or use 'await dispatcher.submit(...)' to wait for room"
            )
        else:
            message = (
                f"cannot admit {completion.label}: no room within {waited:g} s "
                f"({count} {short}, {name}={bound})"
            )
        return Overloaded(message, pending=count, max_pending=bound)

    def _closed_message(self, what: object) -> str:
        name = what.name if isinstance(what, Pipeline) else getattr(what, "__name__", repr(what))
        return (
            f"cannot accept {name}: the dispatcher is {self.state.value} and admits no new "
            "work; submit before aclose(), or to a new Dispatcher"
        )

    # -- observability ----------------------------------------------------------------------

    def unfinished(self, pipeline: Pipeline[Any], key: str) -> list[Handle]:
        """Handles of the completions of ``key`` not finished yet: running, queued, delayed
        (see ``Handle.due_at``), parked follow-ups, or journaled work not replayed yet."""
        if self._host is None:
            return []
        return [Handle(c) for c in self._host.unfinished(pipeline.name, str(key))]

    def stats(self) -> Stats:
        """A frozen snapshot of the dispatcher now."""
        c, host = self._counters, self._host
        runtime = host.runtime if host is not None else None
        budget = runtime.budget if runtime is not None else None
        return Stats(
            state=self.state,
            max_threads=self.max_threads,
            max_pending=self.max_pending,
            max_delayed=self.max_delayed,
            threads_busy=budget.busy if budget is not None else 0,
            threads_peak=budget.peak if budget is not None else 0,
            threads_stuck=budget.stuck if budget is not None else 0,
            threads_journal=int(self._journal is not None and self._journal.running),
            pending=len(host.admission.pending) if host is not None else 0,
            queued=host.admission.queued if host is not None else 0,
            delayed=len(host.delayed) if host is not None else 0,
            replaying=host is not None and host.replaying,
            running=c.running,
            admitted=c.admitted,
            completed=c.completed,
            retried=c.retried,
            journal_error=self._journal.failure if self._journal is not None else None,
            **{status.value: n for status, n in c.by_status.items()},
        )


def _count(option: str, value: object, minimum: int, example: int) -> int:
    return _options.count(option, value, minimum, f"e.g. Dispatcher({option}={example})")


def _seconds(option: str, value: object, example: str, *, call: bool = False) -> float:
    if call:
        keyword = option.split()[-1]
        fix = f"e.g. dispatcher.submit(pipeline, event, {keyword}={example})"
    else:
        fix = f"e.g. Dispatcher({option}={example})"
    return _options.seconds(option, value, fix)


def _lanes(lanes: object) -> dict[str, int]:
    if lanes is None:
        return {}
    if not isinstance(lanes, Mapping):
        raise InvalidOption(f"lanes must be a dict of lane sizes, got {lanes!r}; "
                            "e.g. Dispatcher(lanes={'llm': 6})")  # fmt: skip
    checked = {}
    for name, size in lanes.items():
        lane = _options.name("a lane name", name, "e.g. Dispatcher(lanes={'llm': 6})")
        checked[lane] = _options.count(
            f"lanes[{lane!r}]", size, 1, f"e.g. Dispatcher(lanes={{{lane!r}: 6}})"
        )
    return checked


def _journal(journal: object) -> SqliteJournal | None:
    if journal is None or isinstance(journal, SqliteJournal):
        return journal
    if isinstance(journal, str | os.PathLike):
        return SqliteJournal(journal)
    raise InvalidOption(
        f"journal must be a path or a SqliteJournal, got {journal!r}; "
        "e.g. Dispatcher(journal='var/afterwork.db')"
    )
