"""The service killed mid-run, or stopped with a short drain, then restarted on the same files.

``afterwork serve`` runs as a subprocess on a free loopback port with a fresh database and
journal, serving the demo's world (goals, personas, webhooks and task integrations on a real
receiver). After the restart has worked off the journal, every conversation must have a final
outcome for each of its seven jobs, and the rows must be those of a clean run of the same
input: nothing lost, nothing written twice.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import afterwork as aw
from afterwork.conversations import JOBS, ConversationCompleted, ServiceSettings, Store
from afterwork.conversations import _demo_data as data
from afterwork.conversations._app import create_app
from afterwork.conversations._receiver import Receiver
from afterwork.testing import base_url, serving

from .conftest import threaded_server

COMMAND = str(Path(sys.executable).parent / "afterwork")
N = 60
URL = "/v1/conversations/completed"
TABLES = ("vectors", "memories", "trends", "action_items", "goal_mentions", "persona_updates")
#: Slow enough that a kill lands with jobs in flight; retries short enough to finish quickly.
ENV = {
    "AFTERWORK_LLM_LATENCY_S": "[0.05, 0.25]",
    "AFTERWORK_MAX_THREADS": "8",
    "AFTERWORK_LANES": '{"llm": 6, "http": 8}',
    "AFTERWORK_WEBHOOK_RETRY_DELAYS_S": "[0.05, 0.1, 0.2]",
    # The test counts every job's outcome, successes included: they are logged at debug.
    "AFTERWORK_LOG_LEVEL": "debug",
}


@dataclass
class World:
    events: list[ConversationCompleted]
    people: list[data.DemoUser]
    hooks: str  # the receiver's base URL


@pytest.fixture
def world() -> Iterator[tuple[World, Receiver]]:
    """The demo's users and N of their conversations, with a webhook receiver running."""
    people = data.users(6)
    receiver = Receiver(retry_after_s=0)
    with threaded_server(receiver.app) as url:
        yield World(data.conversations(N, people, seed=3), people, url), receiver


def seeded_db(path: Path, world: World) -> Path:
    store = Store(path)
    store.initialise()
    data.seed_profiles(store, world.people, world.hooks)
    store.close()
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """``afterwork serve`` as a subprocess; its JSON log goes to a file (a pipe could fill)."""

    def __init__(self, db: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [COMMAND, "serve", "--port", str(self.port), "--db", str(db)],
                env={**os.environ, **ENV, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self.get("/healthz") is not None, f"{self.base} to start")

    def get(self, path: str) -> Any:
        if self.process.poll() is not None:
            raise AssertionError(f"the server exited with {self.process.returncode}: {self.text()}")
        try:
            return httpx.get(self.base + path, timeout=5).json()
        except httpx.TransportError:
            return None

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def text(self) -> str:
        return self.log.read_text()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The log's events (a killed process may leave half a line: skipped)."""
        found = []
        for line in self.text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Start ``afterwork serve`` processes; any still running at the end is killed."""
    started: list[Server] = []

    def start(db: Path, log: Path, **env: str) -> Server:
        server = Server(db, log, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)


def wait_for(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll ``condition`` (another process's state) until it holds, or fail after ``limit``."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {limit} s for {what}")
        time.sleep(0.05)


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def post_all(server: Server, events: list[ConversationCompleted]) -> None:
    with httpx.Client(base_url=server.base, timeout=10) as client:
        for event in events:
            response = client.post(URL, json=event.model_dump(mode="json"))
            assert response.status_code == 202, response.text


def completed(server: Server) -> int:
    stats = server.get("/v1/stats")
    return int(stats["completed"]) if stats else 0


def settled(server: Server, db: Path, journal: Path) -> bool:
    """The journal is empty, nothing is pending, and every report is saved."""
    stats = server.get("/v1/stats")
    return (
        stats is not None and stats["pending"] == 0 and not aw.SqliteJournal(journal).unfinished()
    )


def table_counts(db: Path) -> dict[str, int]:
    return {table: rows(db, f"SELECT count(*) FROM {table}")[0][0] for table in TABLES}


def clean_run(tmp_path: Path, world: World) -> dict[str, int]:
    """The same input through a fresh in-process service that nobody interrupts."""
    with threaded_server(Receiver(retry_after_s=0).app) as hooks:
        db = seeded_db(tmp_path / "clean.db", World(world.events, world.people, hooks))
        settings = ServiceSettings(db=db, port=0, webhook_retry_delays_s=(0.05, 0.1, 0.2))
        anyio.run(post_and_wait, settings, world.events)
    return table_counts(db)


async def post_and_wait(settings: ServiceSettings, events: list[ConversationCompleted]) -> None:
    async with (
        serving(create_app(settings)) as server,
        httpx.AsyncClient(base_url=base_url(server), timeout=30) as client,
    ):
        for event in events:
            body = event.model_dump(mode="json")
            response = await client.post(URL, params={"wait": "true"}, json=body)
            assert response.status_code == 200


def finished_jobs(server: Server) -> Counter[tuple[str, str]]:
    """How often each (conversation, top-level job) logged a final outcome in this run."""
    names = {f"job.{status}" for status in aw.JobStatus if status.is_final}
    return Counter(
        (e["key"], e["job"])
        for e in server.events()
        if e.get("event") in names and "/" not in e.get("job", "")
    )


#: Jobs that spawn children: one with a child unfinished at a restart runs again, by design.
PARENTS = {"save_action_items", "update_personas"}


def twice(first: Server, second: Server) -> tuple[int, int]:
    """(parents, other jobs) that logged a final outcome in both runs."""
    both = set(finished_jobs(first)) & set(finished_jobs(second))
    parents = sum(1 for _, job in both if job in PARENTS)
    return parents, len(both) - parents


def assert_nothing_lost(db: Path, world: World, clean: dict[str, int]) -> None:
    outcomes = rows(db, "SELECT conversation_id, job, status FROM job_outcomes")
    by_conversation: dict[str, dict[str, str]] = {}
    for cid, job, status in outcomes:
        by_conversation.setdefault(cid, {})[job] = status
    assert set(by_conversation) == {e.conversation.id for e in world.events}
    for cid, jobs in by_conversation.items():
        assert set(JOBS) <= set(jobs), f"{cid} lost {set(JOBS) - set(jobs)}"
        assert all(aw.JobStatus(s).is_final for s in jobs.values()), (
            f"{cid} has unfinished jobs: {jobs}"
        )
    assert table_counts(db) == clean
    assert clean["vectors"] == N


def test_sigkill_mid_run_then_restart_loses_no_job(
    tmp_path: Path, world: tuple[World, Receiver], servers: Callable[..., Server]
) -> None:
    """SIGKILL with completions in flight; after a restart every job has a final outcome."""
    inputs, receiver = world
    db, journal = seeded_db(tmp_path / "s.db", inputs), tmp_path / "s.journal.db"
    first = servers(db, tmp_path / "first.log")
    post_all(first, inputs.events)
    wait_for(lambda: completed(first) >= N // 4, "a quarter of the completions")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    before = len(first.events("completion.finished"))
    assert 0 < before < N, "the kill landed mid-run"
    second = servers(db, tmp_path / "second.log")
    wait_for(lambda: settled(second, db, journal), "the journal to be worked off")
    assert second.stop(signal.SIGTERM) == -signal.SIGTERM
    duplicates = receiver.duplicates
    clean = clean_run(tmp_path, inputs)
    assert_nothing_lost(db, inputs, clean)
    parents, others = twice(first, second)
    print(
        f"\nSIGKILL after {before} of {N} completions had finished; the restart finished "
        f"{sum(finished_jobs(second).values())} jobs: {parents} parents re-run for an unfinished "
        f"child, {others} other jobs finished twice; webhook keys delivered twice: "
        f"{duplicates}; rows {table_counts(db)}"
    )
    # At least once, and at most twice: no job finished in both runs more than once each.
    assert max((finished_jobs(first) + finished_jobs(second)).values()) <= 2


def test_sigterm_with_a_short_drain_then_restart_finishes_the_rest(
    tmp_path: Path, world: tuple[World, Receiver], servers: Callable[..., Server]
) -> None:
    """SIGTERM drains for 0.2 s and keeps the rest in the journal; a restart finishes it."""
    inputs, receiver = world
    db, journal = seeded_db(tmp_path / "s.db", inputs), tmp_path / "s.journal.db"
    first = servers(db, tmp_path / "first.log", AFTERWORK_DRAIN_TIMEOUT="0.2")
    post_all(first, inputs.events)
    wait_for(lambda: completed(first) >= N // 4, "a quarter of the completions")
    assert first.stop(signal.SIGTERM) == -signal.SIGTERM
    (unfinished,) = first.events("dispatcher.unfinished")
    before = len(first.events("completion.finished")) - unfinished["completions"]
    assert unfinished["kept_in_journal"] is True
    kept = len(aw.SqliteJournal(journal).unfinished())
    assert kept > 0
    second = servers(db, tmp_path / "second.log")
    wait_for(lambda: settled(second, db, journal), "the journal to be worked off")
    assert second.stop(signal.SIGTERM) == -signal.SIGTERM
    duplicates = receiver.duplicates
    clean = clean_run(tmp_path, inputs)
    assert_nothing_lost(db, inputs, clean)
    parents, others = twice(first, second)
    print(
        f"\nSIGTERM: {before} of {N} completions had finished, {unfinished['completions']} "
        f"were cut at the drain deadline and {kept} kept in the journal; the restart finished "
        f"{sum(finished_jobs(second).values())} jobs: {parents} parents re-run for an unfinished "
        f"child, {others} other jobs finished twice; webhook keys delivered twice: "
        f"{duplicates}; rows {table_counts(db)}"
    )
    assert others == 0  # a drain records every job that finished: only parents run again
