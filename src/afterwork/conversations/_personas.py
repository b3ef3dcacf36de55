"""Persona refreshes: at most one per user per window, then one rebuild per persona.

The window check is a single ``INSERT ... ON CONFLICT DO NOTHING`` on the primary key
``(uid, window_start)``: SQLite runs it atomically, so of any number of concurrent completions
for one user exactly one wins the window. The winner is remembered by conversation id, so the
same completion run again (a retry or a journal replay) still counts as the winner and rebuilds
the personas, while every other completion in the window is counted as skipped.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta

from ._store import Store, utc_now

#: How many of the user's newest memories a persona prompt is built from.
RECENT_MEMORIES = 20


def window_start(moment: datetime, window_s: int) -> datetime:
    """The start of the refresh window holding ``moment``.

    ``window_s == 0`` means a UTC calendar day: the window runs until the next 00:00 UTC.
    Otherwise windows are ``window_s`` seconds long, counted from the Unix epoch.
    """
    moment = moment.astimezone(UTC)
    if window_s == 0:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    elapsed = int((moment - epoch).total_seconds())
    return epoch + timedelta(seconds=elapsed - elapsed % window_s)


def claim_refresh(
    store: Store, uid: str, conversation_id: str, now: datetime, window_s: int
) -> bool:
    """Take this window's refresh for ``uid``; False (and a skip counted) if it is taken."""
    start = window_start(now, window_s).isoformat()
    with store.transaction() as conn:
        won = conn.execute(
            "INSERT INTO persona_updates (uid, window_start, conversation_id, refreshed_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (uid, start, conversation_id, now.isoformat()),
        ).rowcount
        if won:
            return True
        row = conn.execute(
            "SELECT conversation_id FROM persona_updates WHERE uid = ? AND window_start = ?",
            (uid, start),
        ).fetchone()
        if row["conversation_id"] == conversation_id:
            return True
        conn.execute(
            "UPDATE persona_updates SET skipped = skipped + 1 WHERE uid = ? AND window_start = ?",
            (uid, start),
        )
    return False


def personas_of(store: Store, uid: str) -> list[str]:
    rows = store.query("SELECT id FROM personas WHERE uid = ? ORDER BY id", uid)
    return [row["id"] for row in rows]


def render_prompt(template: str, name: str, memories: list[str]) -> str:
    """Fill a persona template; it may use ``{name}`` and ``{memories}`` and nothing else."""
    fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    unknown = sorted(fields - {"name", "memories"})
    if unknown:
        raise ValueError(
            f"persona {name!r}: its template uses unknown field(s) {', '.join(unknown)}; "
            "a template may use only {name} and {memories}"
        )
    listed = "\n".join(f"- {memory}" for memory in memories) or "- (nothing yet)"
    return template.format(name=name, memories=listed)


def refresh_persona(store: Store, persona_id: str) -> str:
    """Rebuild one persona's prompt from its user's newest memories; return the prompt."""
    with store.connect() as conn:
        persona = conn.execute(
            "SELECT uid, name, template FROM personas WHERE id = ?", (persona_id,)
        ).fetchone()
        if persona is None:
            raise LookupError(f"persona {persona_id!r} does not exist (deleted meanwhile?)")
        memories = [
            row["content"]
            for row in conn.execute(
                "SELECT content FROM memories WHERE uid = ? ORDER BY id DESC LIMIT ?",
                (persona["uid"], RECENT_MEMORIES),
            )
        ]
    prompt = render_prompt(persona["template"], persona["name"], memories)
    with store.transaction() as conn:
        conn.execute(
            "UPDATE personas SET prompt = ?, updated_at = ? WHERE id = ?",
            (prompt, utc_now().isoformat(), persona_id),
        )
    return prompt
