"""The embedded SQLite store: connections, transactions, conversations and profiles.

Every method blocks, so nothing calls them on the event loop: jobs call them through the
dispatcher's thread budget (``ctx.run_sync``, or from a sync job, which already runs in a
budget thread), request handlers through threads of their own (``Service.blocking``), and the
report writer on its own thread. Each call opens its own connection and closes it before
returning: a connection never crosses threads, and nothing is left open when the service
stops. The database is in WAL mode, so readers never wait for the writer, and writers take the
write lock up front (``BEGIN IMMEDIATE``) so two writers queue for ``busy_timeout`` instead of
failing mid-way.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from ._models import Conversation
from ._schema import SCHEMA, TABLES

#: How long a writer waits for another writer's transaction before giving up.
BUSY_TIMEOUT_S = 30.0


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
        """A connection for this call only, in autocommit mode, closed on exit."""
        # ``timeout`` is SQLite's busy timeout; autocommit, so transactions are explicit.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        with closing(conn):
            conn.row_factory = sqlite3.Row
            # With WAL, NORMAL loses no committed data on a crash, only on power loss.
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

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
