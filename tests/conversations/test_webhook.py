"""The webhook job's rules against a real local receiver: retries, no retries, dead letters."""

from __future__ import annotations

import socket
from datetime import timedelta
from email.utils import format_datetime

import anyio
import pytest

from afterwork.conversations import RetryPolicy, Store
from afterwork.conversations._receiver import Receiver
from afterwork.conversations._store import utc_now
from afterwork.conversations._webhook import Attempt, parse_retry_after

from .conftest import Runner, completed, conversation

JOB = "conversation_created_webhook"
KEY = f"conversation.completed:c1:{JOB}"


def attempts(store: Store) -> list[tuple[int, int | None]]:
    rows = store.query("SELECT attempt, status_code FROM webhook_deliveries ORDER BY id")
    return [(row["attempt"], row["status_code"]) for row in rows]


async def test_no_webhook_configured_sends_nothing(store: Store, run_jobs: Runner) -> None:
    """A user without a webhook: the job succeeds and records no delivery."""
    report = await run_jobs(completed(conversation()), JOB)
    assert report.outcome(JOB).status == "succeeded"
    assert store.count("webhook_deliveries") == 0


async def test_delivery_carries_the_idempotency_key(
    store: Store, run_jobs: Runner, receiver: tuple[Receiver, str]
) -> None:
    """One attempt, keyed by the job's idempotency key; a replay does not send it again."""
    hooks, url = receiver
    store.set_webhook("u1", "conversation_created", f"{url}/hooks/ok/u1")
    for _ in range(2):  # the second run is what a journal replay does
        report = await run_jobs(completed(conversation()), JOB)
        assert report.outcome(JOB).status == "succeeded"
    assert dict(hooks.attempts) == {KEY: 1}
    assert attempts(store) == [(1, 200)]


async def test_a_500_is_retried_until_delivered(
    store: Store, run_jobs: Runner, receiver: tuple[Receiver, str]
) -> None:
    """A 5xx is retried with the same key; the retry delivers it."""
    hooks, url = receiver
    store.set_webhook("u1", "conversation_created", f"{url}/hooks/flaky/u1")
    report = await run_jobs(completed(conversation()), JOB)
    assert report.outcome(JOB).status == "succeeded"
    assert attempts(store) == [(1, 500), (2, 200)]
    assert dict(hooks.delivered) == {KEY: 1}
    assert store.count("webhook_dead_letters") == 0


async def test_retry_after_is_honoured(
    store: Store, run_jobs: Runner, receiver: tuple[Receiver, str]
) -> None:
    """A 429's Retry-After (0 s here) replaces the schedule's delay (an hour here)."""
    _, url = receiver
    store.set_webhook("u1", "conversation_created", f"{url}/hooks/throttle/u1")
    with anyio.fail_after(10):  # an hour's delay would trip this
        report = await run_jobs(
            completed(conversation()), JOB, policy=RetryPolicy((3600.0, 3600.0, 3600.0))
        )
    assert report.outcome(JOB).status == "succeeded"
    assert attempts(store) == [(1, 429), (2, 200)]


async def test_a_400_is_not_retried_and_is_dead_lettered(
    store: Store, run_jobs: Runner, receiver: tuple[Receiver, str]
) -> None:
    """A 4xx other than 408/429 ends at once: one attempt, a dead letter, a failed job."""
    _, url = receiver
    store.set_webhook("u1", "conversation_created", f"{url}/hooks/reject/u1")
    report = await run_jobs(completed(conversation()), JOB)
    outcome = report.outcome(JOB)
    assert (outcome.status, outcome.attempts) == ("failed", 1)
    assert outcome.error == (
        f"WebhookFailed: webhook to {url}/hooks/reject/u1 not delivered after 1 attempt(s) "
        f"(the endpoint refused it); last answer: HTTP 400; the payload is in "
        f"webhook_dead_letters as '{KEY}'"
    )
    assert attempts(store) == [(1, 400)]
    (letter,) = store.query(
        "SELECT idempotency_key, attempts, last_status FROM webhook_dead_letters"
    )
    assert letter == {"idempotency_key": KEY, "attempts": 1, "last_status": 400}


async def test_retries_run_out_into_a_dead_letter(
    store: Store, run_jobs: Runner, receiver: tuple[Receiver, str]
) -> None:
    """An endpoint that always answers 500 gets 1 + 3 attempts, then a dead letter."""
    _, url = receiver
    store.set_webhook("u1", "conversation_created", f"{url}/hooks/down/u1")
    report = await run_jobs(completed(conversation()), JOB)
    assert report.outcome(JOB).error == (
        f"WebhookFailed: webhook to {url}/hooks/down/u1 not delivered after 4 attempt(s) "
        f"(no retries left); last answer: HTTP 500; the payload is in webhook_dead_letters "
        f"as '{KEY}'"
    )
    assert attempts(store) == [(1, 500), (2, 500), (3, 500), (4, 500)]
    assert store.count("webhook_dead_letters") == 1


async def test_a_network_error_is_retried(store: Store, run_jobs: Runner) -> None:
    """Connection refused counts as retryable; each attempt records the error."""
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store.set_webhook("u1", "conversation_created", f"http://127.0.0.1:{port}/hook")
    report = await run_jobs(completed(conversation()), JOB)
    assert report.outcome(JOB).status == "failed"
    rows = store.query("SELECT status_code, error FROM webhook_deliveries")
    assert len(rows) == 4
    assert all(row["status_code"] is None and "ConnectError" in row["error"] for row in rows)


def test_retry_after_parses_seconds_and_dates() -> None:
    """Retry-After takes delta-seconds or an HTTP date; junk is ignored."""
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = format_datetime(utc_now() + timedelta(seconds=120), usegmt=True)
    assert 100 < (parse_retry_after(later) or 0) <= 120


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        *[(status, True) for status in (None, 408, 429, 500, 503)],
        *[(status, False) for status in (400, 401, 404, 422)],
    ],
)
def test_which_answers_are_retried(status: int | None, retryable: bool) -> None:
    """Network errors, 408, 429 and 5xx are retried; other 4xx are not."""
    assert Attempt(status, None, None).retryable is retryable
