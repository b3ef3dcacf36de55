"""The frozen data afterwork hands back: per-job outcomes, completion reports and stats."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["succeeded", "failed", "timed_out", "skipped", "cancelled"]


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


class Report(_Frozen):
    """The result of one completion: one event through one pipeline."""

    pipeline: str = Field(description="The pipeline's name.")
    key: str = Field(description="The event's key, as the pipeline's key function gave it.")
    ok: bool = Field(description="True when every outcome is succeeded or skipped.")
    outcomes: tuple[JobOutcome, ...] = Field(description="One per job and child, in finish order.")
    replayed: bool = Field(
        default=False,
        description="True when the journal re-admitted this completion on start: its outcomes "
        "then cover only the jobs that had not finished before.",
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
    threads_busy: int = Field(description="Budget tokens held now: threads running work.")
    threads_peak: int = Field(description="The most budget tokens ever held at once.")
    threads_stuck: int = Field(
        description="Threads still running although their job's deadline has passed."
    )
    threads_journal: int = Field(
        description="The journal's writer thread: 1 with a journal, else 0 (beyond the budget)."
    )
    pending: int = Field(description="Completions admitted and not yet finished.")
    queued: int = Field(
        description="Of those, completions waiting for one of the max_active places to start."
    )
    running: int = Field(description="Jobs executing now (past their lane and budget waits).")
    admitted: int = Field(description="Completions admitted since the dispatcher opened.")
    completed: int = Field(description="Completions finished since the dispatcher opened.")
    succeeded: int = Field(description="Jobs that succeeded.")
    failed: int = Field(description="Jobs that failed after their last attempt.")
    timed_out: int = Field(description="Jobs whose last attempt ran past its timeout.")
    skipped: int = Field(description="Jobs skipped by their ``when`` predicate.")
    cancelled: int = Field(description="Jobs cancelled, by a drain deadline or otherwise.")
    retried: int = Field(description="Attempts that failed and were tried again.")
