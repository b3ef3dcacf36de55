"""Connects completions to the journal: what to write as they run, and what to run again.

On start, every unfinished completion of a registered pipeline is read back and re-admitted
with only its unfinished jobs. A job counts as finished once it and every child it spawned
reached a final status; a job with an unfinished child runs again and respawns, and children
that succeeded before are not started twice (the rules of a retry in place, too).

Poison (G6): a completion that was running when the process died is charged a crash. After a
crash, the charged completions run first and one at a time (``max_active`` is 1 until they
are done), each behind a durable start mark, before full concurrency resumes. If one of them
kills the process again, it was running alone, so it alone is charged again; completions that
merely shared an earlier crash finish. One charged ``max_recoveries`` times is quarantined:
its report marks its unfinished jobs failed, and ``journal.poisoned`` is logged.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
from structlog.typing import FilteringBoundLogger

from . import _codec
from . import _journal_db as db
from ._completion import Completion, Plan
from ._journal import SqliteJournal
from ._models import JobOutcome, JobStatus, Report
from ._runtime import Durable

if TYPE_CHECKING:
    from ._host import Host
    from ._pipeline import Pipeline


def log_context(context: contextvars.Context) -> dict[str, Any]:
    """The structlog context variables bound in ``context`` (a request id, say), each as
    JSON can keep it: a value that is not JSON (or refers to itself) is kept as its repr."""
    variables = context.run(structlog.contextvars.get_contextvars)
    return {str(name): _json_safe(value) for name, value in variables.items()}


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def context_with(variables: Mapping[str, Any]) -> contextvars.Context:
    """A fresh context with ``variables`` bound for structlog, as at admission (G8)."""
    context = contextvars.Context()
    context.run(structlog.contextvars.bind_contextvars, **variables)
    return context


class JournalRecorder:
    """Queues a journal write for each admission, start, spawn, outcome and finish."""

    encodes_events = True

    def __init__(self, journal: SqliteJournal) -> None:
        self.journal = journal

    def admitted(self, completion: Completion) -> Durable | None:
        if completion.plan.replayed:
            return None  # its row is already on disk
        return self.journal.call_soon(partial(db.admit, row=row_of(completion)))

    def started(self, completion: Completion) -> Durable | None:
        return self.journal.call_soon(partial(db.mark_running, cid=completion.id))

    def child_spawned(self, completion: Completion, job: str) -> None:
        self.journal.put_nowait(partial(db.child_spawned, cid=completion.id, job=job))

    def job_finished(self, completion: Completion, outcome: JobOutcome) -> None:
        # A cancelled job (drain deadline) stays unfinished and runs on restart; a parked one
        # is marked deferred here, and continues in its follow-up's row.
        if outcome.status.is_final or outcome.status is JobStatus.DEFERRED:
            self.journal.put_nowait(partial(db.job_finished, cid=completion.id, outcome=outcome))

    def completion_finished(
        self, completion: Completion, report: Report, followups: list[Completion]
    ) -> None:
        done = all(o.status.is_final or o.status is JobStatus.DEFERRED for o in report.outcomes)
        self.journal.put_nowait(
            partial(
                db.finish,
                cid=completion.id,
                done=done,
                retention_s=self.journal.retention_s,
                followups=[row_of(f) for f in followups],
            )
        )

    def interrupted(self, completion: Completion) -> None:
        self.journal.put_nowait(partial(db.interrupt, cid=completion.id))


def row_of(completion: Completion) -> db.Row:
    """The journal row of a completion about to be admitted (or a follow-up)."""
    assert completion.encoded is not None, "a journaled event is encoded before admission"
    plan = completion.plan
    jobs = {job: db.JobRecord(job, o.status, o.attempts, o.duration_s, o.error)
            for job, o in plan.prior.items()}  # fmt: skip
    jobs.update({job: db.JobRecord(job, None, n) for job, n in plan.attempts.items()})
    return db.Row(
        id=completion.id,
        pipeline=completion.pipeline.name,
        key=completion.key,
        event=completion.encoded,
        context=log_context(completion.context),
        admitted_at=time.time(),
        due_at=None if completion.due_at is None else completion.due_at.timestamp(),
        only=sorted(plan.only) if plan.followup and plan.only is not None else None,
        followup=plan.followup,
        jobs=jobs,
    )


def plan_of(pipeline: Pipeline[Any], row: db.Row) -> Plan:
    """What a journal row still has to run: the jobs not finished, and the parents of
    children not finished (a follow-up: only its own job)."""
    prior = {job: r.outcome() for job, r in row.jobs.items() if r.status and r.status.is_final}
    handled = {job for job, r in row.jobs.items() if r.status is not None}  # final, or parked
    attempts = {job: r.attempts for job, r in row.jobs.items() if r.status is None and r.attempts}
    open_parents = {job.split("/")[0] for job, r in row.jobs.items() if r.status is None}
    candidates = row.only if row.only is not None else list(pipeline.jobs)
    run = {j for j in candidates if pipeline.spec(j) and (j not in handled or j in open_parents)}
    return Plan(
        only=frozenset(run), prior=prior, attempts=attempts, replayed=True, followup=row.followup
    )


def poison_message(journal: SqliteJournal, row: db.Row) -> str:
    return (
        f"the process died while this completion ran, {row.crashes} times; it was "
        f"quarantined as poison: see 'afterwork journal list {journal.path}', and requeue it "
        "with 'afterwork journal requeue' once fixed"
    )


def replay_of(
    journal: SqliteJournal | None,
    rows: list[db.Row],
    pipelines: Mapping[str, Pipeline[Any]],
    log: FilteringBoundLogger,
) -> tuple[Callable[[Host], Awaitable[None]] | None, bool]:
    """The replay for a dispatcher's host, and whether crash suspects must run alone first."""
    if journal is None:
        return None, False
    isolate = any(
        0 < row.crashes < journal.max_recoveries and row.pipeline in pipelines for row in rows
    )
    return (lambda host: replay(host, journal, rows, pipelines, log)), isolate


async def replay(
    host: Host,
    journal: SqliteJournal,
    rows: list[db.Row],
    pipelines: Mapping[str, Pipeline[Any]],
    log: FilteringBoundLogger,
) -> None:
    """Re-admit the journal's unfinished completions: poison quarantined, crash suspects one
    at a time first, then the rest, each as room allows; delayed ones when they are due."""
    unknown: Counter[str] = Counter()
    suspects: list[tuple[int, Completion]] = []
    rest: list[Completion] = []
    for row in rows:
        pipeline = pipelines.get(row.pipeline)
        if pipeline is None:
            unknown[row.pipeline] += 1
            continue
        completion = _restore(host, journal, pipeline, row, log)
        if completion is None:
            continue
        host.track(completion)
        if row.crashes >= journal.max_recoveries:
            await _quarantine_poison(host, journal, completion, row, log)
        elif row.crashes:
            suspects.append((row.crashes, completion))
        else:
            rest.append(completion)
    for name, count in sorted(unknown.items()):
        log.warning(
            "journal.unknown_pipeline",
            pipeline=name,
            completions=count,
            fix="register the pipeline with Dispatcher(pipelines=[...]) to replay these rows",
        )
    if not await _run_alone(host, suspects):
        return  # a drain began: what is left stays in the journal
    for completion in rest:
        if not await host.readmit(completion):
            return
    log.info("journal.replayed", completions=len(suspects) + len(rest), rows=len(rows))


def _restore(
    host: Host,
    journal: SqliteJournal,
    pipeline: Pipeline[Any],
    row: db.Row,
    log: FilteringBoundLogger,
) -> Completion | None:
    """The row as a completion to run again, or None once it is quarantined as invalid."""
    assert host.runtime is not None
    try:
        event = _codec.decode(pipeline.event, row.event)
        return Completion(
            host.runtime,
            pipeline,
            event,
            row.key,
            plan=plan_of(pipeline, row),
            completion_id=row.id,
            context=context_with(row.context),
            encoded=row.event,
            due_at=None if row.due_at is None else _utc(row.due_at),
        )
    except Exception as error:  # any validator may raise anything: the row, not the start
        text = f"{type(error).__name__}: {error}"
        journal.put_nowait(partial(db.quarantine, cid=row.id, reason="invalid", error=text))
        log.error(
            "journal.quarantined",
            pipeline=row.pipeline,
            key=row.key,
            completion_id=row.id,
            reason="invalid",
            error=text,
        )
        return None


async def _quarantine_poison(
    host: Host,
    journal: SqliteJournal,
    completion: Completion,
    row: db.Row,
    log: FilteringBoundLogger,
) -> None:
    message = poison_message(journal, row)
    log.error(
        "journal.poisoned",
        pipeline=row.pipeline,
        key=row.key,
        completion_id=row.id,
        crashes=row.crashes,
        jobs=sorted(completion.unfinished),
    )
    report = completion.give_up(f"JournalError: {message}", attempts=row.crashes)
    await host.deliver(completion, report)
    # Quarantined only once its report is handed on: a crash in between delivers it again.
    journal.put_nowait(partial(db.quarantine, cid=row.id, reason="poisoned", error=message))
    host.resolve(completion, report)


async def _run_alone(host: Host, suspects: list[tuple[int, Completion]]) -> bool:
    """Run the completions charged with a crash, most charged first, one at a time (the host
    opened with ``max_active`` 1 for them)."""
    ordered = [c for _, c in sorted(suspects, key=lambda pair: -pair[0])]
    try:
        for completion in reversed(ordered):  # each goes to the head of the queue
            if not await host.readmit(completion, first=True):
                return False
        for completion in ordered:
            await completion.done.wait()
    finally:
        host.end_isolation()
    return True


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
