"""The processing record: each conversation's job outcomes, as its reports land.

The store keeps only what is final: the outcomes of the last run. Whether a conversation is
still being processed is not recorded here: the dispatcher knows it (``Dispatcher.unfinished``,
which covers work the journal will replay too), so no second record can disagree with it
after a crash.

A fresh report replaces the conversation's outcomes, so a reprocess shows what the last run
did. A replayed report or a follow-up covers only some jobs, so it is merged in per job
instead: the outcomes recorded before stay.

These functions block; the service calls them from threads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import afterwork as aw

from ._models import ConversationCompleted
from ._store import Claim, Store, claim_conversation, utc_now

_UPSERT = (
    "INSERT INTO job_outcomes (conversation_id, job, status, attempts, duration_s, error, "
    "retry_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (conversation_id, job) "
    "DO UPDATE SET status = excluded.status, attempts = excluded.attempts, duration_s = "
    "excluded.duration_s, error = excluded.error, retry_at = excluded.retry_at, "
    "finished_at = excluded.finished_at"
)


def receive(store: Store, event: ConversationCompleted) -> Claim:
    """Store the conversation for its owner; ``Claim.CONFLICT`` if another uid owns it."""
    with store.transaction() as conn:
        return claim_conversation(conn, event.conversation)


def forget(store: Store, conversation_id: str) -> None:
    """Remove a conversation just created whose admission then failed: nothing half-done."""
    with store.transaction() as conn:
        conn.execute("DELETE FROM conversations WHERE id = ? AND received = 1", (conversation_id,))


def save_reports(store: Store, reports: Sequence[aw.Report]) -> None:
    """Persist ``reports`` in one transaction, in the order they finished."""
    finished = utc_now().isoformat()
    with store.transaction() as conn:
        for report in reports:
            if not (report.replayed or report.followup):
                conn.execute("DELETE FROM job_outcomes WHERE conversation_id = ?", (report.key,))
            upsert_outcomes(conn, report.key, report.outcomes, finished)


def save_report(store: Store, report: aw.Report) -> None:
    save_reports(store, [report])


def upsert_outcomes(
    conn: sqlite3.Connection, key: str, outcomes: Iterable[aw.JobOutcome], finished: str
) -> None:
    conn.executemany(
        _UPSERT,
        [
            (key, o.job, o.status.value, o.attempts, o.duration_s, o.error,
             o.retry_at.isoformat() if o.retry_at else None, finished)
            for o in outcomes
        ],
    )  # fmt: skip


def outcomes(store: Store, conversation_id: str) -> list[dict[str, Any]]:
    """The persisted job outcomes of a conversation, by job name."""
    return store.query(
        "SELECT job, status, attempts, duration_s, error, retry_at FROM job_outcomes "
        "WHERE conversation_id = ? ORDER BY job",
        conversation_id,
    )


def processing(store: Store, conversation_id: str) -> list[dict[str, Any]] | None:
    """The conversation's saved outcomes, or None if it was never received."""
    if not store.count("conversations", "id = ?", conversation_id):
        return None
    return outcomes(store, conversation_id)
