"""The frozen data afterwork hands back: per-job outcomes, completion reports and stats.

``JobStatus`` is the one home of what each status means: which end a job for good
(``is_final``) and which count as a success (``is_ok``). Every other module asks it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(StrEnum):
    """How a job (or a spawned child) ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    #: Stopped by the dispatcher (a drain deadline): with a journal it runs again on restart.
    CANCELLED = "cancelled"
    #: Parked: it waits (``retry_at``) without holding a pending place, then runs again.
    DEFERRED = "deferred"

    @property
    def is_final(self) -> bool:
        """True when the job is over for good: it never runs again for this completion."""
        return self in _FINAL

    @property
    def is_ok(self) -> bool:
        """True for a job that did its work, or was rightly skipped."""
        return self in _OK


_FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.SKIPPED})
_OK = frozenset({JobStatus.SUCCEEDED, JobStatus.SKIPPED})


class DispatcherState(StrEnum):
    """Where a dispatcher is in its life. It only ever moves forward."""

    NEW = "new"
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JobOutcome(_Frozen):
    """How one job (or one spawned child) of a completion ended."""

    job: str = Field(description='The job name; a spawned child is named "parent/child".')
    status: JobStatus = Field(description="How the job ended.")
    attempts: int = Field(description="Attempts started, retries included; 0 when skipped.")
    duration_s: float = Field(description="Seconds from the first attempt's start to the end.")
    error: str | None = Field(
        default=None, description='"ExcType: message" of the last failure, else None.'
    )
    retry_at: datetime | None = Field(
        default=None, description="For a deferred job: when it runs again (UTC)."
    )


class Report(_Frozen):
    """The result of one completion: one event through one pipeline."""

    pipeline: str = Field(description="The pipeline's name.")
    key: str = Field(description="The event's key, as the pipeline's key function gave it.")
    ok: bool = Field(description="True when every outcome is ok: succeeded or skipped.")
    outcomes: tuple[JobOutcome, ...] = Field(description="One per job and child, in finish order.")
    replayed: bool = Field(
        default=False,
        description="True when the journal re-admitted this completion on start. Its outcomes "
        "include those recorded before the restart.",
    )
    followup: bool = Field(
        default=False,
        description="True for the follow-up of a parked job: its outcomes cover that job (or, "
        "for a parked child, its parent and the parent's children) only.",
    )

    def outcome(self, job: str) -> JobOutcome:
        """Return the outcome of the job named ``job`` (a child is ``"parent/child"``)."""
        for outcome in self.outcomes:
            if outcome.job == job:
                return outcome
        names = ", ".join(repr(o.job) for o in self.outcomes)
        raise KeyError(f"no outcome for job {job!r} in this report; it has {names}")


class Stats(_Frozen):
    """A snapshot of a dispatcher, taken by ``Dispatcher.stats()``. It never changes."""

    state: DispatcherState = Field(description="new, open, draining or closed.")
    max_threads: int = Field(description="The thread budget.")
    max_pending: int = Field(description="The admission bound.")
    max_delayed: int = Field(description="The bound on delayed work and parked jobs.")
    threads_busy: int = Field(description="Budget tokens held now: threads running work.")
    threads_peak: int = Field(description="The most budget tokens ever held at once.")
    threads_stuck: int = Field(
        description="Threads still running although their caller left: a job past its "
        "timeout, or a cancelled run_sync caller. Each still holds its token."
    )
    threads_journal: int = Field(
        description="The journal's writer thread: 1 with a journal, else 0 (beyond the budget)."
    )
    pending: int = Field(description="Completions admitted and not yet finished.")
    queued: int = Field(
        description="Of those, completions waiting for one of the max_active places to start."
    )
    delayed: int = Field(
        description="Delayed submissions and parked jobs waiting for their time, holding no "
        "pending place."
    )
    replaying: bool = Field(
        description="True while the journal's unfinished work is still being re-admitted."
    )
    running: int = Field(description="Jobs executing now (past their lane wait).")
    admitted: int = Field(description="Completions admitted since the dispatcher opened.")
    completed: int = Field(description="Completions finished since the dispatcher opened.")
    succeeded: int = Field(description="Jobs that succeeded.")
    failed: int = Field(description="Jobs that failed after their last attempt.")
    timed_out: int = Field(description="Jobs whose last attempt ran past its timeout.")
    skipped: int = Field(description="Jobs skipped by their ``when`` predicate.")
    cancelled: int = Field(description="Jobs cancelled, by a drain deadline or otherwise.")
    deferred: int = Field(description="Jobs parked to run again later.")
    retried: int = Field(description="Attempts that failed and were tried again in place.")
    journal_error: str | None = Field(
        default=None,
        description="Why the journal stopped writing, once it has: new work is then refused "
        "with JournalError. None while it is healthy, or with no journal.",
    )
