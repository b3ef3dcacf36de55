"""One completion: one event through one pipeline, as one task group of jobs and children.

A completion runs what its ``Plan`` says: every job for a fresh admission, or only the jobs
that had not finished, for a replay after a restart or the follow-up of a parked job. The same
rules hold for a job's retry in place: a child that already succeeded (or was skipped) is not
run again when its parent spawns it again; one that failed, timed out or never finished runs
again.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel

from . import _options
from ._exceptions import DuplicateJob, JournalError, UsageError
from ._job import run_job
from ._models import JobOutcome, JobStatus, Report
from ._pipeline import JobSpec, callable_name, check_callable, is_async_callable
from ._runtime import Durable, Runtime

if TYPE_CHECKING:
    from ._context import JobContext
    from ._pipeline import Pipeline


@dataclass(frozen=True)
class Plan:
    """What a completion runs, and what it knows from before."""

    #: The top-level jobs to run; None runs every job of the pipeline.
    only: frozenset[str] | None = None
    #: Final outcomes recorded before (a replay, or the parent's children for a follow-up).
    prior: Mapping[str, JobOutcome] = field(default_factory=dict)
    #: Attempts already made by jobs that continue (a parked job keeps its count).
    attempts: Mapping[str, int] = field(default_factory=dict)
    #: A replay after a restart: the report carries the prior outcomes too.
    replayed: bool = False
    #: The follow-up of a parked job.
    followup: bool = False

    def runs(self, pipeline: Pipeline[Any]) -> list[str]:
        return [name for name in pipeline.jobs if self.only is None or name in self.only]


FRESH = Plan()


class Completion:
    """Runs the jobs of one event concurrently and collects their outcomes into a Report."""

    def __init__(
        self,
        runtime: Runtime,
        pipeline: Pipeline[Any],
        event: BaseModel,
        key: str,
        *,
        plan: Plan = FRESH,
        completion_id: str | None = None,
        context: contextvars.Context | None = None,
        encoded: bytes | None = None,
        due_at: datetime | None = None,
    ) -> None:
        self.runtime = runtime
        # os.urandom, not uuid4: the same 128 random bits, without building a UUID object.
        self.id = completion_id if completion_id is not None else os.urandom(16).hex()
        self.pipeline = pipeline
        self.key = key
        self.event: BaseModel | None = event
        #: The event as the journal keeps it (None without a journal).
        self.encoded = encoded
        self.plan = plan
        #: The context the completion's jobs run in: the submitter's, captured at admission.
        self.context = context if context is not None else contextvars.copy_context()
        #: For delayed work: when it may start (UTC); None starts as soon as there is room.
        self.due_at = due_at
        self.scope = anyio.CancelScope()
        # Known before it starts, so a drain can name the jobs of a completion still queued.
        self.unfinished: set[str] = set(plan.runs(pipeline))
        self.report: Report | None = None
        self.done = anyio.Event()
        #: Awaited by submit: returns once the journal has the admission on disk.
        self.durable: Durable | None = None
        self.followups: list[Completion] = []
        self._outcomes: dict[str, JobOutcome] = {}
        self._spawned_by: dict[str, JobContext] = {}
        self._group: TaskGroup | None = None

    def __repr__(self) -> str:
        return f"<Completion {self.pipeline.name}:{self.key} unfinished={sorted(self.unfinished)}>"

    @property
    def label(self) -> str:
        return f"{self.pipeline.name}:{self.key}"

    async def run(self, start_mark: Durable | None = None) -> Report:
        """Run the planned jobs and their children; return the report. Waiters are woken
        later, by ``resolve``, once the report has been handed on.

        ``start_mark``, awaited before any job starts, returns once the journal has the
        completion marked as running; if the journal cannot record that, nothing runs.
        """
        not_started: str | None = None
        try:
            with self.scope:
                if start_mark is not None:
                    await start_mark()
                async with anyio.create_task_group() as group:
                    self._group = group
                    for name in self.plan.runs(self.pipeline):
                        spec = self.pipeline.spec(name)
                        assert spec is not None
                        self._start(spec, (self.event,))
        except JournalError as error:
            not_started = f"JournalError: not started: {error}"
        finally:
            self._group = None
            for name in sorted(self.unfinished):  # never started: stopped before its turn
                self.record(_cancelled(name, not_started))
            self.followups = self._make_followups()
            self.report = self._make_report()
            # A finished completion keeps nothing of its event (G4).
            self.event = self.encoded = None
            self._spawned_by.clear()
        return self.report

    def give_up(self, error: str, attempts: int = 0) -> Report:
        """Finish without running anything more: every planned job failed with ``error``
        (poison: ``attempts`` is how often it started, each start a crash)."""
        for name in sorted(self.unfinished):
            self.record(
                JobOutcome(
                    job=name,
                    status=JobStatus.FAILED,
                    attempts=attempts,
                    duration_s=0.0,
                    error=error,
                )
            )
        return self._finish_unrun()

    def never_started(self) -> Report:
        """Finish without running anything (a drain deadline came first): every planned job
        is reported cancelled."""
        for name in sorted(self.unfinished):
            self.record(_cancelled(name, None))
        return self._finish_unrun()

    def _finish_unrun(self) -> Report:
        self.report = self._make_report()
        self.event = self.encoded = None
        return self.report

    def resolve(self, report: Report) -> None:
        """Wake everyone waiting on this completion. The dispatcher calls it only after the
        report has been handed to ``on_report`` and recorded."""
        self.report = report
        # Keep nothing that belongs to the submitter or the journal (G4).
        self.context = contextvars.Context()
        self.followups = []
        self.durable = None
        self.done.set()

    def spawn(
        self,
        parent: JobContext,
        fn: Callable[..., Any],
        args: tuple[object, ...],
        name: str | None,
        lane: str | None = None,
    ) -> None:
        """Start the child ``fn(*args)`` of the job behind ``parent`` in this task group."""
        if self._group is None:
            raise UsageError(
                f"job {parent.job!r} of {self.label} spawned a child after the completion "
                "finished; the child was not started"
            )
        parent.check_open("spawn")
        child_name = _options.name(
            f"a child name of job {parent.job!r}",
            name if name is not None else callable_name(fn),
            "pass ctx.spawn(fn, *args, name='persona-1'), a name without '/'",
        )
        child = f"{parent.job}/{child_name}"
        top = self.pipeline.spec(parent.job.split("/")[0])
        assert top is not None
        wants_ctx = check_callable(fn, what=f"child {child!r}", n_args=len(args))
        if lane is not None:
            self.runtime.lanes.check({_options.name("a child's lane", lane, "e.g. lane='http'")})
        if self._spawned_by.get(child) is parent:
            raise DuplicateJob(
                f"child {child!r} was already spawned by this attempt of {parent.job!r} in "
                f"{self.label}; give each child its own name with ctx.spawn(fn, *args, name=...)"
            )
        self._spawned_by[child] = parent
        if self._runs_already(child):
            return
        self.runtime.recorder.child_spawned(self, child)
        # A child inherits its parent's timeout, retries, backoff and lane, but not `when`.
        spec = replace(
            top,
            name=child,
            fn=fn,
            is_async=is_async_callable(fn),
            wants_ctx=wants_ctx,
            lane=top.lane if lane is None else lane,
            when=None,
        )
        self._start(spec, args)

    def _runs_already(self, child: str) -> bool:
        """Whether a respawned child is left alone: still running from an earlier attempt,
        parked (its follow-up runs it), or done (succeeded or skipped) in this run or
        before a restart or a parking."""
        if child in self.unfinished:
            return True
        done = self._outcomes.get(child) or self.plan.prior.get(child)
        return done is not None and (done.status.is_ok or done.status is JobStatus.DEFERRED)

    def _start(self, spec: JobSpec, args: tuple[object, ...]) -> None:
        assert self._group is not None
        self.unfinished.add(spec.name)
        self._group.start_soon(
            run_job,
            self,
            spec,
            args,
            self.plan.attempts.get(spec.name, 0),
            name=f"afterwork:{spec.name}",
        )

    def record(self, outcome: JobOutcome) -> None:
        """Keep a job's outcome; a child run again replaces its earlier one."""
        self.unfinished.discard(outcome.job)
        self._outcomes.pop(outcome.job, None)
        self._outcomes[outcome.job] = outcome
        self.runtime.counters.by_status[outcome.status] += 1
        self.runtime.recorder.job_finished(self, outcome)

    def _make_report(self) -> Report:
        outcomes = list(self._outcomes.values())
        if self.plan.replayed:
            earlier = [o for job, o in self.plan.prior.items() if job not in self._outcomes]
            outcomes = earlier + outcomes
        return Report(
            pipeline=self.pipeline.name,
            key=self.key,
            ok=all(o.status.is_ok for o in outcomes),
            outcomes=tuple(outcomes),
            replayed=self.plan.replayed,
            followup=self.plan.followup,
        )

    def _make_followups(self) -> list[Completion]:
        """A follow-up per top-level job with parked parts: the job itself, or its children
        (then the parent runs again and respawns them, as on replay)."""
        deferred: dict[str, list[JobOutcome]] = {}
        for outcome in self._outcomes.values():
            if outcome.status is JobStatus.DEFERRED:
                deferred.setdefault(outcome.job.split("/")[0], []).append(outcome)
        # Each parked job took a max_delayed slot; one follow-up per top-level job keeps one.
        for _ in range(sum(map(len, deferred.values())) - len(deferred)):
            self.runtime.delayed.give_back_slot()
        assert self.event is not None or not deferred
        return [self._followup(top, parked) for top, parked in deferred.items()]

    def _followup(self, top: str, parked: list[JobOutcome]) -> Completion:
        prefix = top + "/"
        prior = {
            job: outcome
            for job, outcome in self._outcomes.items()
            if (job == top or job.startswith(prefix)) and outcome.status.is_final
        }
        due = max(o.retry_at or datetime.now(UTC) for o in parked)
        assert self.event is not None
        return Completion(
            self.runtime,
            self.pipeline,
            self.event,
            self.key,
            plan=Plan(
                only=frozenset({top}),
                prior=prior,
                attempts={o.job: o.attempts for o in parked},
                followup=True,
            ),
            context=self.context.copy(),
            encoded=self.encoded,
            due_at=due,
        )


def _cancelled(job: str, error: str | None) -> JobOutcome:
    return JobOutcome(job=job, status=JobStatus.CANCELLED, attempts=0, duration_s=0.0, error=error)
