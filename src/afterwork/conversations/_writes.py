"""The jobs' writes: each one transaction, each safe to run again for the same conversation.

These functions block. Sync jobs call them directly (they already run in a budget thread);
async jobs call them through ``ctx.run_sync``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from ._embedding import DIMENSIONS, to_blob
from ._extractor import normalise
from ._models import Conversation
from ._store import Store, utc_now

_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class ActionItem:
    id: int
    description: str


def save_vector(store: Store, conversation: Conversation, vector: list[float]) -> None:
    """Upsert the conversation's vector: one row per conversation, however often it runs."""
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO vectors (conversation_id, uid, dimensions, vector) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (conversation_id) DO UPDATE SET vector = excluded.vector, "
            "dimensions = excluded.dimensions",
            (conversation.id, conversation.uid, DIMENSIONS, to_blob(vector)),
        )


def save_memories(
    store: Store, conversation: Conversation, facts: list[str], *, replace: bool
) -> int:
    """Add the facts the user does not know yet; return how many were new.

    A fact is a duplicate when its normalised text is already among the user's memories,
    whichever conversation it came from. With ``replace``, the conversation's earlier
    memories go first, in the same transaction.
    """
    now = utc_now().isoformat()
    with store.transaction() as conn:
        if replace:
            conn.execute("DELETE FROM memories WHERE conversation_id = ?", (conversation.id,))
        added = 0
        for fact in facts:
            cursor = conn.execute(
                "INSERT INTO memories (uid, conversation_id, content, normalised, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (uid, normalised) DO NOTHING",
                (conversation.uid, conversation.id, fact, normalise(fact), now),
            )
            added += cursor.rowcount
    return added


def utc_day(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


def save_trends(store: Store, conversation: Conversation, topics: list[str]) -> None:
    """Record the conversation's topics and category on its UTC day, replacing earlier ones."""
    day = utc_day(conversation.created_at)
    rows = [(conversation.id, conversation.uid, day, "topic", topic) for topic in topics]
    category = conversation.structured.category.lower()
    rows.append((conversation.id, conversation.uid, day, "category", category))
    with store.transaction() as conn:
        conn.execute("DELETE FROM trends WHERE conversation_id = ?", (conversation.id,))
        conn.executemany(
            "INSERT INTO trends (conversation_id, uid, day, kind, name) VALUES (?, ?, ?, ?, ?)",
            rows,
        )


def trend_counts(store: Store, uid: str, day: str) -> dict[tuple[str, str], int]:
    """``{(kind, name): conversations}`` for one user on one UTC day."""
    rows = store.query(
        "SELECT kind, name, COUNT(*) AS n FROM trends WHERE uid = ? AND day = ? "
        "GROUP BY kind, name",
        uid,
        day,
    )
    return {(row["kind"], row["name"]): row["n"] for row in rows}


def save_action_items(
    store: Store, conversation: Conversation, structured: list[str], detected: list[str]
) -> list[ActionItem]:
    """Upsert the conversation's items; return those not exported yet."""
    items = [(text, "structured") for text in structured] + [(t, "detected") for t in detected]
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO action_items (uid, conversation_id, description, normalised, source) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (conversation_id, normalised) DO NOTHING",
            [
                (conversation.uid, conversation.id, text, normalise(text), source)
                for text, source in items
                if normalise(text)
            ],
        )
        rows = conn.execute(
            "SELECT id, description FROM action_items "
            "WHERE conversation_id = ? AND exported_at IS NULL ORDER BY id",
            (conversation.id,),
        ).fetchall()
    return [ActionItem(row["id"], row["description"]) for row in rows]


def mark_exported(store: Store, item_ids: list[int]) -> None:
    now = utc_now().isoformat()
    with store.transaction() as conn:
        conn.executemany(
            "UPDATE action_items SET exported_at = ? WHERE id = ? AND exported_at IS NULL",
            [(now, item_id) for item_id in item_ids],
        )


def record_goal_progress(store: Store, conversation: Conversation) -> list[str]:
    """Move each goal of the user that the conversation mentions; return the goals moved.

    The ``goal_mentions`` ledger lets a conversation move a goal at most once, so a
    reprocess or a replay moves nothing again. Progress stops at the goal's target.
    """
    text = conversation.structured.title + "\n" + conversation.transcript()
    words = set(_WORD.findall(text.lower()))
    moved: list[str] = []
    with store.transaction() as conn:
        goals = conn.execute(
            "SELECT id, keywords FROM goals WHERE uid = ? ORDER BY id", (conversation.uid,)
        ).fetchall()
        for goal in goals:
            if not words.intersection(json.loads(goal["keywords"])):
                continue
            first = conn.execute(
                "INSERT INTO goal_mentions (goal_id, conversation_id) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (goal["id"], conversation.id),
            ).rowcount
            if first:
                conn.execute(
                    "UPDATE goals SET progress = MIN(target, progress + 1) WHERE id = ?",
                    (goal["id"],),
                )
                moved.append(goal["id"])
    return moved
