"""The Dispatcher: the public face of admission, the lifecycle, and stats.

The work runs in the dispatcher's host task (``_host``); what is checked before admission is
in ``_intake``, the options in ``_config``. A dispatcher lives on the loop that entered it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar, TypeVarTuple

import anyio
import anyio.lowlevel
import structlog
from pydantic import BaseModel

from . import _config, _intake
from ._admission import Admission
from ._completion import Completion
from ._delay import Delayed
from ._exceptions import DispatcherClosed, DispatcherNotOpen, UsageError
from ._handle import Handle
from ._host import Host, closed_message, current_host
from ._journal import SqliteJournal
from ._journal_db import Row
from ._models import DispatcherState, Report, Stats
from ._pipeline import Pipeline
from ._registry import register
from ._replay import JournalRecorder, replay_of
from ._reservation import Reservation
from ._runtime import Counters, NullRecorder, Recorder
from ._stats import snapshot

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
        self._config = config = _config.check(
            max_threads=max_threads,
            max_pending=max_pending,
            max_active=max_active,
            max_delayed=max_delayed,
            park_after=park_after,
            drain_timeout=drain_timeout,
            lanes=lanes,
            journal=journal,
            on_report=on_report,
        )
        self.max_threads, self.max_pending = config.max_threads, config.max_pending
        self.max_active, self.max_delayed = config.max_active, config.max_delayed
        self.park_after, self.drain_timeout = config.park_after, config.drain_timeout
        self._journal = config.journal
        self._pipelines: dict[str, Pipeline[Any]] = {}
        self.register(*pipelines)
        self._counters = Counters()
        self._recorder = self._make_recorder()
        self._state = DispatcherState.NEW
        self._host: Host | None = None  # made on entry: it binds to the loop

    def _make_recorder(self) -> Recorder:  # a subclass may record elsewhere (in Redis)
        return NullRecorder() if self._journal is None else JournalRecorder(self._journal)

    def __repr__(self) -> str:
        pending = len(self._host.admission.pending) if self._host is not None else 0
        return (
            f"<Dispatcher {self.state.value} max_threads={self.max_threads} "
            f"pending={pending}/{self.max_pending}>"
        )

    @property
    def state(self) -> DispatcherState:  # closed once the host task has said so
        closed = self._host is not None and self._host.closed
        return DispatcherState.CLOSED if closed else self._state

    # -- lifecycle --------------------------------------------------------------------------

    def register(self, *pipelines: Pipeline[Any]) -> None:
        """Name the pipelines whose unfinished work the journal may replay on entry.

        With a journal, each pipeline's event model is checked to survive the journal's JSON
        exactly (``InvalidEvent`` names a field that would not, such as a secret).
        """
        register(self._pipelines, pipelines, journaled=self._journal is not None)

    async def __aenter__(self) -> Dispatcher:
        if self._state is not DispatcherState.NEW:
            raise UsageError(
                f"this Dispatcher is {self.state.value} and cannot be entered again; "
                "create a new Dispatcher for each 'async with'"
            )
        self._state = DispatcherState.OPEN  # before any await: a second entry is refused
        journal, config = self._journal, self._config
        rows: list[Row] = []
        if journal is not None:
            # First, so a bad path or file (JournalError) leaves nothing half-open.
            rows = await anyio.to_thread.run_sync(journal.open, anyio.lowlevel.current_token())
        host = Host(
            config=config,
            admission=Admission(config.max_pending, config.max_active),
            delayed=Delayed(config.max_delayed, config.park_after),
            counters=self._counters,
            recorder=self._recorder,
            log=logger,
        )
        try:
            await host.start(*replay_of(journal, rows, self._pipelines, logger))
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
        stops only its own wait, and ``aclose`` from a job returns at once.
        """
        self.close()
        if self._host is not None and current_host.get() is not self._host:
            await self._host.wait_closed()

    def close(self) -> None:
        """Begin the drain and return at once; ``await aclose()`` waits for it to end."""
        if self._host is None:
            if self._state is DispatcherState.NEW:
                self._state = DispatcherState.CLOSED
            return
        _intake.check_loop(self._host, "aclose")
        if self._state is DispatcherState.OPEN:
            self._state = DispatcherState.DRAINING
            self._host.stop()

    # -- admission --------------------------------------------------------------------------

    def submit_nowait(
        self, pipeline: Pipeline[E], event: E | Mapping[str, Any], *, delay: float | None = None
    ) -> Handle:
        """Admit ``event`` without waiting, or raise ``Overloaded`` when there is no room.

        With ``delay``, it starts that many seconds from now and holds no pending place until
        then (it takes one of ``max_delayed`` instead). With a journal, the admission's write
        is queued, not awaited: use ``await submit(..., timeout=0)`` to know it is on disk.
        """
        host = self._open_host(pipeline)
        completion = self._prepare(host, pipeline, event, delay)
        if not host.take_room_nowait(completion):
            raise _intake.overloaded(host, self._config, completion, None)
        host.enter(completion)
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
        limit = None if timeout is None else _config.call_seconds("timeout", timeout, "0")
        host = self._open_host(pipeline)
        completion = self._prepare(host, pipeline, event, delay)
        room = host.take_room_nowait(completion) or await host.wait_for_room(completion, limit)
        if self.state is not DispatcherState.OPEN:
            if room:
                host.give_back_room(completion)
            raise DispatcherClosed(closed_message(self.state.value, pipeline))
        if not room:
            raise _intake.overloaded(host, self._config, completion, limit)
        return await _intake.enter(host, completion)

    async def run(
        self, pipeline: Pipeline[E], event: E | Mapping[str, Any], *, timeout: float | None = None
    ) -> Report:
        """Admit ``event`` (waiting up to ``timeout`` for room) and return its report. Job
        errors are in the report, never raised; a cancelled caller stops only its wait."""
        handle = await self.submit(pipeline, event, timeout=timeout)
        return await handle.wait()

    def reserve(self, *, timeout: float | None = None) -> Reservation:
        """Hold a pending place for a submission to come (see ``Reservation``): ``async with
        dispatcher.reserve() as room:`` takes it, waiting up to ``timeout`` or raising
        ``Overloaded`` as ``submit`` does, and ``await room.submit(pipeline, event)`` fills it;
        leaving the block unfilled gives it back."""
        limit = None if timeout is None else _config.call_seconds("timeout", timeout, "0")
        return Reservation(self._open_host, self._config, limit, self._prepare)

    async def run_sync(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run the blocking ``fn(*args)`` in a worker thread under the thread budget.

        Allowed while draining, since work finishing during a drain may need a thread (to
        save its report, say); refused once the dispatcher is closed.
        """
        host = self._host
        if self.state is not DispatcherState.DRAINING or host is None:
            host = self._open_host(fn)
        _intake.check_loop(host, "run_sync")
        assert host.runtime is not None
        return await host.runtime.budget.run_sync(fn, *args)

    def _prepare(
        self, host: Host, pipeline: Pipeline[E], event: E | Mapping[str, Any], delay: float | None
    ) -> Completion:
        _intake.check_loop(host, "submit")  # before anything is registered
        if self._journal is not None and isinstance(pipeline, Pipeline):
            self.register(pipeline)
        return _intake.prepare(
            host, self._config, pipeline, event, delay, encode=self._recorder.encodes_events
        )

    def _open_host(self, what: object) -> Host:
        if self.state is DispatcherState.OPEN and self._host is not None:
            return self._host
        if self.state is DispatcherState.NEW:
            raise DispatcherNotOpen(
                "this Dispatcher is not open yet; use "
                "'async with Dispatcher(...) as dispatcher:' before submitting work"
            )
        raise DispatcherClosed(closed_message(self.state.value, what))

    # -- observability ----------------------------------------------------------------------

    def unfinished(self, pipeline: Pipeline[Any], key: str) -> list[Handle]:
        """Handles of the completions of ``key`` not finished yet: running, queued, delayed
        (see ``Handle.due_at``), parked follow-ups, or journaled work not replayed yet."""
        if self._host is None:
            return []
        return [Handle(c) for c in self._host.unfinished(pipeline.name, str(key))]

    def stats(self) -> Stats:
        """A frozen snapshot of the dispatcher now."""
        return snapshot(self.state, self._config, self._counters, self._host)
