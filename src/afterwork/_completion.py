"""One completion: one event through one pipeline, as one task group of jobs and children."""

from __future__ import annotations

import functools
import random
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel
from structlog.typing import FilteringBoundLogger

from ._budget import Lanes, ThreadBudget
from ._context import JobContext
from ._exceptions import DuplicateJob, JobTimeout
from ._models import JobOutcome, JobStatus, Report
from ._pipeline import JobSpec, callable_name, check_callable, is_async_callable

if TYPE_CHECKING:
    from ._pipeline import Pipeline

# Backoff never grows past this, however many retries a job asks for.
MAX_BACKOFF_S = 60.0


class Recorder(Protocol):
    """Where admissions and outcomes go as they happen (the journal's seam)."""

    def admitted(self, completion: Completion) -> Callable[[], Awaitable[object]] | None:
        """Queue the admission's write; the result, awaited, returns once it is on disk."""
        ...

    def child_spawned(self, completion: Completion, job: str) -> None: ...

    def job_finished(self, completion: Completion, outcome: JobOutcome) -> None: ...

    def completion_finished(self, completion: Completion, report: Report) -> None: ...


class NullRecorder:
    """Records nothing: the dispatcher without a journal."""

    def admitted(self, completion: Completion) -> Callable[[], Awaitable[object]] | None:
        return None

    def child_spawned(self, completion: Completion, job: str) -> None:
        pass

    def job_finished(self, completion: Completion, outcome: JobOutcome) -> None:
        pass

    def completion_finished(self, completion: Completion, report: Report) -> None:
        pass


@dataclass
class Counters:
    """The dispatcher's running totals; ``Dispatcher.stats()`` copies them into a Stats."""

    admitted: int = 0
    completed: int = 0
    running: int = 0
    retried: int = 0
    by_status: dict[JobStatus, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("succeeded", "failed", "timed_out", "skipped", "cancelled"), 0
        )
    )


@dataclass
class Runtime:
    """What every completion of one dispatcher shares."""

    budget: ThreadBudget
    lanes: Lanes
    counters: Counters
    log: FilteringBoundLogger
    recorder: Recorder


def backoff_delay(spec: JobSpec, failed_attempt: int) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random."""
    step = min(MAX_BACKOFF_S, spec.backoff * 2 ** (failed_attempt - 1))
    return float(step / 2 + random.uniform(0, step / 2))


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Completion:
    """Runs the jobs of one event concurrently and collects their outcomes into a Report."""

    def __init__(
        self,
        runtime: Runtime,
        pipeline: Pipeline[Any],
        event: BaseModel,
        key: str,
        *,
        cid: str | None = None,
        only: set[str] | None = None,
        finished_children: frozenset[str] = frozenset(),
    ) -> None:
        self.runtime = runtime
        # A replayed completion keeps its journal id, and runs only what had not finished.
        self.id = cid if cid is not None else uuid.uuid4().hex
        self.replayed = cid is not None
        self._only = only
        self._finished_children = finished_children
        self.pipeline = pipeline
        self.key = key
        self.event: BaseModel | None = event
        self.scope = anyio.CancelScope()
        # Known before it starts, so a drain can name the jobs of a completion still queued.
        self.unfinished: set[str] = {name for name in pipeline.jobs if only is None or name in only}
        self.report: Report | None = None
        self.done = anyio.Event()
        # Awaited by submit: returns once the journal has the admission on disk.
        self.durable: Callable[[], Awaitable[object]] | None = None
        self._outcomes: list[JobOutcome] = []
        self._group: TaskGroup | None = None

    def __repr__(self) -> str:
        return f"<Completion {self.pipeline.name}:{self.key} unfinished={sorted(self.unfinished)}>"

    async def run(self) -> Report:
        """Run every job (on replay: the unfinished ones) and their children."""
        try:
            with self.scope:
                async with anyio.create_task_group() as group:
                    self._group = group
                    for spec in self.pipeline.jobs.values():
                        if self._only is None or spec.name in self._only:
                            self._start(spec, (self.event,))
        finally:
            # Drop the event now: a finished completion must not keep it alive (G4).
            self.event = self._group = None
            for name in sorted(self.unfinished):  # never started: cancelled before its turn
                self._record(name, "cancelled", 0, 0.0, None)
            self.report = Report(
                pipeline=self.pipeline.name,
                key=self.key,
                ok=all(o.status in ("succeeded", "skipped") for o in self._outcomes),
                outcomes=tuple(self._outcomes),
                replayed=self.replayed,
            )
            self.runtime.recorder.completion_finished(self, self.report)
            self.done.set()
        return self.report

    def spawn(
        self, parent: str, fn: Callable[..., Any], args: tuple[object, ...], name: str | None
    ) -> None:
        """Start the child ``fn(*args)`` of job ``parent`` in this completion's task group."""
        if self._group is None:
            raise RuntimeError(
                f"job {parent!r} of {self.pipeline.name}:{self.key} spawned a child after the "
                "completion finished (it outlived its timeout?); the child was not started"
            )
        spec = self.pipeline.jobs.get(parent.split("/")[0])
        assert spec is not None
        wants_ctx = check_callable(fn, what=f"child of job {parent!r}", n_args=len(args))
        child = f"{parent}/{name if name is not None else callable_name(fn)}"
        if child in self.unfinished or any(o.job == child for o in self._outcomes):
            raise DuplicateJob(
                f"child {child!r} was already spawned in {self.pipeline.name}:{self.key}; "
                "give each child its own name with ctx.spawn(fn, *args, name=...)"
            )
        self.runtime.recorder.child_spawned(self, child)
        if child in self._finished_children:
            return  # it finished before a restart: at-least-once, not twice-for-nothing
        # A child inherits its parent's timeout, retries, backoff and lane, but not `when`.
        child_spec = replace(
            spec,
            name=child,
            fn=fn,
            is_async=is_async_callable(fn),
            wants_ctx=wants_ctx,
            when=None,
        )
        self._start(child_spec, args)

    def _start(self, spec: JobSpec, args: tuple[object, ...]) -> None:
        assert self._group is not None
        self.unfinished.add(spec.name)
        self._group.start_soon(self._run_job, spec, args, name=f"afterwork:{spec.name}")

    async def _run_job(self, spec: JobSpec, args: tuple[object, ...]) -> None:
        log = self.runtime.log.bind(pipeline=self.pipeline.name, job=spec.name, key=self.key)
        started = anyio.current_time()
        attempt = 0
        try:
            if spec.when is not None and not spec.when(args[0]):
                self._record(spec.name, "skipped", 0, 0.0, None)
                log.info("job.skipped", attempt=0)
                return
            lane: AbstractAsyncContextManager[Any] = (
                self.runtime.lanes.get(spec.lane) if spec.lane is not None else nullcontext()
            )
            while True:
                attempt += 1
                try:
                    async with lane:
                        await self._attempt(spec, args, attempt, log)
                except Exception as error:
                    if attempt <= spec.retries:
                        await self._before_retry(spec, attempt, error, log)
                        continue
                    self._fail(spec, attempt, started, error, log)
                    return
                duration = anyio.current_time() - started
                self._record(spec.name, "succeeded", attempt, duration, None)
                log.info("job.succeeded", attempt=attempt, duration_s=round(duration, 6))
                return
        except Exception as error:  # `when` raised, or the lane is unknown
            self._fail(spec, attempt, started, error, log)
        except BaseException:
            self._record(spec.name, "cancelled", attempt, anyio.current_time() - started, None)
            raise

    async def _attempt(
        self, spec: JobSpec, args: tuple[object, ...], attempt: int, log: FilteringBoundLogger
    ) -> None:
        counters = self.runtime.counters
        counters.running += 1
        try:
            call: Callable[..., Any] = spec.fn
            if spec.wants_ctx:
                ctx = JobContext(self, spec.name, attempt, log.bind(attempt=attempt))
                call = functools.partial(spec.fn, ctx=ctx)
            if not spec.is_async:
                await self.runtime.budget.run_sync(call, *args, timeout=spec.timeout)
                return
            with anyio.move_on_after(spec.timeout if spec.timeout is not None else float("inf")):
                await call(*args)
                return
            raise JobTimeout(f"{spec.name} ran past its timeout of {spec.timeout} s")
        finally:
            counters.running -= 1

    async def _before_retry(
        self, spec: JobSpec, attempt: int, error: Exception, log: FilteringBoundLogger
    ) -> None:
        delay = backoff_delay(spec, attempt)
        self.runtime.counters.retried += 1
        log.warning(
            "job.retrying", attempt=attempt, error=error_text(error), delay_s=round(delay, 3)
        )
        await anyio.sleep(delay)

    def _fail(
        self,
        spec: JobSpec,
        attempt: int,
        started: float,
        error: Exception,
        log: FilteringBoundLogger,
    ) -> None:
        duration = anyio.current_time() - started
        if isinstance(error, JobTimeout):
            self._record(spec.name, "timed_out", attempt, duration, error_text(error))
            log.warning(
                "job.timed_out",
                attempt=attempt,
                duration_s=round(duration, 6),
                timeout_s=spec.timeout,
            )
        else:
            self._record(spec.name, "failed", attempt, duration, error_text(error))
            log.error("job.failed", attempt=attempt, duration_s=round(duration, 6), exc_info=error)

    def _record(
        self, job: str, status: JobStatus, attempts: int, duration: float, error: str | None
    ) -> None:
        outcome = JobOutcome(
            job=job, status=status, attempts=attempts, duration_s=round(duration, 6), error=error
        )
        self.unfinished.discard(job)
        self._outcomes.append(outcome)
        self.runtime.counters.by_status[status] += 1
        self.runtime.recorder.job_finished(self, outcome)
