"""The conversation service in broker mode: ``afterwork serve --broker URL`` enqueues, and
``afterwork worker --conversations --db PATH`` processes run the seven jobs on the same store.

The workers are real processes; the service runs in the test's loop under uvicorn.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from afterwork.conversations import ServiceSettings, create_app
from afterwork.conversations._service import Service
from afterwork.testing import base_url, serving

from .conftest import RedisServer

COMPLETED = "/v1/conversations/completed"
COMMAND = str(Path(sys.executable).with_name("afterwork"))


def body(cid: str, uid: str = "u1") -> dict[str, Any]:
    return {
        "conversation": {
            "id": cid,
            "uid": uid,
            "created_at": "2026-03-14T09:30:00Z",
            "transcript_segments": [
                {"speaker": "user", "text": "I love tea. I need to call mom.", "start": 0, "end": 1}
            ],
            "structured": {"title": "A chat", "category": "personal", "action_items": ["Buy milk"]},
        }
    }


@asynccontextmanager
async def broker_service(
    db: Path, url: str, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Service]]:
    settings = ServiceSettings(db=db, port=0, broker=url, **options)
    app = create_app(settings)
    async with (
        serving(app) as server,
        httpx.AsyncClient(base_url=base_url(server), timeout=30) as client,
    ):
        yield client, app.state.service


@contextmanager
def worker(url: str, db: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """``afterwork worker --conversations`` on ``db``; SIGTERMed (and waited for) at the end."""
    log = db.with_name(f"worker-{uuid.uuid4().hex[:6]}.log")  # read it when a test fails
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [COMMAND, "worker", "--broker", url, "--conversations", "--db", str(db),
             "--max-threads", "4", "--claim-timeout", "5", "--drain-timeout", "5", *extra],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()


async def states(client: httpx.AsyncClient, cids: list[str]) -> dict[str, tuple[str, bool]]:
    found = {}
    for cid in cids:
        answer = (await client.get(f"/v1/conversations/{cid}/processing")).json()
        found[cid] = (answer["state"], answer["ok"])
    return found


async def all_finished(client: httpx.AsyncClient, cids: list[str]) -> None:
    """Wait until every conversation in ``cids`` finished with every job ok."""
    with anyio.fail_after(60):
        # Polled: the workers are other processes, with no event to wait on.
        while set((await states(client, cids)).values()) != {("finished", True)}:  # noqa: ASYNC110
            await anyio.sleep(0.1)


async def test_the_service_enqueues_and_two_workers_run_the_seven_jobs(
    tmp_path: Path, real_redis: RedisServer
) -> None:
    """20 conversations posted to a service with a broker are processed by two worker
    processes sharing its SQLite store: each finishes ok with its seven outcomes, and the
    processing state, stats and readiness read from the queue."""
    db = tmp_path / "service.db"
    cids = [f"c{i}" for i in range(20)]
    async with broker_service(db, real_redis.url) as (client, running):
        with worker(real_redis.url, db), worker(real_redis.url, db):
            for cid in cids:
                answer = await client.post(COMPLETED, json=body(cid, uid=f"u{int(cid[1:]) % 3}"))
                assert answer.status_code == 202, answer.text

            await all_finished(client, cids)
            outcomes = (await client.get("/v1/conversations/c0/processing")).json()["outcomes"]
            stats = (await client.get("/v1/stats")).json()
            ready = await client.get("/readyz")
    assert sorted(o["job"] for o in outcomes if o["job"] != "auto_sync") == sorted(
        [
            "save_structured_vector", "extract_memories", "extract_trends",
            "save_action_items", "update_goal_progress", "conversation_created_webhook",
            "update_personas",
        ]
    )  # fmt: skip
    assert stats == {"state": "open", "queue": "afterwork", "backlog": 0, "max_pending": 1000}
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "reasons": []})
    with pytest.raises(AttributeError, match="AFTERWORK_BROKER"):
        _ = running.dispatcher


async def test_wait_true_returns_the_workers_report(
    tmp_path: Path, real_redis: RedisServer
) -> None:
    """?wait=true answers 200 with the report a worker stored."""
    db = tmp_path / "service.db"
    async with broker_service(db, real_redis.url) as (client, _):
        with worker(real_redis.url, db):
            answer = await client.post(COMPLETED, params={"wait": "true"}, json=body("c1"))
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["key"], report["ok"], len(report["outcomes"]) >= 7) == ("c1", True, True)


async def test_a_full_queue_is_a_503_that_writes_nothing(
    tmp_path: Path, real_redis: RedisServer
) -> None:
    """With no worker running and max_pending=3, the fourth conversation is refused with 503
    and Retry-After, and is not stored: its processing is a 404. The first three wait in
    Redis and are processed once a worker starts."""
    db = tmp_path / "service.db"
    async with broker_service(db, real_redis.url, max_pending=3) as (client, _):
        admitted = [await client.post(COMPLETED, json=body(f"c{i}")) for i in range(3)]
        refused = await client.post(COMPLETED, json=body("c3"))
        missing = await client.get("/v1/conversations/c3/processing")
        queued = await states(client, ["c0"])
        not_ready = await client.get("/readyz")
        with worker(real_redis.url, db):
            await all_finished(client, ["c0", "c1", "c2"])
    assert [a.status_code for a in admitted] == [202, 202, 202]
    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "1")
    assert refused.json() == {
        "detail": "the workers' queue 'afterwork' holds 3 conversations, max_pending=3; "
        "retry later",
        "reason": "overloaded",
    }
    assert missing.status_code == 404
    assert queued == {"c0": ("processing", False)}
    assert not_ready.json() == {
        "ready": False,
        "reasons": ["no room: 3 conversations queued for the workers (max_pending)"],
    }


async def test_a_lost_broker_makes_the_service_unready_and_posts_503(
    tmp_path: Path, real_redis: RedisServer
) -> None:
    """Redis stopping under a running service: /readyz says the broker is unreachable, a
    POST gets a 503 with Retry-After and is not stored, and the service keeps answering."""
    db = tmp_path / "service.db"
    assert real_redis.process is not None
    async with broker_service(db, real_redis.url) as (client, _):
        real_redis.process.kill()
        real_redis.process.wait()
        ready = await client.get("/readyz")
        posted = await client.post(COMPLETED, json=body("c1"))
        missing = await client.get("/v1/conversations/c1/processing")
        health = await client.get("/healthz")
    assert ready.status_code == 503
    (reason,) = ready.json()["reasons"]
    assert reason.startswith("the broker is unreachable: ConnectionError"), reason
    assert (posted.status_code, posted.headers["Retry-After"]) == (503, "1")
    assert posted.json()["reason"] == "broker_unavailable"
    assert posted.json()["detail"].startswith(
        "the workers' queue 'afterwork' cannot be reached (ConnectionError: "
    )
    assert posted.json()["detail"].endswith(
        "the conversation was not kept: retry after Retry-After"
    )
    assert missing.status_code == 404
    assert health.status_code == 200


def test_a_broker_that_is_not_a_redis_url_is_refused_before_start(tmp_path: Path) -> None:
    """``serve --broker`` with an http URL exits 2 naming the flag, its credentials hidden."""
    result = subprocess.run(
        [COMMAND, "serve", "--db", str(tmp_path / "s.db"), "--broker",
         "http://user:secret@example.com/q"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "afterwork serve: invalid setting --broker='http://***@example.com/q': "
        "'http://***@example.com/q' is not a Redis URL; e.g. redis://127.0.0.1:6379/0\n"
    )
