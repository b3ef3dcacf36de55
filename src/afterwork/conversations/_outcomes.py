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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Receipt:
    """What ``receive`` did: its claim, the post count it left, and what it replaced."""

    claim: Claim
    received: int
    #: (created_at, body) of the copy an owner's new post replaced.
    replaced: tuple[str, str] | None = None


def receive(store: Store, event: ConversationCompleted) -> Receipt:
    """Store the conversation for its owner; ``Claim.CONFLICT`` if another uid owns it."""
    conversation = event.conversation
    with store.transaction(urgent=True) as conn:  # a request waits on it
        before = conn.execute(
            "SELECT created_at, body FROM conversations WHERE id = ?", (conversation.id,)
        ).fetchone()
        claim = claim_conversation(conn, conversation)
        if claim is Claim.CONFLICT:
            return Receipt(claim, 0)
        (received,) = conn.execute(
            "SELECT received FROM conversations WHERE id = ?", (conversation.id,)
        ).fetchone()
        replaced = None if before is None else (str(before[0]), str(before[1]))
        return Receipt(claim, int(received), replaced)


def undo(store: Store, conversation_id: str, receipt: Receipt) -> None:
    """Take back a post whose admission then failed, so its refusal leaves nothing behind:
    a conversation it created is removed, a copy it replaced is put back. Not if a later
    post of the same conversation came after it (``received`` moved on): that one stands."""
    with store.transaction(urgent=True) as conn:
        if receipt.claim is Claim.CREATED:
            conn.execute(
                "DELETE FROM conversations WHERE id = ? AND received = 1", (conversation_id,)
            )
        elif receipt.claim is Claim.UPDATED and receipt.replaced is not None:
            created_at, body = receipt.replaced
            conn.execute(
                "UPDATE conversations SET created_at = ?, body = ?, received = received - 1 "
                "WHERE id = ? AND received = ?",
                (created_at, body, conversation_id, receipt.received),
            )


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
