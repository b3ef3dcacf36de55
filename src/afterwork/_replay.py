"""Connects completions to the journal: what to write as they run, and what to run again.

On start, every unfinished completion of a registered pipeline is read back and re-admitted
with only its unfinished jobs. A job counts as finished once it and every child it spawned
reached a final status (succeeded, failed, timed out or skipped); a job with an unfinished
child runs again and re-spawns, and children that finished before are not started twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import pydantic
from structlog.typing import FilteringBoundLogger

from . import _journal
from ._journal import FINAL_STATUSES, JournalRow, SqliteJournal
from ._models import JobOutcome, Report

if TYPE_CHECKING:
    from ._completion import Completion
    from ._pipeline import Pipeline


class JournalRecorder:
    """Queues a journal write for each admission, spawn and final outcome."""

    def __init__(self, journal: SqliteJournal) -> None:
        self.journal = journal

    def admitted(self, completion: Completion) -> Callable[[], Awaitable[object]] | None:
        if completion.replayed:
            return None  # its row is already on disk
        assert completion.event is not None
        return self.journal.call_soon(
            _journal.admit(
                completion.id,
                completion.pipeline.name,
                completion.key,
                completion.event.model_dump_json(),
            )
        )

    def child_spawned(self, completion: Completion, job: str) -> None:
        self.journal.put_nowait(_journal.job_started(completion.id, job))

    def job_finished(self, completion: Completion, outcome: JobOutcome) -> None:
        # A cancelled job (drain deadline, shutdown) stays unfinished and runs on restart.
        if outcome.status in FINAL_STATUSES:
            self.journal.put_nowait(
                _journal.job_finished(completion.id, outcome.job, outcome.status, outcome.attempts)
            )

    def completion_finished(self, completion: Completion, report: Report) -> None:
        if all(o.status in FINAL_STATUSES for o in report.outcomes):
            self.journal.put_nowait(
                _journal.completion_finished(completion.id, self.journal.retention_s)
            )


def plan(pipeline: Pipeline[Any], row: JournalRow) -> tuple[set[str], set[str]]:
    """The top-level jobs to run again, and the children that already finished."""
    rerun = {job for job in pipeline.jobs if row.jobs.get(job) is None}
    rerun |= {job.split("/")[0] for job, status in row.jobs.items() if status is None}
    finished_children = {job for job, status in row.jobs.items() if "/" in job and status}
    return rerun & set(pipeline.jobs), finished_children


def read_backlog(journal: SqliteJournal) -> Callable[[], Awaitable[list[JournalRow]]]:
    """Queue the read of unfinished work. Call it before admitting anything new: queued
    first, it sees only what earlier runs left, never this run's own admissions."""
    return journal.call_soon(lambda conn: _journal.load_unfinished(conn, journal.retention_s))


async def replay(
    journal: SqliteJournal,
    backlog: Callable[[], Awaitable[list[JournalRow]]],
    pipelines: Mapping[str, Pipeline[Any]],
    readmit: Callable[
        [Pipeline[Any], JournalRow, pydantic.BaseModel, set[str], set[str]], Awaitable[None]
    ],
    log: FilteringBoundLogger,
) -> None:
    """Re-admit every unfinished completion in the journal, waiting for room as needed."""
    rows = await backlog()
    unknown: Counter[str] = Counter()
    replayed = 0
    for row in rows:
        pipeline = pipelines.get(row.pipeline)
        if pipeline is None:
            unknown[row.pipeline] += 1
            continue
        try:
            event = pipeline.event.model_validate_json(row.event)
        except pydantic.ValidationError as exc:
            journal.put_nowait(_journal.quarantine(row, str(exc)))
            log.error(
                "journal.quarantined",
                pipeline=row.pipeline,
                key=row.key,
                completion_id=row.id,
                error=str(exc),
            )
            continue
        rerun, finished_children = plan(pipeline, row)
        if not rerun:
            journal.put_nowait(_journal.completion_finished(row.id, journal.retention_s))
            continue
        await readmit(pipeline, row, event, rerun, finished_children)
        replayed += 1
    for name, count in sorted(unknown.items()):
        log.warning(
            "journal.unknown_pipeline",
            pipeline=name,
            completions=count,
            fix="register the pipeline with Dispatcher(pipelines=[...]) to replay these rows",
        )
    log.info("journal.replayed", completions=replayed, rows=len(rows))
