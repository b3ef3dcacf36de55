"""What the demo expected, worked out from its world in advance, and what it measured.

Each check is ``(name, ok, detail)``. The demo fails (exit 1) when any check fails, so a run
that merely finishes is not taken for one that did the work.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import afterwork as aw

from ._demo_data import DemoUser
from ._receiver import Receiver
from ._settings import ServiceSettings
from ._store import Store

Check = tuple[str, bool, str]
#: Attempts a webhook endpoint of each mode takes per conversation, with 3 retry delays.
ATTEMPTS = {"ok": 1, "flaky": 2, "throttle": 2, "down": 4, "reject": 1}
SNAPSHOT_TABLES = ("vectors", "memories", "trends", "action_items", "goal_mentions")


@dataclass(frozen=True)
class World:
    """The demo's inputs: users, conversations per user, reprocessed ones."""

    users: list[DemoUser]
    per_user: Counter[str]
    reprocessed: int

    @property
    def total(self) -> int:
        return sum(self.per_user.values())

    def conversations_of(self, *modes: str | None) -> int:
        return sum(self.per_user[u.uid] for u in self.users if u.webhook_mode in modes)


def job_counts(metrics_text: str) -> dict[str, dict[str, int]]:
    """``{job: {status: count}}`` from the service's ``/metrics``."""
    counts: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "afterwork_job_outcomes":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                job, status = sample.labels["job"], sample.labels["status"]
                counts.setdefault(job, {})[status] = int(sample.value)
    return dict(sorted(counts.items()))


def snapshot(store: Store) -> dict[str, int]:
    return {table: store.count(table) for table in SNAPSHOT_TABLES}


def journal_left(settings: ServiceSettings) -> int:
    """Completions the journal still holds: 0 after a drain that finished everything."""
    if not settings.journal_path.is_file():
        return -1  # the journal was never opened: that is a failure too
    return len(aw.SqliteJournal(settings.journal_path).unfinished())


def request_ids_carried(log_path: Path) -> tuple[int, int]:
    """(job events whose request_id names their conversation, all job events)."""
    carried = total = 0
    with log_path.open(encoding="utf-8") as lines:
        for line in lines:
            event = json.loads(line)
            if not str(event.get("event", "")).startswith("job.") or "key" not in event:
                continue
            total += 1
            carried += str(event.get("request_id", "")).endswith(event["key"])
    return carried, total


def expectations(
    world: World,
    jobs: dict[str, dict[str, int]],
    store: Store,
    receiver: Receiver,
    before_reprocess: dict[str, int],
    ids: tuple[int, int],
) -> list[Check]:
    n, r = world.total, world.reprocessed
    dead = world.conversations_of("down", "reject")
    attempts = sum(
        ATTEMPTS[u.webhook_mode] * world.per_user[u.uid] for u in world.users if u.webhook_mode
    )
    users_seen = sum(1 for u in world.users if world.per_user[u.uid])
    refreshes = store.count("persona_updates")
    skips = store.query("SELECT COALESCE(SUM(skipped), 0) AS n FROM persona_updates")[0]["n"]

    def job(name: str, status: str) -> int:
        return jobs.get(name, {}).get(status, 0)

    every = ("extract_memories", "extract_trends", "save_action_items", "update_goal_progress")
    ran = all(job(j, "succeeded") == n + r for j in every)
    ran = ran and job("save_structured_vector", "succeeded") == n
    skipped = job("save_structured_vector", "skipped") == job("update_personas", "skipped") == r
    stalled = sum(c.get("timed_out", 0) + c.get("cancelled", 0) for c in jobs.values())
    delivered = world.conversations_of("ok", "flaky", "throttle")
    letters = store.count("webhook_dead_letters")
    webhook_failed = job("conversation_created_webhook", "failed")
    persona_ok = users_seen <= refreshes <= 2 * users_seen and refreshes + skips == n
    broken_users = sum(1 for u in world.users if u.broken_persona and world.per_user[u.uid])
    broken = job("update_personas/*", "failed") == broken_users
    broken = broken and job("update_personas/*", "succeeded") >= refreshes
    exported = store.count("action_items", "exported_at IS NOT NULL")
    throttled = world.conversations_of("throttle")
    parked = job("conversation_created_webhook", "deferred")
    saved = store.count("job_outcomes", "job = 'extract_memories'")
    after = snapshot(store)
    return [
        ("every job of every completion ran", ran, f"{n} new + {r} reprocessed"),
        ("reprocess skipped the first-time-only jobs", skipped, f"{r} skipped each"),
        ("no job timed out or was cancelled", stalled == 0, f"{stalled} did"),
        ("webhooks delivered", len(receiver.delivered) == delivered, f"{delivered} expected"),
        ("throttled webhooks parked (no room held), then delivered", parked == throttled > 0,
         f"{parked} parked of {throttled} throttled"),
        ("webhook attempts as the rules say", store.count("webhook_deliveries") == attempts,
         f"{attempts} expected"),
        ("dead letters where endpoints are down or refuse", letters == dead == webhook_failed,
         f"{dead} expected"),
        ("no duplicate delivery, every attempt keyed",
         receiver.duplicates == receiver.missing_key == 0, ""),
        ("one persona refresh per user per window", persona_ok,
         f"{refreshes} refreshes, {skips} rate-limited"),
        ("a broken persona fails alone", broken, f"{broken_users} broken persona(s)"),
        ("action items exported to task integrations", receiver.task_items == exported > 0,
         f"{exported} items"),
        ("reprocessing wrote no duplicate rows", after == before_reprocess,
         ", ".join(f"{k}={v}" for k, v in after.items())),
        ("every report persisted", saved == n, f"{saved} of {n}"),
        ("request ids reached the job events", ids[0] == ids[1] > 0, f"{ids[0]} of {ids[1]}"),
    ]  # fmt: skip


def figures(
    world: World, store: Store, receiver: Receiver, stats: aw.Stats, wall: float
) -> dict[str, str]:
    """The numbers the summary shows, as text."""
    attempts = store.count("webhook_deliveries")
    keys = store.query("SELECT COUNT(DISTINCT idempotency_key) AS n FROM webhook_deliveries")
    skips = store.query("SELECT COALESCE(SUM(skipped), 0) AS n FROM persona_updates")[0]["n"]
    rows = " / ".join(str(store.count(t)) for t in ("memories", "action_items", "trends"))
    return {
        "conversations (users)": (
            f"{world.total} ({len(world.users)}), {world.reprocessed} reprocessed"
        ),
        "wall time": f"{wall:.1f} s",
        "peak threads / budget": f"{stats.threads_peak} / {stats.max_threads}",
        "rows: memories / action items / trends": rows,
        "goals moved (mentions)": str(store.count("goal_mentions")),
        "webhooks delivered / retries / dead letters": (
            f"{len(receiver.delivered)} / {attempts - keys[0]['n']} / "
            f"{store.count('webhook_dead_letters')}"
        ),
        "persona refreshes / rate-limited skips": f"{store.count('persona_updates')} / {skips}",
    }
