"""Webhook delivery: one POST per job attempt, retries on a schedule, a dead letter at the end.

The rules, in the order they apply to each attempt's answer:

- a 2xx is delivered: done;
- a 4xx other than 408 and 429 means the endpoint refuses this payload, and sending it again
  will not change that: no retry;
- a 408, a 429, a 5xx or a network error is retried after the next delay of the schedule
  (1 s, 5 s, 30 s by default), or after the endpoint's ``Retry-After`` (up to a cap) if it
  sent one. The job raises ``RetryLater`` and the dispatcher waits: a short wait in place, a
  wait longer than ``park_after`` parked, holding no admission room (a throttling endpoint
  never blocks other users' conversations);
- when no retry is left, the payload goes to ``webhook_dead_letters`` and the job fails.

Every attempt carries ``Idempotency-Key: <the job's idempotency key>``, the same on every
attempt, retry, follow-up and replay, so an endpoint can drop duplicates. A delivery that
already succeeded is not sent again when the job runs again. URLs in errors are redacted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from afterwork import JobContext, RetryLater

from ._redact import redact
from ._store import Store, utc_now


class WebhookFailed(Exception):
    """A webhook was not delivered after its last attempt; it is in the dead letters."""


@dataclass(frozen=True)
class RetryPolicy:
    """Delays between attempts (so ``len(delays) + 1`` attempts), and the cap on Retry-After."""

    delays: tuple[float, ...] = (1.0, 5.0, 30.0)
    max_retry_after: float = 600.0


@dataclass(frozen=True)
class Attempt:
    status: int | None
    error: str | None
    retry_after: float | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        if self.status is None:  # the network failed: the endpoint may never have seen it
            return True
        return self.status in (408, 429) or self.status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - utc_now()).total_seconds())


async def post_once(client: httpx.AsyncClient, url: str, payload: object, key: str) -> Attempt:
    """One POST of ``payload`` as JSON; network errors become an Attempt, never an exception."""
    try:
        response = await client.post(url, json=payload, headers={"Idempotency-Key": key})
    except httpx.HTTPError as error:
        return Attempt(None, redact(f"{type(error).__name__}: {error}"), None)
    failure = None if response.is_success else f"HTTP {response.status_code}"
    hint = parse_retry_after(response.headers.get("Retry-After"))
    return Attempt(response.status_code, failure, hint)


def delivered_before(store: Store, key: str) -> bool:
    return store.count("webhook_deliveries", "idempotency_key = ? AND delivered = 1", key) > 0


def record_attempt(
    store: Store, key: str, uid: str, url: str, number: int, attempt: Attempt
) -> None:
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO webhook_deliveries (idempotency_key, uid, url, attempt, status_code, "
            "error, delivered, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, uid, url, number, attempt.status, attempt.error, attempt.delivered,
             utc_now().isoformat()),
        )  # fmt: skip


def dead_letter(
    store: Store, key: str, uid: str, url: str, payload: object, attempts: int, last: Attempt
) -> None:
    with store.transaction() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO webhook_dead_letters (idempotency_key, uid, url, payload, "
            "attempts, last_status, error, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, uid, url, json.dumps(payload), attempts, last.status, last.error or "",
             utc_now().isoformat()),
        )  # fmt: skip


async def deliver(
    ctx: JobContext,
    client: httpx.AsyncClient,
    store: Store,
    policy: RetryPolicy,
    *,
    uid: str,
    url: str,
    payload: dict[str, Any],
) -> None:
    """One attempt (``ctx.attempt``) to deliver ``payload`` to ``url`` by the rules above."""
    key = ctx.idempotency_key
    if await ctx.run_sync(delivered_before, store, key):
        ctx.log.info("webhook.already_delivered", url=redact(url))
        return
    attempt = await post_once(client, url, payload, key)
    await ctx.run_sync(record_attempt, store, key, uid, url, ctx.attempt, attempt)
    if attempt.delivered:
        return
    if ctx.attempt > len(policy.delays) or not attempt.retryable:
        await ctx.run_sync(dead_letter, store, key, uid, url, payload, ctx.attempt, attempt)
        why = "no retries left" if attempt.retryable else "the endpoint refused it"
        raise WebhookFailed(
            f"webhook to {redact(url)} not delivered after {ctx.attempt} attempt(s) ({why}); "
            f"last answer: {attempt.error}; the payload is in webhook_dead_letters as {key!r}"
        )
    delay = policy.delays[ctx.attempt - 1]
    if attempt.retry_after is not None:
        delay = min(attempt.retry_after, policy.max_retry_after)
    raise RetryLater(delay, f"webhook to {redact(url)}: {attempt.error}")
