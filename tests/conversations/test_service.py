"""The service end to end, over real HTTP: uvicorn on 127.0.0.1 and a free port."""

from __future__ import annotations

import threading
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from structlog.typing import EventDict

import afterwork as aw
from afterwork.conversations import (
    JOBS,
    Conversation,
    Extractor,
    RuleExtractor,
    ServiceSettings,
    Store,
    _outcomes,
    create_app,
)
from afterwork.conversations._service import Service, run_service
from tests.helpers import wait_until

from .conftest import GateExtractor, completed, conversation, running_service

URL = "/v1/conversations/completed"
COUNTED = ("vectors", "memories", "trends", "action_items", "goal_mentions", "job_outcomes")


def service(
    tmp_path: Path, extractor: Extractor | None = None, **options: Any
) -> AbstractAsyncContextManager[tuple[httpx.AsyncClient, Service]]:
    """The service on a fresh database; a client for it, and its running parts."""
    return running_service(tmp_path, extractor, client={"timeout": 20}, **options)


def body(cid: str = "c1", reprocess: bool = False, **changes: Any) -> dict[str, Any]:
    conv = conversation(cid, user=("I love tea. I need to call mom.",), action_items=["Buy milk"])
    return {**completed(conv, reprocess).model_dump(mode="json"), **changes}


def counts(store: Store) -> dict[str, int]:
    return {table: store.count(table) for table in COUNTED}


async def test_a_completion_is_accepted_then_processed(tmp_path: Path) -> None:
    """202 with the key and a status URL; the outcomes of all seven jobs are then persisted."""
    async with service(tmp_path) as (client, running):
        response = await client.post(URL, json=body())
        assert response.status_code == 202
        assert response.json() == {
            "key": "c1",
            "status_url": "/v1/conversations/c1/processing",
            "reprocess": False,
        }
        assert response.headers["Location"] == "/v1/conversations/c1/processing"
        await wait_until(
            lambda: not running.dispatcher.unfinished(running.pipeline, "c1"), "c1 to finish"
        )
        status = (await client.get("/v1/conversations/c1/processing")).json()
    assert status["state"] == "finished"
    assert status["ok"] is True
    assert sorted(o["job"] for o in status["outcomes"]) == sorted(JOBS)


async def test_wait_returns_the_report(tmp_path: Path) -> None:
    """?wait=true answers 200 with the Report once every job has an outcome."""
    async with service(tmp_path) as (client, _):
        response = await client.post(URL, params={"wait": "true"}, json=body())
        stats = (await client.get("/v1/stats")).json()
        metrics = (await client.get("/metrics")).text
        health = await client.get("/healthz")
    assert response.status_code == 200
    report = response.json()
    assert (report["pipeline"], report["key"], report["ok"]) == (
        "conversation.completed",
        "c1",
        True,
    )
    assert sorted(o["job"] for o in report["outcomes"]) == sorted(JOBS)
    assert (stats["admitted"], stats["completed"], stats["max_threads"]) == (1, 1, 4)
    assert 'afterwork_job_outcomes_total{job="extract_memories",status="succeeded"} 1.0' in metrics
    assert "afterwork_threads_peak " in metrics
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


async def test_invalid_bodies_get_422_naming_the_fields(tmp_path: Path) -> None:
    """A 422 lists each bad field by its location, without echoing the input."""
    async with service(tmp_path) as (client, _):
        response = await client.post(URL, json={"conversation": {"id": "c1", "created_at": "x"}})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [(d["loc"], d["type"]) for d in detail] == [
        (["body", "conversation", "uid"], "missing"),
        (["body", "conversation", "created_at"], "value_error"),
    ]
    assert all(set(d) == {"loc", "msg", "type"} for d in detail)


async def test_too_large_gets_413(tmp_path: Path) -> None:
    """Too many segments, or a body over max_body_bytes, is a 413 saying which limit."""
    segments = [{"speaker": "a", "text": "x", "start": 0, "end": 0}] * 5001
    big = body()
    big["conversation"]["transcript_segments"] = segments
    async with service(tmp_path, max_body_bytes=300_000) as (client, _):
        many = await client.post(URL, json=big)
        huge = await client.post(URL, content=b"{" + b" " * 300_001 + b"}")
    assert many.status_code == 413
    assert many.json()["detail"][0]["msg"] == (
        "the transcript has 5001 segments, more than the limit of 5000; split the conversation"
    )
    assert huge.status_code == 413
    assert huge.json() == {
        "detail": "the request body is 300003 bytes, more than the limit of 300000; send a "
        "smaller conversation or raise AFTERWORK_MAX_BODY_BYTES"
    }


async def test_overload_gets_503_with_retry_after(tmp_path: Path) -> None:
    """With max_pending=1 busy, the next completion is refused with 503 and Retry-After."""
    gate = GateExtractor()
    async with service(tmp_path, gate, max_pending=1, retry_after_s=3) as (client, _):
        first = await client.post(URL, json=body("c1"))
        second = await client.post(URL, json=body("c2"))
        refused = await client.get("/v1/conversations/c2/processing")
        gate.gate.set()
    assert first.status_code == 202
    assert refused.status_code == 404  # a refusal writes nothing: c2 was never stored
    assert (second.status_code, second.headers["Retry-After"]) == (503, "3")
    assert second.json() == {
        "detail": "cannot reserve room: no room within 0 s (1 pending, max_pending=1)",
        "reason": "overloaded",
    }


async def test_draining_gets_503_and_finishes_what_was_admitted(tmp_path: Path) -> None:
    """While the dispatcher drains, new work gets 503; admitted work finishes and is saved."""
    gate = GateExtractor()
    async with service(tmp_path, gate) as (client, running):
        assert (await client.post(URL, json=body("c1"))).status_code == 202
        await anyio.to_thread.run_sync(gate.entered.wait, 10)
        async with anyio.create_task_group() as group:
            group.start_soon(running.dispatcher.aclose)
            await wait_until(lambda: running.dispatcher.stats().state == "draining", "draining")
            refused = await client.post(URL, json=body("c2"))
            health = await client.get("/healthz")
            gate.gate.set()
    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "1")
    assert refused.json()["reason"] == "draining"
    assert (health.status_code, health.json()) == (503, {"status": "draining"})
    # c1 finished during the drain, when the budget was closed: saved at shutdown.
    outcomes = _outcomes.outcomes(running.store, "c1")
    assert sorted(o["job"] for o in outcomes) == sorted(JOBS)


async def test_reprocess_duplicates_no_rows(tmp_path: Path) -> None:
    """Processing a conversation again leaves every table's row count as it was."""
    async with service(tmp_path) as (client, running):
        await client.post(URL, params={"wait": "true"}, json=body())
        before = counts(running.store)
        again = await client.post(URL, params={"wait": "true"}, json=body(reprocess=True))
        after = counts(running.store)
    assert before == after
    assert before["memories"] == 1
    skipped = sorted(o["job"] for o in again.json()["outcomes"] if o["status"] == "skipped")
    assert skipped == ["conversation_created_webhook", "save_structured_vector", "update_personas"]


async def test_request_id_reaches_the_job_events(tmp_path: Path, events: list[EventDict]) -> None:
    """X-Request-ID is echoed and bound into the events of the jobs the request started."""
    async with service(tmp_path) as (client, _):
        given = await client.post(
            URL, params={"wait": "true"}, json=body(), headers={"X-Request-ID": "req-42"}
        )
        made = await client.get("/v1/stats")
    assert given.headers["X-Request-ID"] == "req-42"
    assert len(made.headers["X-Request-ID"]) == 32
    job_events = [e for e in events if e["event"].startswith("job.") and e.get("key") == "c1"]
    assert len(job_events) == len(JOBS)
    assert {e["request_id"] for e in job_events} == {"req-42"}


async def test_unknown_conversation_is_404(tmp_path: Path) -> None:
    """Asking for an unknown conversation's processing says how to create it."""
    async with service(tmp_path) as (client, _):
        response = await client.get("/v1/conversations/nope/processing")
    assert response.status_code == 404
    assert response.json() == {
        "detail": "no conversation 'nope'; POST it to /v1/conversations/completed first"
    }


class BlockedModel(RuleExtractor):
    """A model that never answers until the test says so: every call holds its thread."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = 0

    def _wait(self) -> None:
        self.waiting += 1
        if not self.gate.wait(timeout=20):  # bounded, so a failing test cannot hang
            raise RuntimeError("the test never opened the gate")

    def memories(self, conversation: Conversation) -> list[str]:
        self._wait()
        return super().memories(conversation)

    def topics(self, conversation: Conversation) -> list[str]:
        self._wait()
        return super().topics(conversation)

    def tasks(self, conversation: Conversation) -> list[str]:
        self._wait()
        return super().tasks(conversation)


async def test_requests_answer_while_every_budget_thread_is_blocked(tmp_path: Path) -> None:
    """With the jobs holding the whole thread budget, a POST and a GET still answer."""
    model = BlockedModel()
    async with service(tmp_path, model, max_threads=2, request_threads=1) as (client, running):
        for cid in ("c1", "c2"):
            assert (await client.post(URL, json=body(cid))).status_code == 202
        stats = running.dispatcher.stats
        await wait_until(lambda: stats().threads_busy == 2 == model.waiting, "budget saturated")
        posted = await client.post(URL, json=body("c3"))
        status = await client.get("/v1/conversations/c1/processing")
        still_blocked = (stats().threads_busy, model.waiting, model.gate.is_set())
        model.gate.set()
    assert still_blocked == (2, 2, False)
    assert posted.status_code == 202
    assert (status.status_code, status.json()["state"]) == (200, "processing")


async def test_the_journal_is_on_by_default_beside_the_database(tmp_path: Path) -> None:
    """By default admitted work goes to service.journal.db; journal=False keeps no journal."""
    async with service(tmp_path) as (_, running):
        on = running.dispatcher.stats().threads_journal
    off_dir = tmp_path / "off"
    off_dir.mkdir()
    async with service(off_dir, journal=False) as (_, running):
        off = running.dispatcher.stats().threads_journal
    assert (on, off) == (1, 0)
    assert (tmp_path / "service.journal.db").is_file()
    assert sorted(p.name for p in off_dir.iterdir() if "journal" in p.name) == []


async def test_a_file_in_the_journals_place_stops_the_start_naming_the_setting(
    tmp_path: Path,
) -> None:
    """A non-journal file where the journal goes fails the start, saying how to fix it."""
    path = tmp_path / "service.journal.db"
    path.write_text("notes")
    settings = ServiceSettings(db=tmp_path / "service.db", port=0)
    with pytest.raises(aw.JournalError) as info:
        async with run_service(create_app(settings), settings):
            pass
    assert str(info.value) == (
        f"{str(path)!r} cannot be used as a journal: SQLite cannot read it (file is not a "
        "database); it was left untouched: move it away, or pass journal= another path. The "
        "service keeps its journal beside AFTERWORK_DB (--db): choose another database, or "
        "run without a journal (AFTERWORK_JOURNAL=false, --no-journal)"
    )
    assert path.read_text() == "notes"
