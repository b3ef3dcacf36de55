"""The dispatcher's own task: it runs completions, moves delayed work in when it is due, and
drains.

It is started on the loop itself, outside every caller's cancel scopes (``_loop``), so it
belongs to no caller. ``aclose()`` only asks it to stop and then waits, boundedly, for it to
say it has closed: called from a job, from a task that gives up on it, or twice, the drain
still runs in here, to its deadline, and every ``async with`` block exits within
``drain_timeout`` plus ``CLOSE_MARGIN_S`` (G5). Nothing ever escapes this task: what goes
wrong in it is logged as ``dispatcher.crashed``.

The drain: admission is refused at once (the dispatcher's state), waiters for room are woken,
and replay and the mover of delayed work stop. Admitted work, started or queued, gets until
the deadline; queued completions still start as places free. At the deadline whatever has not
started never starts (it is kept in the journal, if there is one), running completions are
cancelled, and one ``dispatcher.unfinished`` event names every unfinished job.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from structlog.typing import FilteringBoundLogger

from ._admission import Admission
from ._budget import Lanes, ThreadBudget
from ._completion import Completion
from ._config import Config
from ._delay import Delayed
from ._exceptions import DispatcherClosed
from ._job import cancelled_by_dispatcher, run_job
from ._loop import protect_from_interrupts, spawn_unscoped
from ._models import Report
from ._runtime import Counters, Recorder, Runtime

#: Beyond ``drain_timeout``: time for cancellation to land and the journal to close.
CLOSE_MARGIN_S = 1.5
#: How long cancelled completions get to end before the host stops waiting for them.
CANCEL_GRACE_S = 1.0

#: Set in the tasks that run a host's completions: ``aclose()`` from a job must not wait.
current_host: contextvars.ContextVar[Host | None] = contextvars.ContextVar(
    "afterwork_host", default=None
)

Background = Callable[["Host"], Awaitable[None]]


def closed_message(state: str, what: object) -> str:
    name = getattr(what, "name", None) or getattr(what, "__name__", None) or str(what)
    return (
        f"cannot accept {name}: the dispatcher is {state} and admits no new "
        "work; submit before aclose(), or to a new Dispatcher"
    )


class Host:
    """Runs completions in a task of its own; see the module docstring."""

    def __init__(
        self,
        *,
        config: Config,
        admission: Admission,
        delayed: Delayed,
        counters: Counters,
        recorder: Recorder,
        log: FilteringBoundLogger,
    ) -> None:
        self.max_threads = config.max_threads
        self.admission = admission
        self.delayed = delayed
        self.counters = counters
        self.recorder = recorder
        self.drain_timeout = config.drain_timeout
        self.journal = config.journal
        self.log = log
        self.replaying = False
        self._lanes = dict(config.lanes)
        self._max_active = config.max_active
        self._on_report = config.on_report
        self._stop = anyio.Event()
        self._closed = anyio.Event()
        self._drained = anyio.Event()
        self._draining = False
        self._stop_time = 0.0
        self._group: TaskGroup | None = None
        self._background_scope = anyio.CancelScope()
        self._startup_error: BaseException | None = None
        self._task: object = None
        self._abandoned: list[str] = []
        self._capacity_changed = anyio.Event()
        # Unfinished completions by (pipeline, key): admitted, delayed, or awaiting replay.
        self._by_key: dict[tuple[str, str], set[Completion]] = {}
        self.runtime: Runtime | None = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def open_or_raise(self, what: object) -> None:
        """Raise ``DispatcherClosed`` once the drain has begun."""
        if self._stop.is_set():
            raise DispatcherClosed(closed_message("closed" if self.closed else "draining", what))

    async def start(self, background: Background | None, isolate: bool) -> None:
        """Start the host task and wait until it runs (``isolate``: one completion at a time
        until ``end_isolation``, for the journal's crash suspects)."""
        if isolate:
            self.admission.max_active = 1
        ready = anyio.Event()
        token = anyio.lowlevel.current_token()
        if type(token.native_token).__module__.startswith("trio"):
            protect_from_interrupts(run_job)
        self._task = spawn_unscoped(
            token, lambda: self._main(token, background, ready), "afterwork:dispatcher"
        )
        with anyio.CancelScope(shield=True):  # startup is short, and must not be half-done
            await ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    async def _main(
        self,
        token: anyio.lowlevel.EventLoopToken,
        background: Background | None,
        ready: anyio.Event,
    ) -> None:
        try:
            async with ThreadBudget(self.max_threads) as budget, anyio.create_task_group() as group:
                self.runtime = Runtime(
                    budget=budget,
                    lanes=Lanes(self._lanes),
                    counters=self.counters,
                    recorder=self.recorder,
                    delayed=self.delayed,
                    token=token,
                    loop_thread=threading.get_ident(),
                    log=self.log,
                )
                self._group = group
                group.start_soon(self._background, background, name="afterwork:background")
                ready.set()
                await self._stop.wait()
                await self._drain()
                # Named now: leaving the budget stops watching these threads.
                self._abandoned = budget.running_labels()
                group.cancel_scope.cancel()
        except BaseException as error:  # a host task must never raise
            if not ready.is_set():
                self._startup_error = error
            elif not isinstance(error, anyio.get_cancelled_exc_class()):
                self.log.critical("dispatcher.crashed", exc_info=error)
        finally:
            ready.set()
            with anyio.CancelScope(shield=True):
                await self._finish()

    async def _background(self, background: Background | None) -> None:
        """The mover of delayed work, and replay: both stop when the drain begins."""
        with self._background_scope:
            async with anyio.create_task_group() as group:
                group.start_soon(self._move_due, name="afterwork:delayed")
                if background is not None:
                    self.replaying = True
                    try:
                        await background(self)
                    finally:
                        self.replaying = False

    # -- starting and finishing completions --------------------------------------------------

    # -- room: max_pending for work due now, max_delayed for work that waits -----------------

    def take_room_nowait(self, completion: Completion) -> bool:
        if completion.due_at is None:
            return self.admission.take_room_nowait()
        return self.delayed.take_slot_nowait()

    async def wait_for_room(self, completion: Completion, timeout: float | None) -> bool:
        if completion.due_at is None:
            return await self.admission.wait_for_room(timeout)
        return await self.delayed.wait_for_slot(timeout)

    def give_back_room(self, completion: Completion) -> None:
        if completion.due_at is None:
            self.admission.give_back_room()
        else:
            self.delayed.give_back_slot()

    def enter(self, completion: Completion) -> None:
        """Admit a new submission whose room (or slot) is taken: it is recorded (with a
        journal, ``completion.durable`` returns once that is on disk), then started,
        queued or kept until it is due."""
        self.counters.admitted += 1
        completion.durable = self.recorder.admitted(completion)
        if completion.due_at is None:
            self.admit(completion)
        else:
            self.schedule(completion)

    def admit(self, completion: Completion, *, first: bool = False) -> None:
        """Admit a completion whose room is taken; it starts now or when a place frees."""
        self.track(completion)
        for ready in self.admission.admit(completion, first=first):
            self._start(ready)

    def schedule(self, completion: Completion) -> None:
        """Keep delayed work (its ``max_delayed`` slot is taken) until it is due."""
        assert completion.due_at is not None
        self.track(completion)
        wait = (completion.due_at - datetime.now(UTC)).total_seconds()
        self.delayed.add(completion, anyio.current_time() + max(0.0, wait))

    def track(self, completion: Completion) -> None:
        self._by_key.setdefault((completion.pipeline.name, completion.key), set()).add(completion)

    def unfinished(self, pipeline: str, key: str) -> list[Completion]:
        """The completions of ``key`` not finished yet: running, queued, delayed or replayed."""
        return list(self._by_key.get((pipeline, key), ()))

    def resolve(self, completion: Completion, report: Report) -> None:
        """Wake the completion's waiters; it is no longer unfinished."""
        completion.resolve(report)
        index = (completion.pipeline.name, completion.key)
        same_key = self._by_key.get(index)
        if same_key is not None:
            same_key.discard(completion)
            if not same_key:
                del self._by_key[index]

    async def readmit(self, completion: Completion, *, first: bool = False) -> bool:
        """Admit a replayed completion once there is room (or a slot, if it is not due yet);
        False when a drain began meanwhile."""
        if completion.due_at is not None and completion.due_at > datetime.now(UTC):
            if not await self.delayed.wait_for_slot(None):
                return False
            self.counters.admitted += 1
            self.schedule(completion)
            return True
        if not await self.admission.wait_for_room(None):
            return False
        self.counters.admitted += 1
        self.admit(completion, first=first)
        return True

    async def wait_for_capacity(self) -> None:
        """Wait until a new completion would be admitted and start at once, with no call
        queued for a thread: the moment a consumer pulling from a queue may take one more."""
        assert self.runtime is not None
        budget = self.runtime.budget
        while not (self.admission.can_start_now and budget.waiting == 0):
            changed = self._capacity_changed = anyio.Event()
            budget.on_release = changed.set
            await changed.wait()

    def end_isolation(self) -> None:
        for ready in self.admission.set_max_active(self._max_active):
            self._start(ready)

    def _start(self, completion: Completion) -> None:
        # In the submitter's context, captured at admission (G8), not in the context of
        # whichever task happens to free a place.
        completion.context.run(self._spawn_drive, completion)

    def _spawn_drive(self, completion: Completion) -> None:
        assert self._group is not None
        self._group.start_soon(self._drive, completion, name=f"afterwork:{completion.label}")

    async def _move_due(self) -> None:
        while True:
            completion = await self.delayed.next_due()
            if not await self.admission.wait_for_room(None):
                return
            self.delayed.remove(completion)
            self.admit(completion)

    async def _drive(self, completion: Completion) -> None:
        current_host.set(self)
        runtime = self.runtime
        assert runtime is not None
        delivered = False
        try:
            # With a journal, a completion's jobs start only once its start is on disk: after
            # a crash, the journal then knows exactly which completions were running.
            report = await completion.run(runtime.recorder.started(completion))
            await self._hand_on(completion, report)
            delivered = True
        finally:
            if not delivered:
                runtime.recorder.interrupted(completion)  # kept for the next start
                for _ in completion.followups:
                    self.delayed.give_back_slot()
            self.resolve(completion, completion.report or completion.never_started())
            self.counters.completed += 1
            for ready in self.admission.finished(completion):
                self._start(ready)
            if self._draining and not self.admission.pending:
                self._drained.set()
            self._capacity_changed.set()

    async def _hand_on(self, completion: Completion, report: Report) -> None:
        """The report goes to ``on_report`` and the recorder before any waiter wakes, and
        the completion's parked jobs continue as follow-ups."""
        self.log.info(
            "completion.finished",
            pipeline=report.pipeline,
            key=report.key,
            ok=report.ok,
            jobs=len(report.outcomes),
            replayed=report.replayed,
        )
        await self.deliver(completion, report)
        self.recorder.completion_finished(completion, report, completion.followups)
        for followup in completion.followups:
            self.schedule(followup)
        completion.followups = []

    async def deliver(self, completion: Completion, report: Report) -> None:
        """Hand ``report`` to ``on_report``, awaiting it if it returns an awaitable."""
        try:
            result = self._on_report(report)
            if inspect.isawaitable(result):
                await result
        except BaseException:
            # Whatever the hook raises (SystemExit, a cancellation of its own) is its own
            # failure, as with a job; only the dispatcher's cancellation goes on up.
            if cancelled_by_dispatcher():
                raise
            self.log.exception(
                "dispatcher.on_report_failed", pipeline=report.pipeline, key=report.key
            )

    # -- closing -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin the drain (once); it runs in the host task."""
        if not self._stop.is_set():
            self._stop_time = anyio.current_time()
            self._stop.set()

    async def wait_closed(self) -> bool:
        """Wait until the host has closed, at most until the drain deadline plus the margin;
        False if it had not by then (a task that ignores cancellation, logged)."""
        if self._closed.is_set():
            return True
        deadline = self._stop_time + self.drain_timeout + CLOSE_MARGIN_S
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            await self._closed.wait()
            return True
        self.log.error(
            "dispatcher.close_abandoned",
            completions=sorted(c.label for c in self.admission.pending),
            hint="a job ignores cancellation (a shielded scope, or a swallowed cancel): it runs "
            "on unattended",
        )
        return False

    async def _drain(self) -> None:
        self._draining = True
        self.log.info(
            "dispatcher.draining",
            pending=len(self.admission.pending),
            delayed=len(self.delayed),
            drain_timeout_s=self.drain_timeout,
        )
        self.admission.refuse_waiters()
        self.delayed.refuse_waiters()
        self._background_scope.cancel()  # what replay has not re-admitted stays in the journal
        deadline = self._stop_time + self.drain_timeout
        assert self.runtime is not None
        with anyio.move_on_after(deadline - anyio.current_time()):
            if self.admission.pending:
                await self._drained.wait()
            # Blocking calls made during the drain (run_sync stays open for them) finish too.
            await self.runtime.budget.wait_for_callers()
        unstarted = self.admission.take_queued() + self.delayed.take_all()
        running = list(self.admission.pending)
        # Named now, before cancelling changes them; reported once the last have ended.
        names = self._unfinished_jobs(running + unstarted)
        for completion in running:
            completion.scope.cancel()
        self._leave_unstarted(unstarted)
        if self.admission.pending:
            with anyio.move_on_after(CANCEL_GRACE_S):
                await self._drained.wait()
        # Follow-ups of jobs parked by completions that ended during the drain never start
        # either: kept in the journal (or lost without one), and named with the rest.
        late = self.delayed.take_all()
        self._leave_unstarted(late)
        unstarted += late
        if names or late:
            self._report_unfinished(names + self._unfinished_jobs(late), running, unstarted)

    def _leave_unstarted(self, completions: list[Completion]) -> None:
        for completion in completions:
            self.recorder.interrupted(completion)
            self.resolve(completion, completion.never_started())

    @staticmethod
    def _unfinished_jobs(completions: list[Completion]) -> list[str]:
        return [f"{c.label}:{job}" for c in completions for job in c.unfinished]

    def _report_unfinished(
        self, jobs: list[str], running: list[Completion], unstarted: list[Completion]
    ) -> None:
        self.log.warning(
            "dispatcher.unfinished",
            completions=len(running) + len(unstarted),
            never_started=sorted(c.label for c in unstarted),
            jobs=sorted(jobs),
            drain_timeout_s=self.drain_timeout,
            kept_in_journal=self.journal is not None,
        )

    async def _finish(self) -> None:
        if self._abandoned:
            self.log.warning(
                "dispatcher.threads_abandoned",
                threads=len(self._abandoned),
                jobs=self._abandoned,
                hint="these threads run on unattended (stats().threads_stuck counts them); a "
                "process that must exit now can call os._exit() once it has flushed its output",
            )
        if self.journal is not None:
            try:
                await self.journal.close()
            except Exception:
                self.log.exception("journal.close_failed", path=str(self.journal.path))
        self._closed.set()
        self.log.info("dispatcher.closed", **self._summary())

    def _summary(self) -> dict[str, Any]:
        c = self.counters
        budget = self.runtime.budget if self.runtime is not None else None
        return {
            "admitted": c.admitted,
            "completed": c.completed,
            **{status.value: n for status, n in c.by_status.items()},
            "threads_peak": budget.peak if budget is not None else 0,
            "threads_stuck": budget.stuck if budget is not None else 0,
        }
