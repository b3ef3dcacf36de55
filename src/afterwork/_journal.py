"""The SQLite journal (G6): admitted completions and job outcomes, on disk as they happen.

``SqliteJournal`` has two faces. A ``Dispatcher`` owns it while open: it takes the journal's
lock (one live owner), checks the file before writing anything, replays what is unfinished
and writes through the writer thread (``_writer``). Anyone may read it, at any time, through
the public read API (``unfinished``, ``delayed``, ``quarantined``), which opens the file
read-only: the operator's ``afterwork journal`` command and the reference service use it.

Delivery is at-least-once: a job is marked finished only after it ends, so a crash between
its side effects and that mark runs it again on restart with the same
``ctx.idempotency_key``. A job makes that effectively-once by keying its writes on it (an
upsert, a unique constraint, an ``Idempotency-Key`` header).

The file is created with mode 0600, since events often carry personal data.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
from anyio.lowlevel import EventLoopToken
from pydantic import BaseModel, ConfigDict, Field

from . import _journal_db as db
from . import _options
from ._exceptions import JournalError
from ._lock import OwnerLock, owned_message, owner_of
from ._models import JobStatus
from ._runtime import Durable
from ._writer import Writer

#: How long closing waits for the writer to commit what is queued.
CLOSE_TIMEOUT_S = 10.0


class JournalJob(BaseModel):
    """What the journal holds of one job of a completion."""

    model_config = ConfigDict(frozen=True)

    job: str
    status: JobStatus | None = Field(
        description="A final status, deferred (a follow-up continues it), or None while unfinished."
    )
    attempts: int
    duration_s: float = 0.0
    error: str | None = None


class JournalEntry(BaseModel):
    """One completion as the journal holds it."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="The completion's id.")
    pipeline: str
    key: str
    event: str = Field(description="The event, as JSON.")
    admitted_at: datetime
    due_at: datetime | None = Field(description="For delayed work and parked jobs: when it runs.")
    state: Literal["queued", "running", "quarantined"]
    crashes: int = Field(description="Times its process died while it ran.")
    followup: bool = Field(description="The follow-up of a parked job.")
    context: dict[str, Any] = Field(description="The log context bound at admission.")
    jobs: tuple[JournalJob, ...]


class QuarantinedEntry(JournalEntry):
    """A completion moved out of the replay: an event that no longer validates, or poison."""

    reason: Literal["invalid", "poisoned"]
    error: str
    quarantined_at: datetime


class SqliteJournal:
    """An embedded SQLite (WAL) journal at ``path``.

    ``retention_s`` keeps finished completions that long (for inspection) before they are
    purged at the next start; 0 deletes them as soon as they finish. ``max_recoveries``: a
    completion whose process died while it ran that many times is quarantined as poison,
    so one bad event cannot crash-loop a service.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, retention_s: float = 0.0, max_recoveries: int = 3
    ) -> None:
        self.path = Path(path)
        self.retention_s = _options.seconds(
            "retention_s", retention_s, "e.g. SqliteJournal(path, retention_s=3600)"
        )
        self.max_recoveries = _options.count(
            "max_recoveries", max_recoveries, 1, "e.g. SqliteJournal(path, max_recoveries=3)"
        )
        self._writer: Writer | None = None
        self._lock: OwnerLock | None = None

    def __repr__(self) -> str:
        return f"SqliteJournal({str(self.path)!r})"

    # -- while a dispatcher owns it ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._writer is not None and self._writer.alive

    @property
    def failure(self) -> str | None:
        """Why the writer stopped, once it has; None while healthy."""
        return None if self._writer is None else self._writer.failure

    def open(self, token: EventLoopToken) -> list[db.Row]:
        """Own the journal and return its unfinished completions. Blocks (run it in a thread).

        Raises ``JournalError``, having written nothing, when the path cannot be written,
        another process owns the journal, or the file is not an afterwork journal or is
        damaged.
        """
        if self._writer is not None:
            raise JournalError(owned_message(self.path, os.getpid()))
        directory = self.path.parent
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise JournalError(
                f"cannot open the journal at {str(self.path)!r}: its directory does not exist "
                "or is not writable; pass journal= a path in a writable directory"
            )
        # The lock goes beside the file itself: two paths to one file (a symlink) share it.
        lock = OwnerLock(self.path.resolve(), shown=self.path)
        lock.acquire()
        try:
            self._inspect()
            conn = self._connect()
            rows = self._recover(conn)
            stat = os.stat(self.path)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        self._writer = Writer(conn, self.path, (stat.st_dev, stat.st_ino), token)
        return rows

    async def close(self) -> None:
        """Write everything queued, stop the writer, and give up ownership."""
        writer, lock = self._writer, self._lock
        self._writer = self._lock = None
        if writer is not None:
            writer.hand_off()  # what this loop turn gathered goes before the stop
            await anyio.to_thread.run_sync(writer.stop, CLOSE_TIMEOUT_S, abandon_on_cancel=True)
        if lock is not None:
            lock.release()

    def call_soon(self, apply: Callable[[sqlite3.Connection], Any]) -> Durable:
        """Queue ``apply`` on the writer; await the returned function for its result, which
        comes once it is committed, or ``JournalError`` if it could not be."""
        assert self._writer is not None, "the journal is written only while a dispatcher owns it"
        try:
            write = self._writer.put(apply, wait=True)
        except JournalError as error:
            failure = error

            async def failed() -> Any:
                raise failure

            return failed

        async def committed() -> Any:
            assert write.done is not None
            await write.done.wait()
            if isinstance(write.error, JournalError):
                raise write.error
            if write.error is not None:
                raise JournalError(f"journal {str(self.path)!r}: {write.error}") from write.error
            return write.result

        return committed

    def put_nowait(self, apply: Callable[[sqlite3.Connection], Any]) -> None:
        """Queue a write that nobody waits for (outcomes: order alone matters)."""
        if self._writer is not None and self._writer.failure is None:
            self._writer.put(apply, wait=False)

    def _inspect(self) -> None:
        """Check an existing file without writing to it: a file that is not an afterwork
        journal, or is damaged, is left exactly as it was."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        try:
            with closing(_connect_read_only(self.path)) as conn:
                app, version, tables = db.describe(conn)
                problem = _foreign(app, version, tables) or db.damage(conn)
        except sqlite3.DatabaseError as error:
            problem = f"SQLite cannot read it ({error})"
        if problem is not None:
            raise JournalError(
                f"{str(self.path)!r} cannot be used as a journal: {problem}; it was left "
                "untouched: move it away, or pass journal= another path"
            )

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of this process (the crash tests kill it
            # with SIGKILL); it may lose the last commits on power loss, like most queues.
            conn.execute("PRAGMA synchronous=NORMAL")
            if not db.describe(conn)[2]:
                db.create(conn)
        except sqlite3.Error as error:
            raise JournalError(f"cannot open the journal at {str(self.path)!r}: {error}") from None
        return conn

    def _recover(self, conn: sqlite3.Connection) -> list[db.Row]:
        try:
            conn.execute("BEGIN IMMEDIATE")
            db.recover(conn, self.retention_s)
            conn.execute("COMMIT")
            return db.unfinished(conn)
        except sqlite3.Error as error:
            conn.close()
            raise JournalError(
                f"cannot read the journal at {str(self.path)!r}: {error}; it may be damaged: "
                "move it away, or pass journal= another path"
            ) from None

    # -- the public read API: for operators and applications, at any time ------------------

    def unfinished(
        self, *, pipeline: str | None = None, key: str | None = None
    ) -> list[JournalEntry]:
        """Completions not finished yet (due now, delayed, or running), oldest first, with
        what each of their jobs has recorded. Blocks: call it from a thread in async code."""
        where, params = _filter(pipeline, key)
        return [_entry(row) for row in self._read(lambda conn: db.unfinished(conn, where, *params))]

    def delayed(self) -> list[JournalEntry]:
        """Delayed submissions and parked jobs, earliest due first. Blocks."""
        entries = [e for e in self.unfinished() if e.due_at is not None]
        return sorted(entries, key=lambda e: e.due_at or e.admitted_at)

    def quarantined(self) -> list[QuarantinedEntry]:
        """Completions the replay moved aside: events that no longer validate, and poison.
        Blocks."""
        return [
            QuarantinedEntry(
                **_entry(row).model_dump(exclude={"state"}),
                state="quarantined",
                reason=reason,
                error=error,
                quarantined_at=_time(at),
            )
            for row, reason, error, at in self._read(db.quarantined)
        ]

    def requeue(self, key: str) -> list[str]:
        """Put the quarantined completions of ``key`` (or with id ``key``) back, to run at the
        next start; return their ids. Refused (``JournalError``) while a process owns the
        journal. Blocks."""
        owner = owner_of(self.path.resolve())
        if owner is not None:
            raise JournalError(owned_message(self.path, owner))
        lock = OwnerLock(self.path.resolve(), shown=self.path)
        lock.acquire()
        try:
            self._inspect()
            with closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
                conn.execute("BEGIN IMMEDIATE")
                ids = db.requeue(conn, key)
                conn.execute("COMMIT")
        finally:
            lock.release()
        return ids

    def _read(self, query: Callable[[sqlite3.Connection], list[Any]]) -> list[Any]:
        if not self.path.exists():
            return []
        self._inspect()
        try:
            with closing(_connect_read_only(self.path)) as conn:
                return query(conn)
        except sqlite3.Error as error:
            raise JournalError(f"cannot read the journal at {str(self.path)!r}: {error}") from None


def _connect_read_only(path: Path) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None)


def _foreign(app: int, version: int, tables: set[str]) -> str | None:
    if app == db.APPLICATION_ID:
        if version != db.SCHEMA_VERSION:
            return (
                f"it is an afterwork journal of format {version}, and this version reads "
                f"format {db.SCHEMA_VERSION} only"
            )
        return None
    if app != 0:
        return f"it is another application's SQLite database (application_id {app:#x})"
    if not tables:
        return None  # an empty database: it becomes a journal
    if tables == db.TABLES:
        return (
            "it is a journal in afterwork's first format, from before journals were marked; "
            "let the version that wrote it finish its work"
        )
    return f"it is another application's SQLite database (tables: {', '.join(sorted(tables))})"


def _filter(pipeline: str | None, key: str | None) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    for column, value in (("pipeline", pipeline), ("key", key)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(clauses), params


def _time(seconds: float | None) -> datetime:
    assert seconds is not None
    return datetime.fromtimestamp(seconds, UTC)


def _entry(row: db.Row) -> JournalEntry:
    return JournalEntry(
        id=row.id,
        pipeline=row.pipeline,
        key=row.key,
        event=row.event.decode(),
        admitted_at=_time(row.admitted_at),
        due_at=None if row.due_at is None else _time(row.due_at),
        state="running" if row.state == "running" else "queued",
        crashes=row.crashes,
        followup=row.followup,
        context=row.context,
        jobs=tuple(
            JournalJob(
                job=r.job,
                status=r.status,
                attempts=r.attempts,
                duration_s=r.duration_s,
                error=r.error,
            )
            for r in row.jobs.values()
        ),
    )
