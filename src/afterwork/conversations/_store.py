"""The embedded SQLite store: connections, transactions, conversations and profiles.

Every method blocks, so nothing calls them on the event loop: jobs call them through the
dispatcher's thread budget (``ctx.run_sync``, or from a sync job, which already runs in a
budget thread), request handlers through threads of their own (``Service.blocking``), and the
report writer on its own thread.

- **A connection per thread**, opened on first use and kept: opening one (and the WAL
  checkpoint SQLite runs when the last one closes) costs more than most statements. A
  connection never crosses threads; ``close()`` closes them all when the service stops, and a
  thread that ends takes its own with it.
- **One writer at a time in this process, requests first.** The database is in WAL mode, so
  readers never wait. Writers would otherwise meet in SQLite's busy handler, which polls with
  growing sleeps (up to 100 ms) in no order: request handlers then waited behind dozens of job
  threads. Here writers take turns on a lock and wake the moment it is free; a request
  handler's write (``urgent``) goes first, but never twice in a row while a job waits, so
  admission stays fast and the jobs keep draining at the same time. Other processes
  (workers sharing the file) still meet in the busy handler, for ``BUSY_TIMEOUT_S``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from ._models import Conversation
from ._schema import SCHEMA, TABLES

#: How long a writer waits for another writer's transaction before giving up.
BUSY_TIMEOUT_S = 30.0


class _Turns:
    """The writers' turns in this process: one at a time, and an urgent one (a request's)
    before the jobs', but never two urgent turns in a row while a job waits: requests come
    first, and the jobs still get at least every other turn."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._urgent = threading.Condition(self._lock)
        self._normal = threading.Condition(self._lock)
        self._busy = False
        self._last_urgent = False
        self._waiting = {True: 0, False: 0}

    def _may_go(self, urgent: bool) -> bool:
        if self._busy:
            return False
        if urgent:
            return not (self._last_urgent and self._waiting[False])
        return not self._waiting[True] or self._last_urgent

    @contextmanager
    def turn(self, urgent: bool) -> Iterator[None]:
        with self._lock:
            self._waiting[urgent] += 1
            try:
                waited = (self._urgent if urgent else self._normal).wait_for(
                    lambda: self._may_go(urgent), BUSY_TIMEOUT_S
                )
            finally:
                self._waiting[urgent] -= 1
            if not waited:
                raise sqlite3.OperationalError(
                    f"database is locked: no turn to write within {BUSY_TIMEOUT_S:g} s"
                )
            self._busy, self._last_urgent = True, urgent
        try:
            yield
        finally:
            with self._lock:
                self._busy = False
                # Wake exactly the one whose turn it is now (its predicate then holds).
                if self._waiting[True] and self._may_go(True):
                    self._urgent.notify()
                elif self._waiting[False]:
                    self._normal.notify()


class _Held:
    """A thread's connection; closed when the thread ends (its locals go) or at close()."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __del__(self) -> None:
        self.conn.close()


def utc_now() -> datetime:
    return datetime.now(UTC)


class Claim(Enum):
    """What storing a conversation did: created it, updated its owner's copy, or refused."""

    CREATED = "created"
    UPDATED = "updated"
    CONFLICT = "conflict"


def claim_conversation(conn: sqlite3.Connection, conversation: Conversation) -> Claim:
    """Insert the conversation, or, if its owner sends it again, replace its body.

    A conversation belongs to the uid that first posted it: the same id from another uid
    changes nothing (``Claim.CONFLICT``). One statement, so two racing posts cannot both win.
    """
    cursor = conn.execute(
        "INSERT INTO conversations (id, uid, created_at, body) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET body = excluded.body, created_at = excluded.created_at, "
        "received = received + 1 WHERE conversations.uid = excluded.uid "
        "RETURNING received",
        (
            conversation.id,
            conversation.uid,
            conversation.created_at.isoformat(),
            conversation.model_dump_json(),
        ),
    )
    row = cursor.fetchone()
    if row is None:
        return Claim.CONFLICT
    return Claim.CREATED if row[0] == 1 else Claim.UPDATED


class Store:
    """The service's SQLite database at ``path``. Call ``initialise()`` once before use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        # Every live thread's, for close(); weak, so a thread that ends takes its own along.
        self._all: weakref.WeakSet[_Held] = weakref.WeakSet()
        self._all_lock = threading.Lock()
        self._turns = _Turns()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def initialise(self) -> None:
        """Create the file, the tables and WAL mode, if they are not there yet."""
        if not self.path.parent.is_dir():
            raise FileNotFoundError(
                f"cannot create the database {str(self.path)!r}: the folder "
                f"{str(self.path.parent)!r} does not exist; create it or choose another --db"
            )
        with self.connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, in autocommit mode."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is None:
            held = _Held(self._open())
            self._local.held = held
            with self._all_lock:
                self._all.add(held)
        yield held.conn

    def _open(self) -> sqlite3.Connection:
        # ``timeout`` is SQLite's busy timeout; autocommit, so transactions are explicit.
        # Not checked for its thread: only close() uses it from another, at the end.
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        # With WAL, NORMAL loses no committed data on a crash, only on power loss.
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def transaction(self, *, urgent: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises.

        ``urgent``: a request handler's, which takes the next turn before any job's.
        """
        with self._turns.turn(urgent), self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT leaves it open too
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close every thread's connection. A thread that writes after this gets a fresh
        one (a job that outlived the drain), closed when that thread ends."""
        with self._all_lock:
            held, self._all = list(self._all), weakref.WeakSet()
        for each in held:
            each.conn.close()
        self._local = threading.local()

    # -- conversations ----------------------------------------------------------------------

    def save_conversation(self, conversation: Conversation) -> Claim:
        """Store the conversation for its owner (see ``claim_conversation``)."""
        with self.transaction() as conn:
            return claim_conversation(conn, conversation)

    def owner(self, conversation_id: str) -> str | None:
        """The uid a conversation belongs to, or None if it was never received."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT uid FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        return None if row is None else str(row["uid"])

    def conversation(self, conversation_id: str) -> Conversation | None:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT body FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        return None if row is None else Conversation.model_validate_json(row["body"])

    # -- a user's profile: goals, personas, integrations ------------------------------------

    def add_goal(
        self, goal_id: str, uid: str, title: str, keywords: list[str], target: int
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO goals (id, uid, title, keywords, target) "
                "VALUES (?, ?, ?, ?, ?)",
                (goal_id, uid, title, json.dumps([k.lower() for k in keywords]), target),
            )

    def add_persona(self, persona_id: str, uid: str, name: str, template: str) -> None:
        """Add a persona whose prompt is ``template`` filled with ``{name}`` and ``{memories}``."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO personas (id, uid, name, template) VALUES (?, ?, ?, ?)",
                (persona_id, uid, name, template),
            )

    def set_webhook(self, uid: str, kind: str, url: str) -> None:
        """Point ``kind`` ('conversation_created' or 'tasks') events of ``uid`` at ``url``."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO webhooks (uid, kind, url) VALUES (?, ?, ?)",
                (uid, kind, url),
            )

    def webhook_url(self, uid: str, kind: str) -> str | None:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT url FROM webhooks WHERE uid = ? AND kind = ?", (uid, kind)
            ).fetchone()
        return None if row is None else str(row["url"])

    # -- reading back -----------------------------------------------------------------------

    def count(self, table: str, where: str = "", *params: object) -> int:
        """Rows in ``table`` (one of the schema's), optionally filtered by ``where``."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; the store has {', '.join(TABLES)}")
        sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
        with self.connect() as conn:
            return int(conn.execute(sql, params).fetchone()[0])

    def query(self, sql: str, *params: object) -> list[dict[str, Any]]:
        """Rows of a read-only query, as dicts (for reports and tests)."""
        with self.connect() as conn:
            return [dict(row) for row in conn.execute(sql, params).fetchall()]
