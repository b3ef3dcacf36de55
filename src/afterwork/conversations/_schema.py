"""The SQLite schema of the conversation store.

Every job's write is keyed so that running it again (a retry, a reprocess, a journal replay)
changes nothing twice: rows carry the conversation id or the job's idempotency key in a
primary key or a unique constraint, and the jobs write with upserts.
"""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id          TEXT PRIMARY KEY,
    uid         TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    body        TEXT NOT NULL,
    received    INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS vectors (
    conversation_id TEXT PRIMARY KEY,
    uid             TEXT NOT NULL,
    dimensions      INTEGER NOT NULL,
    vector          BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS memories (
    id              INTEGER PRIMARY KEY,
    uid             TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    content         TEXT NOT NULL,
    normalised      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    UNIQUE (uid, normalised)
);
CREATE INDEX IF NOT EXISTS memories_by_conversation ON memories (conversation_id);
-- One row per (conversation, topic or category): counts per user and day are a GROUP BY,
-- so processing a conversation twice cannot count it twice.
CREATE TABLE IF NOT EXISTS trends (
    conversation_id TEXT NOT NULL,
    uid             TEXT NOT NULL,
    day             TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('topic', 'category')),
    name            TEXT NOT NULL,
    PRIMARY KEY (conversation_id, kind, name)
);
CREATE INDEX IF NOT EXISTS trends_by_day ON trends (uid, day);
CREATE TABLE IF NOT EXISTS action_items (
    id              INTEGER PRIMARY KEY,
    uid             TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    description     TEXT NOT NULL,
    normalised      TEXT NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('structured', 'detected')),
    exported_at     TEXT,
    UNIQUE (conversation_id, normalised)
);
CREATE TABLE IF NOT EXISTS goals (
    id        TEXT PRIMARY KEY,
    uid       TEXT NOT NULL,
    title     TEXT NOT NULL,
    keywords  TEXT NOT NULL,
    target    INTEGER NOT NULL CHECK (target > 0),
    progress  INTEGER NOT NULL DEFAULT 0
);
-- The ledger that lets a goal move at most once per conversation.
CREATE TABLE IF NOT EXISTS goal_mentions (
    goal_id         TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    PRIMARY KEY (goal_id, conversation_id)
);
CREATE TABLE IF NOT EXISTS personas (
    id          TEXT PRIMARY KEY,
    uid         TEXT NOT NULL,
    name        TEXT NOT NULL,
    template    TEXT NOT NULL,
    prompt      TEXT,
    updated_at  TEXT
);
CREATE TABLE IF NOT EXISTS webhooks (
    uid   TEXT NOT NULL,
    kind  TEXT NOT NULL CHECK (kind IN ('conversation_created', 'tasks')),
    url   TEXT NOT NULL,
    PRIMARY KEY (uid, kind)
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id               INTEGER PRIMARY KEY,
    idempotency_key  TEXT NOT NULL,
    uid              TEXT NOT NULL,
    url              TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    status_code      INTEGER,
    error            TEXT,
    delivered        INTEGER NOT NULL,
    at               TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_by_key ON webhook_deliveries (idempotency_key);
CREATE TABLE IF NOT EXISTS webhook_dead_letters (
    idempotency_key  TEXT PRIMARY KEY,
    uid              TEXT NOT NULL,
    url              TEXT NOT NULL,
    payload          TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    last_status      INTEGER,
    error            TEXT NOT NULL,
    at               TEXT NOT NULL
);
-- One row per user and window: the primary key is the atomic check-and-set.
CREATE TABLE IF NOT EXISTS persona_updates (
    uid              TEXT NOT NULL,
    window_start     TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    refreshed_at     TEXT NOT NULL,
    skipped          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (uid, window_start)
);
CREATE TABLE IF NOT EXISTS job_outcomes (
    conversation_id  TEXT NOT NULL,
    job              TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    duration_s       REAL NOT NULL,
    error            TEXT,
    retry_at         TEXT,
    finished_at      TEXT NOT NULL,
    PRIMARY KEY (conversation_id, job)
);
"""

#: The tables the service counts rows of, in the order the demo reports them.
TABLES = (
    "conversations",
    "vectors",
    "memories",
    "trends",
    "action_items",
    "goals",
    "goal_mentions",
    "personas",
    "webhooks",
    "webhook_deliveries",
    "webhook_dead_letters",
    "persona_updates",
    "job_outcomes",
)
