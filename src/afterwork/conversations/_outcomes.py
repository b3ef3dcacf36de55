"""The processing record: which conversations await a report, and their jobs' outcomes.

A conversation is *due* from the moment it is received for processing until a report that
finishes its jobs is saved; ``reports_due`` counts its open admissions. That makes the
"processing" state durable (replayed work shows as processing too), and lets a restart find
the conversations whose report was lost (see ``_recovery``).

A fresh report replaces the conversation's outcomes, so a reprocess shows what the last run
did. A replayed report covers only the jobs that had not finished before a restart, so it is
merged in per job instead: the outcomes recorded before the restart stay.

These functions block; the service calls them from threads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import afterwork as aw

from ._models import ConversationCompleted
from ._store import Store, upsert_conversation, utc_now

#: Outcomes that end a job for good; a cancelled job runs again when the journal replays it.
FINAL = frozenset({"succeeded", "failed", "timed_out", "skipped"})

_UPSERT = (
    "INSERT INTO job_outcomes (conversation_id, job, status, attempts, duration_s, error, "
    "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (conversation_id, job) DO UPDATE "
    "SET status = excluded.status, attempts = excluded.attempts, duration_s = "
    "excluded.duration_s, error = excluded.error, finished_at = excluded.finished_at"
)


@dataclass(frozen=True)
class Processing:
    """What ``GET .../processing`` shows of one conversation."""

    due: bool
    outcomes: list[dict[str, Any]]


def receive(store: Store, event: ConversationCompleted) -> None:
    """Store the conversation and mark one more report due, in one transaction."""
    with store.transaction() as conn:
        upsert_conversation(conn, event.conversation)
        conn.execute(
            "INSERT INTO reports_due (conversation_id, reprocess, admissions) VALUES (?, ?, 1) "
            "ON CONFLICT (conversation_id) DO UPDATE SET reprocess = excluded.reprocess, "
            "admissions = admissions + 1",
            (event.conversation.id, event.reprocess),
        )


def withdraw(store: Store, conversation_id: str) -> None:
    """Take back one due report: its admission was refused (503)."""
    with store.transaction() as conn:
        settle(conn, conversation_id)


def settle(conn: sqlite3.Connection, conversation_id: str, admissions: int = 1) -> None:
    conn.execute(
        "UPDATE reports_due SET admissions = admissions - ? WHERE conversation_id = ?",
        (admissions, conversation_id),
    )
    conn.execute(
        "DELETE FROM reports_due WHERE conversation_id = ? AND admissions <= 0",
        (conversation_id,),
    )


def save_reports(store: Store, reports: Sequence[aw.Report]) -> None:
    """Persist ``reports`` in one transaction, in the order they finished."""
    finished = utc_now().isoformat()
    with store.transaction() as conn:
        for report in reports:
            if not report.replayed:
                conn.execute("DELETE FROM job_outcomes WHERE conversation_id = ?", (report.key,))
            upsert_outcomes(conn, report.key, report.outcomes, finished)
            # A report with cancelled jobs (a drain deadline) stays due: the journal runs
            # those jobs again at the next start, and that report settles it.
            if all(o.status in FINAL for o in report.outcomes):
                settle(conn, report.key)


def save_report(store: Store, report: aw.Report) -> None:
    save_reports(store, [report])


def upsert_outcomes(
    conn: sqlite3.Connection, key: str, outcomes: Iterable[aw.JobOutcome], finished: str
) -> None:
    conn.executemany(
        _UPSERT,
        [(key, o.job, o.status, o.attempts, o.duration_s, o.error, finished) for o in outcomes],
    )


def outcomes(store: Store, conversation_id: str) -> list[dict[str, Any]]:
    """The persisted job outcomes of a conversation, by job name."""
    return store.query(
        "SELECT job, status, attempts, duration_s, error FROM job_outcomes "
        "WHERE conversation_id = ? ORDER BY job",
        conversation_id,
    )


def processing(store: Store, conversation_id: str) -> Processing | None:
    """The conversation's processing record, or None if it was never received."""
    if not store.count("conversations", "id = ?", conversation_id):
        return None
    due = store.count("reports_due", "conversation_id = ?", conversation_id) > 0
    return Processing(due=due, outcomes=outcomes(store, conversation_id))
