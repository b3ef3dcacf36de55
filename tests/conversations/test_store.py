"""The store's connections (one per thread, all closed at the end) and its writers' turns
(one at a time, a request's first, the jobs never starved)."""

from __future__ import annotations

import gc
import sqlite3
import threading
import warnings
from pathlib import Path

import pytest

from afterwork.conversations._store import Store, _Turns


def test_a_thread_keeps_its_connection_and_close_closes_every_one(tmp_path: Path) -> None:
    """Calls on one thread share one connection; another thread has its own; close() closes
    both, and a later call opens a fresh one."""
    store = Store(tmp_path / "s.db")
    store.initialise()
    with store.connect() as first, store.connect() as again:
        assert first is again
    other: list[sqlite3.Connection] = []

    def elsewhere() -> None:
        with store.connect() as conn:
            other.append(conn)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    with store.connect() as still:
        assert still is first
    # The other thread has ended: its connection went with it.
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        other[0].execute("SELECT 1")
    store.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        first.execute("SELECT 1")
    with store.connect() as fresh:
        assert fresh is not first
        assert fresh.execute("SELECT 1").fetchone()[0] == 1
    store.close()


def test_a_thread_that_ends_closes_its_connection_without_a_warning(tmp_path: Path) -> None:
    """A connection is closed when its thread ends (no ResourceWarning at collection)."""
    store = Store(tmp_path / "s.db")
    store.initialise()
    seen: list[sqlite3.Connection] = []

    def use() -> None:
        with store.connect() as conn:
            seen.append(conn)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        gc.collect()
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        seen[0].execute("SELECT 1")
    store.close()


def test_a_failed_transaction_rolls_back_and_the_connection_goes_on(tmp_path: Path) -> None:
    """A transaction that raises leaves nothing written and the thread's connection usable."""
    store = Store(tmp_path / "s.db")
    store.initialise()

    def failing() -> None:
        with store.transaction() as conn:
            conn.execute("INSERT INTO webhooks (uid, kind, url) VALUES ('u', 'tasks', 'http://x')")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match=r"^boom$"):
        failing()
    assert store.webhook_url("u", "tasks") is None
    store.set_webhook("u", "tasks", "http://y")
    assert store.webhook_url("u", "tasks") == "http://y"
    store.close()


def _turn(turns: _Turns, urgent: bool, name: str, order: list[str], go: threading.Event) -> None:
    with turns.turn(urgent):
        order.append(name)
        go.wait(20)


def test_an_urgent_writer_goes_before_waiting_jobs_but_never_twice_while_one_waits() -> None:
    """With the lock held and two jobs and two requests waiting, the requests do not take
    every turn: request, job, request, job."""
    turns = _Turns()
    order: list[str] = []
    gates = {name: threading.Event() for name in ("holder", "job1", "job2", "req1", "req2")}
    holder = threading.Thread(target=_turn, args=(turns, False, "holder", order, gates["holder"]))
    holder.start()
    while order != ["holder"]:  # the holder has the turn
        threading.Event().wait(0.001)
    threads = []
    for name, urgent in (("job1", False), ("job2", False), ("req1", True), ("req2", True)):
        thread = threading.Thread(target=_turn, args=(turns, urgent, name, order, gates[name]))
        thread.start()
        threads.append(thread)
    while turns._waiting != {True: 2, False: 2}:  # all four queued
        threading.Event().wait(0.001)
    for name in ("holder", "job1", "job2", "req1", "req2"):
        gates[name].set()  # each goes as soon as its turn comes
    for thread in (holder, *threads):
        thread.join(20)
    assert order[0] == "holder"
    kinds = ["req" if name.startswith("req") else "job" for name in order[1:]]
    assert kinds == ["req", "job", "req", "job"]


def test_a_writer_that_gets_no_turn_in_time_is_told_the_database_is_locked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A turn that does not come within the busy timeout raises SQLite's own error."""
    from afterwork.conversations import _store

    monkeypatch.setattr(_store, "BUSY_TIMEOUT_S", 0.05)
    turns = _Turns()
    release = threading.Event()
    entered = threading.Event()

    def hold() -> None:
        with turns.turn(False):
            entered.set()
            release.wait(20)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(20)
    try:
        with pytest.raises(sqlite3.OperationalError) as error, turns.turn(True):
            pass
    finally:
        release.set()
        holder.join(20)
    assert str(error.value) == "database is locked: no turn to write within 0.05 s"
    with turns.turn(False):  # the lock is free again
        pass
