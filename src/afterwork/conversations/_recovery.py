"""What the service puts right at start, before the dispatcher opens, after a crash.

The journal re-runs every job that had not finished, and ``on_report`` hands the service a
report of those jobs only. Two things a crash can leave that the replay does not cover:

- the jobs that finished before the crash: their outcomes are in the journal, never in a
  saved report. They are copied into ``job_outcomes`` here, with their status and attempts
  (the journal keeps neither the duration nor the error text).
- a completion that finished, left the journal, and was killed before its report was saved.
  Its conversation is still due, but nothing will replay it: it is submitted again (its jobs
  are idempotent, so this is at-least-once, like the journal's own replay).

This reads the journal's file (its ``completions`` and ``jobs`` tables), which only the
dispatcher writes: it runs before the dispatcher opens it, so nothing changes underneath. The
library has no public reader for it yet, so this depends on that file format.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from ._models import Conversation, ConversationCompleted
from ._outcomes import FINAL, settle
from ._store import Store, utc_now

_UNFINISHED = (
    "SELECT c.id, c.key, j.job, j.status, j.attempts FROM completions c "
    "LEFT JOIN jobs j ON j.completion_id = c.id "
    "WHERE c.pipeline = ? AND c.finished_at IS NULL"
)
#: The error text of a failed job recovered from the journal, which does not keep it.
ERROR_NOT_KEPT = "finished before a restart; the journal keeps its status, not its error"


@dataclass
class Backlog:
    """The journal's unfinished completions of one pipeline, read before replay."""

    completions: Counter[str] = field(default_factory=Counter)  # key -> unfinished completions
    outcomes: list[tuple[str, str, str, int]] = field(default_factory=list)  # key, job, ...


def read_backlog(journal: Path, pipeline: str) -> Backlog:
    """What the journal at ``journal`` will replay; empty if there is no journal yet.

    A file that is not a journal is left to the dispatcher, which refuses it at start.
    """
    backlog = Backlog()
    if not journal.is_file():
        return backlog
    try:
        with closing(sqlite3.connect(journal)) as conn:
            rows = conn.execute(_UNFINISHED, (pipeline,)).fetchall()
    except sqlite3.Error:
        return backlog
    backlog.completions.update({row[0]: row[1] for row in rows}.values())
    for _, key, job, status, attempts in rows:
        if status in FINAL:
            backlog.outcomes.append((key, job, status, attempts))
    return backlog


def recover(store: Store, journal: Path | None, pipeline: str) -> list[ConversationCompleted]:
    """Put the store right after a crash; return the events whose report was lost.

    Without a journal nothing is replayed, so nothing stays due: work in flight at a crash
    is lost, as the journal's documentation says.
    """
    if journal is None:
        with store.transaction() as conn:
            conn.execute("DELETE FROM reports_due")
        return []
    backlog = read_backlog(journal, pipeline)
    lost: list[ConversationCompleted] = []
    with store.transaction() as conn:
        _copy_outcomes(conn, backlog)
        due = conn.execute(
            "SELECT d.conversation_id, d.reprocess, d.admissions, c.body FROM reports_due d "
            "JOIN conversations c ON c.id = d.conversation_id"
        ).fetchall()
        for cid, reprocess, admissions, body in due:
            # Due once per completion the journal will replay. With none, its report was
            # lost: it is submitted again, and due once more.
            replayed = backlog.completions[cid]
            if not replayed:
                conversation = Conversation.model_validate_json(body)
                event = ConversationCompleted(conversation=conversation, reprocess=bool(reprocess))
                lost.append(event)
            settle(conn, cid, admissions - max(replayed, 1))
    return lost


def _copy_outcomes(conn: sqlite3.Connection, backlog: Backlog) -> None:
    now = utc_now().isoformat()
    conn.executemany(
        "INSERT INTO job_outcomes (conversation_id, job, status, attempts, duration_s, error, "
        "finished_at) VALUES (?, ?, ?, ?, 0.0, ?, ?) ON CONFLICT (conversation_id, job) DO "
        "UPDATE SET status = excluded.status, attempts = excluded.attempts, "
        "error = excluded.error, finished_at = excluded.finished_at",
        [
            (key, job, status, attempts, None if status in ("succeeded", "skipped")
             else ERROR_NOT_KEPT, now)
            for key, job, status, attempts in backlog.outcomes
        ],
    )  # fmt: skip
