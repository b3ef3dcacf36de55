"""The journal's SQLite file: its schema and every statement run on it.

This module is the only one that knows the journal's tables. Everything else asks
``SqliteJournal`` (its writer, and its public read API).

A file is an afterwork journal when its ``application_id`` says so; a file with tables but
another id is someone else's and is never written to. A completion's ``state`` is
``running`` from just before its jobs start until it finishes or a drain stops it, so after a
crash the rows still ``running`` are exactly those that were running: each is charged one
crash, and a completion charged ``max_recoveries`` crashes is quarantined as poison.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._models import JobOutcome, JobStatus

#: "afwr": marks a file as an afterwork journal (SQLite's PRAGMA application_id).
APPLICATION_ID = 0x61667772
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE completions (
    id          TEXT PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    key         TEXT NOT NULL,
    event       TEXT NOT NULL,
    context     TEXT NOT NULL,
    admitted_at REAL NOT NULL,
    due_at      REAL,
    only_jobs   TEXT,
    followup    INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL DEFAULT 'queued',
    crashes     INTEGER NOT NULL DEFAULT 0,
    finished_at REAL
);
CREATE INDEX completions_by_state ON completions (state, admitted_at);
CREATE TABLE jobs (
    completion_id TEXT NOT NULL,
    job           TEXT NOT NULL,
    status        TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    duration_s    REAL NOT NULL DEFAULT 0,
    error         TEXT,
    finished_at   REAL,
    PRIMARY KEY (completion_id, job)
);
CREATE TABLE quarantine (
    id             TEXT PRIMARY KEY,
    pipeline       TEXT NOT NULL,
    key            TEXT NOT NULL,
    event          TEXT NOT NULL,
    context        TEXT NOT NULL,
    admitted_at    REAL NOT NULL,
    due_at         REAL,
    only_jobs      TEXT,
    followup       INTEGER NOT NULL,
    crashes        INTEGER NOT NULL,
    jobs           TEXT NOT NULL,
    reason         TEXT NOT NULL,
    error          TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
"""
TABLES = frozenset({"completions", "jobs", "quarantine"})
_COLUMNS = (
    "id, pipeline, key, event, context, admitted_at, due_at, only_jobs, followup, state, crashes"
)


@dataclass(frozen=True)
class JobRecord:
    """What the journal knows of one job: a final status, deferred (a follow-up continues
    it), or None while it is unfinished."""

    job: str
    status: JobStatus | None
    attempts: int = 0
    duration_s: float = 0.0
    error: str | None = None

    def outcome(self) -> JobOutcome:
        assert self.status is not None
        return JobOutcome(
            job=self.job,
            status=self.status,
            attempts=self.attempts,
            duration_s=self.duration_s,
            error=self.error,
        )


@dataclass
class Row:
    """One completion as the journal holds it."""

    id: str
    pipeline: str
    key: str
    event: bytes
    context: dict[str, Any]
    admitted_at: float
    due_at: float | None = None
    only: list[str] | None = None
    followup: bool = False
    state: str = "queued"
    crashes: int = 0
    jobs: dict[str, JobRecord] = field(default_factory=dict)


def _row(values: tuple[Any, ...]) -> Row:
    cid, pipeline, key, event, context, admitted, due, only, followup, state, crashes = values
    return Row(
        id=cid,
        pipeline=pipeline,
        key=key,
        event=bytes(event) if isinstance(event, bytes | memoryview) else str(event).encode(),
        context=_loads_object(context),
        admitted_at=admitted,
        due_at=due,
        only=json.loads(only) if only else None,
        followup=bool(followup),
        state=state,
        crashes=crashes,
    )


def _loads_object(text: str) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}


def _status(text: str | None) -> JobStatus | None:
    """A recorded status: final, or deferred (its follow-up runs it); else None."""
    status = JobStatus(text) if text else None
    if status is not None and (status.is_final or status is JobStatus.DEFERRED):
        return status
    return None


# -- checks on open ---------------------------------------------------------------------------


def describe(conn: sqlite3.Connection) -> tuple[int, int, set[str]]:
    """(application_id, user_version, table names) of an open file."""
    app = int(conn.execute("PRAGMA application_id").fetchone()[0])
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return app, version, tables


def damage(conn: sqlite3.Connection) -> str | None:
    """What SQLite's quick check finds wrong with the file, or None."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    return None if rows == ["ok"] else "; ".join(rows)


def create(conn: sqlite3.Connection) -> None:
    conn.executescript(
        f"BEGIN; PRAGMA application_id = {APPLICATION_ID}; "
        f"PRAGMA user_version = {SCHEMA_VERSION}; {SCHEMA} COMMIT;"
    )


# -- the writer's statements ------------------------------------------------------------------


def admit(conn: sqlite3.Connection, row: Row) -> None:
    conn.execute(
        f"INSERT INTO completions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row.id,
            row.pipeline,
            row.key,
            row.event.decode(),
            json.dumps(row.context, default=repr),
            row.admitted_at,
            row.due_at,
            json.dumps(row.only) if row.only is not None else None,
            int(row.followup),
            row.state,
            row.crashes,
        ),
    )
    _put_jobs(conn, row.id, row.jobs.values())


def _put_jobs(conn: sqlite3.Connection, cid: str, records: Iterable[JobRecord]) -> None:
    conn.executemany(
        "INSERT INTO jobs (completion_id, job, status, attempts, duration_s, error) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(cid, r.job, r.status, r.attempts, r.duration_s, r.error) for r in records],
    )


def mark_running(conn: sqlite3.Connection, cid: str) -> None:
    """Mark a completion as running; fails if its admission never reached the file, so a
    completion that is not on disk never starts."""
    if conn.execute("UPDATE completions SET state = 'running' WHERE id = ?", (cid,)).rowcount != 1:
        raise sqlite3.IntegrityError(f"completion {cid} was never recorded as admitted")


def interrupt(conn: sqlite3.Connection, cid: str) -> None:
    """A drain stopped it: it is not running, and runs again at the next start."""
    conn.execute("UPDATE completions SET state = 'queued' WHERE id = ?", (cid,))


def child_spawned(conn: sqlite3.Connection, cid: str, job: str) -> None:
    # A child spawned again (its parent retried) is unfinished again until it ends.
    conn.execute(
        "INSERT INTO jobs (completion_id, job) VALUES (?, ?) ON CONFLICT (completion_id, job) "
        "DO UPDATE SET status = NULL, finished_at = NULL",
        (cid, job),
    )


def job_finished(conn: sqlite3.Connection, cid: str, outcome: JobOutcome) -> None:
    conn.execute(
        "INSERT INTO jobs (completion_id, job, status, attempts, duration_s, error, finished_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (completion_id, job) DO UPDATE SET "
        "status = excluded.status, attempts = excluded.attempts, "
        "duration_s = excluded.duration_s, error = excluded.error, "
        "finished_at = excluded.finished_at",
        (
            cid,
            outcome.job,
            outcome.status.value,
            outcome.attempts,
            outcome.duration_s,
            outcome.error,
            time.time(),
        ),
    )


def finish(
    conn: sqlite3.Connection, cid: str, *, done: bool, retention_s: float, followups: list[Row]
) -> None:
    """The completion ended. Its parked jobs continue as ``followups`` (same transaction).
    ``done`` is False when a drain cancelled some of its jobs: it stays, to run again."""
    for followup in followups:
        admit(conn, followup)
    if not done:
        interrupt(conn, cid)
    elif retention_s > 0:
        conn.execute(
            "UPDATE completions SET state = 'finished', finished_at = ? WHERE id = ?",
            (time.time(), cid),
        )
    else:
        delete(conn, cid)


def delete(conn: sqlite3.Connection, cid: str) -> None:
    conn.execute("DELETE FROM jobs WHERE completion_id = ?", (cid,))
    conn.execute("DELETE FROM completions WHERE id = ?", (cid,))


def quarantine(conn: sqlite3.Connection, cid: str, reason: str, error: str) -> None:
    """Move a completion out of the way: kept for an operator, never replayed."""
    jobs = {
        r[0]: {"status": r[1], "attempts": r[2]}
        for r in conn.execute(
            "SELECT job, status, attempts FROM jobs WHERE completion_id = ?", (cid,)
        )
    }
    conn.execute(
        f"INSERT OR REPLACE INTO quarantine ({_COLUMNS.replace(', state', '')}, jobs, reason, "
        f"error, quarantined_at) SELECT {_COLUMNS.replace(', state', '')}, ?, ?, ?, ? "
        "FROM completions WHERE id = ?",
        (json.dumps(jobs), reason, error, time.time(), cid),
    )
    delete(conn, cid)


def requeue(conn: sqlite3.Connection, key: str) -> list[str]:
    """Put the quarantined completions of ``key`` (or of id ``key``) back; return their ids."""
    rows = conn.execute(
        "SELECT id, jobs FROM quarantine WHERE key = ? OR id = ?", (key, key)
    ).fetchall()
    columns = _COLUMNS.replace(", state, crashes", "")
    for cid, jobs in rows:
        conn.execute(
            f"INSERT INTO completions ({columns}) SELECT {columns} FROM quarantine WHERE id = ?",
            (cid,),
        )
        records = [
            JobRecord(job, _status(info.get("status")), int(info.get("attempts", 0)))
            for job, info in _loads_object(jobs).items()
        ]
        _put_jobs(conn, cid, records)
        conn.execute("DELETE FROM quarantine WHERE id = ?", (cid,))
    return [cid for cid, _ in rows]


# -- reading back -----------------------------------------------------------------------------


def recover(conn: sqlite3.Connection, retention_s: float) -> None:
    """On open: purge finished rows past retention, and charge a crash to every completion
    that was running when the last owner died (a clean drain leaves none running)."""
    cutoff = time.time() - retention_s
    conn.execute(
        "DELETE FROM jobs WHERE completion_id IN (SELECT id FROM completions "
        "WHERE state = 'finished' AND finished_at < ?)",
        (cutoff,),
    )
    conn.execute("DELETE FROM completions WHERE state = 'finished' AND finished_at < ?", (cutoff,))
    conn.execute(
        "UPDATE completions SET crashes = crashes + 1, state = 'queued' WHERE state = 'running'"
    )


def unfinished(conn: sqlite3.Connection, where: str = "", *params: object) -> list[Row]:
    """Every unfinished completion (matching ``where``), oldest first, with its jobs."""
    rows = {
        values[0]: _row(values)
        for values in conn.execute(
            f"SELECT {_COLUMNS} FROM completions WHERE state != 'finished' "
            f"{'AND ' + where if where else ''} ORDER BY admitted_at",
            params,
        )
    }
    for cid, job, status, attempts, duration, error in conn.execute(
        "SELECT completion_id, job, status, attempts, duration_s, error FROM jobs"
    ):
        if cid in rows:
            rows[cid].jobs[job] = JobRecord(job, _status(status), attempts, duration, error)
    return list(rows.values())


def quarantined(conn: sqlite3.Connection) -> list[tuple[Row, str, str, float]]:
    """(row, reason, error, quarantined_at) of every quarantined completion, oldest first."""
    columns = _COLUMNS.replace("state", "'quarantined'")
    result = []
    for values in conn.execute(
        f"SELECT {columns}, jobs, reason, error, quarantined_at FROM quarantine "
        "ORDER BY quarantined_at"
    ):
        row = _row(values[:11])
        for job, info in _loads_object(values[11]).items():
            row.jobs[job] = JobRecord(
                job, _status(info.get("status")), int(info.get("attempts", 0))
            )
        result.append((row, values[12], values[13], values[14]))
    return result
