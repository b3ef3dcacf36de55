"""The persona window under concurrency: of many completions for a user, one refreshes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from sqlite3 import Connection

import httpx

import afterwork as aw
from afterwork.conversations import RuleExtractor, Services, Store, build_pipeline
from afterwork.conversations._personas import window_start

from .conftest import MOMENT, completed, conversation

RACERS = 20


class RacingStore(Store):
    """Once armed, its next ``RACERS`` write transactions all start together, at a barrier."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.barrier = threading.Barrier(RACERS, timeout=10)
        self._lock = threading.Lock()
        self.armed = False
        self._started = 0

    @contextmanager
    def transaction(self, *, urgent: bool = False) -> Iterator[Connection]:
        with self._lock:
            self._started += self.armed
            racing = self.armed and self._started <= RACERS
        if racing:
            self.barrier.wait()
        with super().transaction(urgent=urgent) as conn:
            yield conn


async def test_twenty_concurrent_completions_refresh_once(tmp_path: Path) -> None:
    """20 completions for one user race for the window at once: exactly one refresh."""
    store = RacingStore(tmp_path / "race.db")
    store.initialise()
    store.add_persona("p1", "u1", "Coach", "{name}: {memories}")
    store.armed = True  # the setup writes above do not race
    async with httpx.AsyncClient() as client:
        services = Services(store=store, extractor=RuleExtractor(), client=client)
        pipeline = build_pipeline(services, only=["update_personas"])
        async with aw.Dispatcher(max_threads=RACERS, lanes={"llm": 1, "http": 1}) as dispatcher:
            handles = [
                dispatcher.submit_nowait(pipeline, completed(conversation(f"c{i}")))
                for i in range(RACERS)
            ]
            reports = [await handle.wait() for handle in handles]
    refreshed = [r.key for r in reports if len(r.outcomes) == 2]
    assert len(refreshed) == 1
    assert all(r.ok for r in reports)
    (row,) = store.query("SELECT conversation_id, skipped FROM persona_updates")
    store.close()
    assert row == {"conversation_id": refreshed[0], "skipped": RACERS - 1}


def test_the_default_window_ends_at_midnight_utc() -> None:
    """Window 0 is the UTC day; a fixed window is counted from the epoch."""
    assert window_start(MOMENT, 0).isoformat() == "2026-03-14T00:00:00+00:00"
    assert window_start(MOMENT.replace(minute=44), 900).isoformat() == "2026-03-14T09:30:00+00:00"


async def test_the_winner_refreshes_again_when_run_again(tmp_path: Path) -> None:
    """A replay of the winning completion still counts as the winner; no skip is counted."""
    store = Store(tmp_path / "replay.db")
    store.initialise()
    store.add_persona("p1", "u1", "Coach", "{name}")
    async with httpx.AsyncClient() as client:
        services = Services(store=store, extractor=RuleExtractor(), client=client)
        pipeline = build_pipeline(services, only=["update_personas"])
        async with aw.Dispatcher(max_threads=2, lanes={"llm": 1, "http": 1}) as dispatcher:
            first = await dispatcher.run(pipeline, completed(conversation("c1")))
            again = await dispatcher.run(pipeline, completed(conversation("c1")))
    rows = store.query("SELECT skipped FROM persona_updates")
    store.close()
    assert [len(first.outcomes), len(again.outcomes)] == [2, 2]
    assert rows == [{"skipped": 0}]
