"""The SQLite journal (G6): admitted completions and job outcomes, on disk as they happen.

One dedicated writer thread owns the connection. Writes queue up and the writer commits
whatever has queued in one transaction (group commit), so a burst of admissions costs one
commit, and the event loop never waits on the disk: only the caller of ``submit`` waits, for
its own row. The writer is one extra thread beyond the budget, shown as
``Stats.threads_journal``.

Delivery is at-least-once: a job is marked finished only after it ends, so a crash between
its side effects and that mark runs it again on restart with the same
``ctx.idempotency_key``. A job makes that effectively-once by keying its writes on it (an
upsert, a unique constraint, an ``Idempotency-Key`` header).
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import structlog
from anyio.lowlevel import EventLoopToken

from ._exceptions import JournalError
from ._loopcall import call_soon_threadsafe

logger = structlog.get_logger("afterwork")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    key TEXT NOT NULL,
    event TEXT NOT NULL,
    admitted_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS completions_unfinished ON completions (finished_at, admitted_at);
CREATE TABLE IF NOT EXISTS jobs (
    completion_id TEXT NOT NULL,
    job TEXT NOT NULL,
    status TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    PRIMARY KEY (completion_id, job)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    key TEXT NOT NULL,
    event TEXT NOT NULL,
    admitted_at REAL NOT NULL,
    error TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
"""

# Outcomes that end a job for good. A cancelled job (a drain deadline) runs again on restart.
FINAL_STATUSES = ("succeeded", "failed", "timed_out", "skipped")


@dataclass
class JournalRow:
    """One unfinished completion read back for replay."""

    id: str
    pipeline: str
    key: str
    event: str
    admitted_at: float
    jobs: dict[str, str | None] = field(default_factory=dict)  # job -> final status or None


@dataclass
class _Write:
    apply: Callable[[sqlite3.Connection], Any]
    done: anyio.Event | None = None
    result: Any = None
    error: BaseException | None = None


_STOP = _Write(apply=lambda conn: None)


class SqliteJournal:
    """An embedded SQLite (WAL) journal at ``path``.

    ``retention_s`` keeps finished completions that long (for inspection) before they are
    purged at the next start; 0 deletes them as soon as they finish.
    """

    def __init__(self, path: str | os.PathLike[str], *, retention_s: float = 0.0) -> None:
        if not retention_s >= 0:
            raise ValueError(f"retention_s must be seconds >= 0, got {retention_s!r}")
        self.path = Path(path)
        self.retention_s = retention_s
        self._queue: queue.SimpleQueue[_Write] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: EventLoopToken | None = None

    def __repr__(self) -> str:
        return f"SqliteJournal({str(self.path)!r})"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def open(self) -> None:
        """Open (or create) the file and start the writer. Raises JournalError, touching
        nothing, when the path cannot be written or the file is not a journal."""
        conn = self._connect()
        self._token = anyio.lowlevel.current_token()
        self._thread = threading.Thread(
            target=self._write_loop, args=(conn,), name="afterwork-journal", daemon=True
        )
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir() or not os.access(self.path.parent, os.W_OK):
            raise JournalError(
                f"cannot open the journal at {str(self.path)!r}: its directory does not exist "
                "or is not writable; pass journal= a path in a writable directory"
            )
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the journal at {str(self.path)!r}: {exc}") from exc
        try:
            # Reading first: on a file that is not a database this fails before any write.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of this process (the crash test kills it
            # with SIGKILL); it may lose the last commits on power loss, like most queues.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise JournalError(
                f"{str(self.path)!r} is not an afterwork journal (SQLite: {exc}); the file was "
                "left untouched: move it away or pass journal= another path"
            ) from exc
        return conn

    async def close(self) -> None:
        """Write everything queued, then stop the writer."""
        if not self.running:
            return
        await self.call(lambda conn: None)
        self._queue.put(_STOP)
        assert self._thread is not None
        self._thread.join()

    def put_nowait(self, apply: Callable[[sqlite3.Connection], Any]) -> None:
        """Queue a write that nobody waits for (outcomes: order alone matters)."""
        self._queue.put(_Write(apply=apply))

    def call_soon(self, apply: Callable[[sqlite3.Connection], Any]) -> Callable[[], Awaitable[Any]]:
        """Queue ``apply`` to run on the writer thread now, in order with the writes; await
        the returned function for its result."""
        write = _Write(apply=apply, done=anyio.Event())
        self._queue.put(write)

        async def result() -> Any:
            assert write.done is not None
            await write.done.wait()
            if write.error is not None:
                raise JournalError(f"journal {str(self.path)!r}: {write.error}") from write.error
            return write.result

        return result

    async def call(self, apply: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``apply`` on the writer thread, in order with the writes, and return its result."""
        return await self.call_soon(apply)()

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                batch = [self._queue.get()]
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._commit(conn, batch)
                waiting = [w for w in batch if w.done is not None]
                if waiting:
                    self._wake_soon(waiting)
                if _STOP in batch:
                    return
        finally:
            conn.close()

    def _wake_soon(self, writes: list[_Write]) -> None:
        assert self._token is not None
        call_soon_threadsafe(self._token, _wake, writes)

    def _commit(self, conn: sqlite3.Connection, batch: list[_Write]) -> None:
        try:
            self._apply(conn, batch)
        except sqlite3.Error:
            # One bad write must not sink the others: try each alone, keeping its own error.
            for write in batch:
                try:
                    self._apply(conn, [write])
                except sqlite3.Error as exc:
                    write.error = exc
                    logger.error("journal.write_failed", path=str(self.path), error=str(exc))

    @staticmethod
    def _apply(conn: sqlite3.Connection, writes: list[_Write]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in writes:
                write.result = write.apply(conn)
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _wake(writes: list[_Write]) -> None:
    for write in writes:
        assert write.done is not None
        write.done.set()


# -- the statements the dispatcher queues -----------------------------------------------------


def admit(cid: str, pipeline: str, key: str, event: str) -> Callable[[sqlite3.Connection], object]:
    now = time.time()
    return lambda conn: conn.execute(
        "INSERT OR IGNORE INTO completions (id, pipeline, key, event, admitted_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (cid, pipeline, key, event, now),
    )


def job_started(cid: str, job: str) -> Callable[[sqlite3.Connection], object]:
    return lambda conn: conn.execute(
        "INSERT OR IGNORE INTO jobs (completion_id, job) VALUES (?, ?)", (cid, job)
    )


def job_finished(
    cid: str, job: str, status: str, attempts: int
) -> Callable[[sqlite3.Connection], object]:
    now = time.time()
    return lambda conn: conn.execute(
        "INSERT INTO jobs (completion_id, job, status, attempts, finished_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (completion_id, job) DO UPDATE SET "
        "status = excluded.status, attempts = jobs.attempts + excluded.attempts, "
        "finished_at = excluded.finished_at",
        (cid, job, status, attempts, now),
    )


def completion_finished(cid: str, retention_s: float) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        if retention_s > 0:
            conn.execute("UPDATE completions SET finished_at = ? WHERE id = ?", (time.time(), cid))
        else:
            conn.execute("DELETE FROM jobs WHERE completion_id = ?", (cid,))
            conn.execute("DELETE FROM completions WHERE id = ?", (cid,))

    return apply


def load_unfinished(conn: sqlite3.Connection, retention_s: float) -> list[JournalRow]:
    """Purge finished completions past retention, then read back every unfinished one."""
    cutoff = time.time() - retention_s
    conn.execute(
        "DELETE FROM jobs WHERE completion_id IN "
        "(SELECT id FROM completions WHERE finished_at IS NOT NULL AND finished_at < ?)",
        (cutoff,),
    )
    conn.execute(
        "DELETE FROM completions WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,)
    )
    rows = {
        r[0]: JournalRow(*r)
        for r in conn.execute(
            "SELECT id, pipeline, key, event, admitted_at FROM completions "
            "WHERE finished_at IS NULL ORDER BY admitted_at"
        )
    }
    for cid, job, status in conn.execute("SELECT completion_id, job, status FROM jobs"):
        if cid in rows:
            rows[cid].jobs[job] = status if status in FINAL_STATUSES else None
    return list(rows.values())


def quarantine(row: JournalRow, error: str) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.pipeline, row.key, row.event, row.admitted_at, error, time.time()),
        )
        conn.execute("DELETE FROM jobs WHERE completion_id = ?", (row.id,))
        conn.execute("DELETE FROM completions WHERE id = ?", (row.id,))

    return apply
