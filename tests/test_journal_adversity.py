"""G6 under adversity (issue 9 items 2-5, 8): one live owner, damage refused and left as it
was, no silent writer death, no crash loop on poison, and the operator's view of a journal."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog
from pydantic import BaseModel, field_validator
from structlog.typing import EventDict

import afterwork as aw
from afterwork.testing import Gate, wait_until

from .apps import journal_owner
from .conftest import named
from .helpers import Ev, make_pipeline

APPS = Path(__file__).with_name("apps")
AFTERWORK = Path(sys.executable).with_name("afterwork")
UNTOUCHED = "; it was left untouched: move it away, or pass journal= another path"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def owned(path: Path | str, pid: int, *, this_process: bool = False) -> str:
    who = f"process {pid}"
    if this_process:
        who += " (this process: another Dispatcher has it open)"
    return (
        f"the journal {str(path)!r} is in use by {who}; a journal has one live owner: give "
        "each process (each worker) a journal of its own, or share work across processes with "
        "the Redis scale-out (afterwork.taskiq)"
    )


def refused(path: Path, problem: str) -> str:
    return f"{str(path)!r} cannot be used as a journal: {problem}{UNTOUCHED}"


def failed(path: Path, reason: str) -> str:
    return (
        f"the journal {str(path)!r} failed ({reason}); nothing more can be made durable, so new "
        "work is refused: fix the cause and restart, and the journal replays what it holds"
    )


@dataclass
class Hanging:
    """A pipeline whose job hangs until ``restarted``, then records the event's id."""

    pipeline: aw.Pipeline[Any]
    restarted: bool = False
    ran: list[int] = field(default_factory=list)


def hanging(pipeline: aw.Pipeline[Any]) -> Hanging:
    state = Hanging(pipeline)

    @pipeline.job
    async def hangs(event: Any) -> None:
        if not state.restarted:
            await anyio.sleep_forever()
        state.ran.append(event.id)

    return state


async def leave_unfinished(path: Path, state: Hanging, events: list[Any]) -> None:
    """Admit ``events`` and stop at a zero drain deadline: all of them stay in the journal."""
    async with aw.Dispatcher(drain_timeout=0, journal=path) as dispatcher:
        for event in events:
            await dispatcher.submit(state.pipeline, event)


async def real_journal(path: Path, count: int = 60) -> None:
    """A journal of several pages holding ``count`` unfinished completions."""
    state = hanging(make_pipeline())
    await leave_unfinished(path, state, [Ev(id=i, text="x" * 300) for i in range(count)])
    assert not path.with_name(path.name + "-wal").exists(), "closed cleanly: WAL folded in"


async def entering(path: Path | aw.SqliteJournal, **options: Any) -> aw.JournalError:
    """The JournalError raised on entering a Dispatcher with this journal."""
    with pytest.raises(aw.JournalError) as info:
        async with aw.Dispatcher(journal=path, **options):
            pytest.fail("the dispatcher opened")
    return info.value


# -- one live owner -----------------------------------------------------------------------------


async def test_a_second_owner_in_this_process_is_refused_naming_this_pid(tmp_path: Path) -> None:
    """Another Dispatcher on the journal in use, by the same path, another SqliteJournal of
    it, a relative path to it, or the owner's own SqliteJournal, gets JournalError naming
    this process; the owner carries on, and once it closed the journal opens again."""
    path = tmp_path / "journal.db"
    pipeline = make_pipeline()
    ran: list[int] = []
    pipeline.job(name="ok")(lambda e: ran.append(e.id))
    journal = aw.SqliteJournal(path)
    relative = Path(os.path.relpath(path))
    async with aw.Dispatcher(journal=journal) as owner:
        await owner.run(pipeline, Ev(id=1))
        others: list[tuple[Path | aw.SqliteJournal, Path]] = [
            (path, path),
            (aw.SqliteJournal(path), path),
            (relative, relative),
            (journal, path),
        ]
        for other, named_as in others:
            error = await entering(other)
            assert str(error) == owned(named_as, os.getpid(), this_process=True)
        await owner.run(pipeline, Ev(id=2))
        assert owner.stats().journal_error is None
    assert ran == [1, 2]
    async with aw.Dispatcher(journal=path) as again:
        await again.run(pipeline, Ev(id=3))
    assert ran == [1, 2, 3]


async def test_a_second_owner_through_a_symlink_is_refused(tmp_path: Path) -> None:
    """A symlink to the journal is the same journal: a Dispatcher opening it while another
    owns the file gets JournalError naming this process, and nothing runs twice."""
    path = tmp_path / "journal.db"
    alias = tmp_path / "alias.db"
    alias.symlink_to(path)
    async with aw.Dispatcher(journal=path):
        error = await entering(alias)
    assert str(error) in (
        owned(alias, os.getpid(), this_process=True),
        owned(path, os.getpid(), this_process=True),
    )


@dataclass
class Owner:
    proc: subprocess.Popen[str]

    async def line(self) -> str:
        assert self.proc.stdout is not None
        return await anyio.to_thread.run_sync(self.proc.stdout.readline, abandon_on_cancel=True)


@pytest.fixture
def start_owner() -> Iterator[Any]:
    """Start tests/apps/journal_owner.py on a journal; every one started is killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(path: Path, count: int) -> Owner:
        proc = subprocess.Popen(
            [sys.executable, str(APPS / "journal_owner.py"), "--journal", str(path),
             "--count", str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        started.append(proc)
        return Owner(proc)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


async def test_another_process_owns_the_journal_until_it_dies(
    tmp_path: Path, start_owner: Any
) -> None:
    """While another process owns the journal, a Dispatcher and requeue get JournalError
    naming its pid (readers still read); after a SIGKILL of that process the journal opens at
    once, and what it left running is replayed, one completion at a time."""
    path = tmp_path / "journal.db"
    with anyio.fail_after(30):
        owner = start_owner(path, 3)
        assert await owner.line() == f"ready {owner.proc.pid}\n"
        error = await entering(path)
        assert str(error) == owned(path, owner.proc.pid)
        with pytest.raises(aw.JournalError) as requeue:
            aw.SqliteJournal(path).requeue("0")
        assert str(requeue.value) == owned(path, owner.proc.pid)
        left = aw.SqliteJournal(path).unfinished()
        assert [(e.key, e.state) for e in left] == [("0", "running"), ("1", "running"),
                                                    ("2", "running")]  # fmt: skip

        os.kill(owner.proc.pid, signal.SIGKILL)
        assert await anyio.to_thread.run_sync(owner.proc.wait) == -signal.SIGKILL

        seen: list[journal_owner.Held] = []
        running = 0
        peak = 0

        async def record(event: journal_owner.Held, ctx: aw.JobContext) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await anyio.sleep(0.05)  # long enough for any concurrent replay to overlap
            seen.append(event)
            running -= 1

        pipeline = journal_owner.build(record)
        async with aw.Dispatcher(journal=path, pipelines=[pipeline]) as dispatcher:
            assert (tmp_path / "journal.db.lock").read_text() == f"{os.getpid()}\n"
            await wait_until(lambda: dispatcher.stats().completed == 3, "the left work replayed")
    assert sorted(e.id for e in seen) == [0, 1, 2]
    assert {e.note for e in seen} == {f"left by {owner.proc.pid}"}
    assert peak == 1  # each was running at the crash: a suspect, run alone
    assert aw.SqliteJournal(path).unfinished() == []


# -- damage ---------------------------------------------------------------------------------------


async def test_a_corrupted_page_is_refused_and_left_byte_identical(tmp_path: Path) -> None:
    """A journal whose page 2 was overwritten raises JournalError at entry naming the file
    and what SQLite found; the file is byte-identical afterwards, for readers too."""
    path = tmp_path / "journal.db"
    await real_journal(path)
    with path.open("r+b") as f:
        f.seek(4096)  # page 2: the root of the completions table
        f.write(b"\xa5" * 4096)
    before = sha256(path)
    state = hanging(make_pipeline())
    error = await entering(path, pipelines=[state.pipeline])
    message = str(error)
    assert message.startswith(f"{str(path)!r} cannot be used as a journal: ")
    assert message.endswith(UNTOUCHED)
    assert "Page 2" in message, message
    assert sha256(path) == before
    with pytest.raises(aw.JournalError) as read:
        aw.SqliteJournal(path).unfinished()
    assert str(read.value) == message
    assert sha256(path) == before
    assert state.ran == []


async def test_a_journal_cut_short_is_refused_and_left_byte_identical(tmp_path: Path) -> None:
    """A journal truncated mid-file (a full disk, a bad copy) raises JournalError at entry
    and is left as it was."""
    path = tmp_path / "journal.db"
    await real_journal(path)
    with path.open("r+b") as f:
        f.truncate(4096 + 2048)
    before = sha256(path)
    message = str(await entering(path, pipelines=[make_pipeline()]))
    assert message.startswith(f"{str(path)!r} cannot be used as a journal: ")
    assert message.endswith(UNTOUCHED)
    assert sha256(path) == before


def sqlite_header(path: Path) -> bytes:
    return path.read_bytes()[:100]


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


async def test_another_applications_database_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    """Another application's SQLite file (rollback journal) raises JournalError naming its
    tables; it is byte-identical, still not WAL, and requeue does not touch it either."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO users (name) VALUES (?)", [(f"u{i}",) for i in range(500)])
        conn.commit()
    finally:
        conn.close()
    before = sha256(path)
    assert sqlite_header(path)[18:20] == b"\x01\x01"
    error = await entering(path, pipelines=[make_pipeline()])
    problem = "it is another application's SQLite database (tables: users)"
    assert str(error) == refused(path, problem)
    with pytest.raises(aw.JournalError) as requeue:
        aw.SqliteJournal(path).requeue("1")
    assert str(requeue.value) == refused(path, problem)
    assert sha256(path) == before
    assert sqlite_header(path)[18:20] == b"\x01\x01"  # file format: rollback journal, not WAL
    assert journal_mode(path) == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "app.db.lock"]


async def test_another_applications_fresh_database_is_not_taken_over(tmp_path: Path) -> None:
    """A database another application marked as its own (its application_id) but has not
    created tables in yet is refused too, and left byte-identical."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA application_id = 305419896")
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    finally:
        conn.close()
    before = sha256(path)
    await entering(path)
    assert sha256(path) == before
    assert journal_mode(path) == "delete"


async def test_a_text_file_is_refused_and_left_byte_identical(tmp_path: Path) -> None:
    """A text file at the journal's path raises JournalError and is not changed."""
    path = tmp_path / "journal.db"
    path.write_text("SQLite format 3 is what this line pretends to be\n" * 300)
    before = sha256(path)
    error = await entering(path)
    assert str(error) == refused(path, "SQLite cannot read it (file is not a database)")
    assert sha256(path) == before


async def test_a_journal_of_a_future_format_is_refused(tmp_path: Path) -> None:
    """An afterwork journal of a newer format raises JournalError saying so, left as it was."""
    path = tmp_path / "journal.db"
    await real_journal(path, count=3)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    finally:
        conn.close()
    before = sha256(path)
    error = await entering(path, pipelines=[make_pipeline()])
    assert str(error) == refused(
        path, "it is an afterwork journal of format 99, and this version reads format 1 only"
    )
    assert sha256(path) == before


# -- a row that fails on replay -------------------------------------------------------------------


class Strictness:
    """Whether ``Picky`` refuses "boom" (module level, so replay sees the change)."""

    refuse_boom = False


class Picky(BaseModel):
    id: int
    text: str

    @field_validator("text")
    @classmethod
    def no_boom(cls, text: str) -> str:
        if Strictness.refuse_boom and text == "boom":
            raise TypeError("boom is not allowed")  # not a ValueError: pydantic lets it out
        return text


@pytest.fixture
def strictness() -> Iterator[type[Strictness]]:
    Strictness.refuse_boom = False
    yield Strictness
    Strictness.refuse_boom = False


def picky_pipeline() -> Hanging:
    return hanging(aw.Pipeline("picky", event=Picky, key=lambda p: p.id))


async def test_a_validator_raising_typeerror_on_replay_quarantines_only_its_row(
    tmp_path: Path, events: list[EventDict], strictness: type[Strictness]
) -> None:
    """A row whose validator now raises TypeError is quarantined ("invalid", logged); the
    other rows replay, and the body of the async with is never cancelled."""
    path = tmp_path / "journal.db"
    state = picky_pipeline()
    events_in = [Picky(id=1, text="fine"), Picky(id=2, text="boom"), Picky(id=3, text="ok")]
    await leave_unfinished(path, state, events_in)
    strictness.refuse_boom = True
    state.restarted = True
    body_done = False
    with anyio.fail_after(30):
        async with aw.Dispatcher(journal=path, pipelines=[state.pipeline]) as dispatcher:
            await wait_until(lambda: dispatcher.stats().completed == 2, "the valid rows ran")
            await wait_until(lambda: bool(named(events, "journal.replayed")), "replay done")
            await anyio.lowlevel.checkpoint()  # a cancelled body would stop here
            body_done = True
    assert body_done
    assert sorted(state.ran) == [1, 3]
    [logged] = named(events, "journal.quarantined")
    assert (logged["pipeline"], logged["key"], logged["reason"], logged["error"]) == (
        "picky",
        "2",
        "invalid",
        "TypeError: boom is not allowed",
    )
    [kept] = aw.SqliteJournal(path).quarantined()
    assert (kept.pipeline, kept.key, kept.reason, kept.error) == (
        "picky",
        "2",
        "invalid",
        "TypeError: boom is not allowed",
    )
    assert json.loads(kept.event) == {"id": 2, "text": "boom"}
    assert aw.SqliteJournal(path).unfinished() == []


# -- the writer never dies silently ---------------------------------------------------------------


def delete_journal(path: Path) -> None:
    os.unlink(path)


def delete_journal_and_wal(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        os.unlink(path.with_name(path.name + suffix))


def replace_journal(path: Path) -> None:
    copy = path.with_name("copy.db")
    shutil.copyfile(path, copy)  # the same content: only its identity tells it apart
    os.replace(copy, path)


DAMAGE = [
    (delete_journal, "its file is gone (No such file or directory)"),
    (delete_journal_and_wal, "its file is gone (No such file or directory)"),
    (replace_journal, "its file was replaced by another one"),
]


@pytest.mark.parametrize(("damage", "reason"), DAMAGE, ids=[d.__name__ for d, _ in DAMAGE])
async def test_a_journal_file_gone_or_replaced_fails_loudly(
    tmp_path: Path, events: list[EventDict], damage: Any, reason: str
) -> None:
    """With the journal file deleted or replaced mid-run, the next submit raises
    JournalError, and so do submit_nowait and delayed submits; stats() says why, it is
    logged once, nothing refused runs, and nothing hangs."""
    path = tmp_path / "journal.db"
    pipeline = make_pipeline()
    ran: list[int] = []
    pipeline.job(name="ok")(lambda e: ran.append(e.id))
    with anyio.fail_after(30):
        async with aw.Dispatcher(journal=path, max_pending=3) as dispatcher:
            await dispatcher.run(pipeline, Ev(id=0))
            # Its finish is written after it resolves: once on disk, the writer is idle.
            await wait_until(lambda: aw.SqliteJournal(path).unfinished() == [], "finish written")
            damage(path)
            with pytest.raises(aw.JournalError) as first:
                await dispatcher.submit(pipeline, Ev(id=1))
            with pytest.raises(aw.JournalError) as nowait:
                dispatcher.submit_nowait(pipeline, Ev(id=2))
            with pytest.raises(aw.JournalError) as later:
                await dispatcher.submit(pipeline, Ev(id=3))
            with pytest.raises(aw.JournalError) as delayed:
                await dispatcher.submit(pipeline, Ev(id=4), delay=60)
            await wait_until(lambda: dispatcher.stats().pending == 0, "the refused one ended")
            stats = dispatcher.stats()
    assert str(first.value) == failed(path, reason)
    refusal = f"cannot admit work to 'p': the journal failed ({reason}); restart once it is fixed"
    assert [str(e.value) for e in (nowait, later, delayed)] == [refusal] * 3
    assert stats.journal_error == reason
    assert (stats.pending, stats.delayed) == (0, 0)
    assert ran == [0]
    [logged] = named(events, "journal.failed")
    assert (logged["path"], logged["reason"]) == (str(path), reason)


async def test_a_write_that_fails_alone_runs_nothing_and_the_journal_carries_on(
    tmp_path: Path, events: list[EventDict]
) -> None:
    """An admission whose row cannot be written (its log context cannot be JSON) either is
    on disk when submit returns or raises JournalError and never runs; the writer lives on
    and the next submit is durable."""
    path = tmp_path / "journal.db"
    pipeline = make_pipeline()
    ran: list[int] = []
    pipeline.job(name="ok")(lambda e: ran.append(e.id))
    loop: dict[str, object] = {}
    loop["self"] = loop
    with anyio.fail_after(30):
        async with aw.Dispatcher(journal=path) as dispatcher:
            with structlog.contextvars.bound_contextvars(request=loop):
                try:
                    handle: aw.Handle | None = await dispatcher.submit(pipeline, Ev(id=1))
                except aw.JournalError:
                    handle = None
            if handle is None:
                await wait_until(lambda: dispatcher.stats().pending == 0, "the refused one ended")
                assert 1 not in ran, "submit said it was not admitted, yet its job ran"
            else:
                await handle.wait()
            report = await dispatcher.run(pipeline, Ev(id=2))
            stats = dispatcher.stats()
    assert report.ok
    assert stats.journal_error is None
    assert named(events, "journal.failed") == []
    assert 2 in ran


# -- poison -------------------------------------------------------------------------------------


def run_poison_app(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(APPS / "poison.py"), "--journal", str(tmp_path / "journal.db"),
         "--runs", str(tmp_path / "runs.txt"), "--mode", mode],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )  # fmt: skip


def test_a_poison_completion_is_quarantined_and_the_others_finish(tmp_path: Path) -> None:
    """A completion whose job kills the process (os._exit) with 5 others in flight: after at
    most 4 starts it is quarantined as poison (3 crashes, logged, its report failed with the
    reason) and each other completion finished, none blamed, none started more than twice."""
    runs: list[subprocess.CompletedProcess[str]] = []
    for start in range(6):
        runs.append(run_poison_app(tmp_path, "submit" if start == 0 else "replay"))
        if runs[-1].returncode != 1:
            break
    assert [r.returncode for r in runs] == [1, 1, 1, 0], [r.stderr[-2000:] for r in runs]
    lines = [json.loads(line) for r in runs for line in r.stdout.splitlines()]
    reports = [line["report"] for line in lines if "report" in line]
    marks = (tmp_path / "runs.txt").read_text().split("\n")
    starts = collections.Counter(m.split()[1] for m in marks if m.startswith("start "))
    ends = collections.Counter(m.split()[1] for m in marks if m.startswith("end "))
    others = ["0", "1", "2", "4", "5"]

    [quarantined] = aw.SqliteJournal(tmp_path / "journal.db").quarantined()
    message = (
        "the process died while this completion ran, 3 times; it was quarantined as poison: "
        f"see 'afterwork journal list {tmp_path / 'journal.db'}', and requeue it with "
        "'afterwork journal requeue' once fixed"
    )
    assert (quarantined.key, quarantined.reason, quarantined.crashes) == ("3", "poisoned", 3)
    assert quarantined.error == message
    [poisoned] = [line for line in lines if line.get("event") == "journal.poisoned"]
    assert (poisoned["key"], poisoned["crashes"], poisoned["jobs"]) == ("3", 3, ["work"])
    [poison_report] = [r for r in reports if r["key"] == "3"]
    assert poison_report["ok"] is False
    assert [(o["job"], o["status"], o["error"]) for o in poison_report["outcomes"]] == [
        ("work", "failed", f"JournalError: {message}")
    ]
    assert starts["3"] == 3  # once per crash; never again once quarantined
    assert "3" not in ends
    # Every other completion finished (at-least-once: a start may repeat after the first
    # crash), and a clean report was handed on for each.
    assert all(ends[key] >= 1 for key in others), ends
    assert all(starts[key] <= 2 for key in others), starts
    assert sorted({r["key"] for r in reports if r["ok"]}) == others
    assert aw.SqliteJournal(tmp_path / "journal.db").unfinished() == []
    assert lines[-1] == {"finished": True}


# -- the operator's command ---------------------------------------------------------------------


async def afterwork_cli(*args: str) -> tuple[int, str, str]:
    result = await anyio.run_process([str(AFTERWORK), *args], check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_journal_list_shows_unfinished_delayed_and_quarantined_work(
    tmp_path: Path, events: list[EventDict], strictness: type[Strictness]
) -> None:
    """`afterwork journal list` shows unfinished, delayed and quarantined completions, as
    text and as JSON."""
    path = tmp_path / "journal.db"
    state = picky_pipeline()
    async with aw.Dispatcher(drain_timeout=0, journal=path) as dispatcher:
        await dispatcher.submit(state.pipeline, Picky(id=1, text="fine"))
        await dispatcher.submit(state.pipeline, Picky(id=2, text="boom"))
        await dispatcher.submit(state.pipeline, Picky(id=3, text="later"), delay=3600)
    strictness.refuse_boom = True
    async with aw.Dispatcher(drain_timeout=0, journal=path, pipelines=[state.pipeline]):
        await wait_until(lambda: bool(named(events, "journal.replayed")), "replay done")

    code, out, err = await afterwork_cli("journal", "list", str(path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "unfinished: 2 (1 delayed)"
    assert lines[1].startswith("  picky:1  due now  crashes 0  unfinished jobs: ")
    assert lines[2].startswith("  picky:3  due 20")
    assert lines[3] == "quarantined: 1"
    assert lines[4].startswith("  picky:2  invalid at 20")
    assert lines[5] == "    TypeError: boom is not allowed"
    assert len(lines) == 6

    code, out, err = await afterwork_cli("journal", "list", str(path), "--json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert [(e["key"], e["due_at"] is not None) for e in document["unfinished"]] == [
        ("1", False),
        ("3", True),
    ]
    assert [(e["key"], e["reason"], e["error"]) for e in document["quarantined"]] == [
        ("2", "invalid", "TypeError: boom is not allowed")
    ]
    assert json.loads(document["quarantined"][0]["event"]) == {"id": 2, "text": "boom"}


async def test_journal_requeue_puts_quarantined_work_back(
    tmp_path: Path, events: list[EventDict], strictness: type[Strictness]
) -> None:
    """`afterwork journal requeue PATH KEY` puts a quarantined completion back (it runs at the
    next start); it is refused while a Dispatcher owns the journal, naming its pid, and for
    a key with nothing quarantined."""
    path = tmp_path / "journal.db"
    state = picky_pipeline()
    await leave_unfinished(path, state, [Picky(id=2, text="boom")])
    strictness.refuse_boom = True
    async with aw.Dispatcher(journal=path, pipelines=[state.pipeline]):
        await wait_until(lambda: bool(named(events, "journal.quarantined")), "quarantined")
        code, out, err = await afterwork_cli("journal", "requeue", str(path), "2")
    assert (code, out) == (1, "")
    assert err == f"afterwork journal: {owned(path, os.getpid())}\n"
    assert [q.key for q in aw.SqliteJournal(path).quarantined()] == ["2"]

    code, out, err = await afterwork_cli("journal", "requeue", str(path), "nope")
    assert (code, out) == (1, "")
    assert err == (
        f"afterwork journal: nothing quarantined under 'nope' in {str(path)!r}; "
        f"'afterwork journal list {path}' shows what is\n"
    )

    code, out, err = await afterwork_cli("journal", "requeue", str(path), "2")
    assert (code, err) == (0, "")
    assert out == "requeued 1 completion(s) of '2'; they run at the next start\n"
    assert aw.SqliteJournal(path).quarantined() == []
    assert [e.key for e in aw.SqliteJournal(path).unfinished()] == ["2"]

    strictness.refuse_boom = False  # the fix is deployed
    state.restarted = True
    async with aw.Dispatcher(journal=path, pipelines=[state.pipeline]) as dispatcher:
        await wait_until(lambda: dispatcher.stats().completed == 1, "the requeued one ran")
    assert state.ran == [2]
    assert aw.SqliteJournal(path).unfinished() == []


# -- the public read API --------------------------------------------------------------------------


async def test_the_read_api_filters_and_reads_while_a_dispatcher_owns_the_journal(
    tmp_path: Path,
) -> None:
    """SqliteJournal.unfinished(pipeline=, key=) filters, reads a journal a Dispatcher is
    writing (state and events included), and a missing file reads as empty without being
    created."""
    missing = tmp_path / "missing.db"
    reader = aw.SqliteJournal(missing)
    assert (reader.unfinished(), reader.delayed(), reader.quarantined()) == ([], [], [])
    assert not missing.exists()

    path = tmp_path / "journal.db"
    gate = Gate()
    a, b = make_pipeline("a"), make_pipeline("b")
    a.job(name="block")(gate.block)
    b.job(name="block")(gate.block)
    reader = aw.SqliteJournal(path)

    def keys(entries: list[aw.JournalEntry]) -> list[tuple[str, str, str]]:
        return sorted((e.pipeline, e.key, e.state) for e in entries)

    with anyio.fail_after(30):
        async with aw.Dispatcher(journal=path) as dispatcher:
            for pipeline, i in [(a, 1), (a, 2), (b, 1)]:
                await dispatcher.submit(pipeline, Ev(id=i, text=f"{pipeline.name}{i}"))
            await wait_until(lambda: gate.running == 3, "all three running")
            everything = await anyio.to_thread.run_sync(reader.unfinished)
            only_a = await anyio.to_thread.run_sync(lambda: reader.unfinished(pipeline="a"))
            key_1 = await anyio.to_thread.run_sync(lambda: reader.unfinished(key="1"))
            b_1 = await anyio.to_thread.run_sync(lambda: reader.unfinished(pipeline="b", key="1"))
            injected = await anyio.to_thread.run_sync(
                lambda: reader.unfinished(pipeline="a' OR '1'='1")
            )
            gate.open()
            await wait_until(lambda: dispatcher.stats().completed == 3, "all done")
            after = await anyio.to_thread.run_sync(reader.unfinished)
    assert keys(everything) == [("a", "1", "running"), ("a", "2", "running"),
                                ("b", "1", "running")]  # fmt: skip
    assert keys(only_a) == [("a", "1", "running"), ("a", "2", "running")]
    assert keys(key_1) == [("a", "1", "running"), ("b", "1", "running")]
    assert keys(b_1) == [("b", "1", "running")]
    assert json.loads(b_1[0].event) == {"id": 1, "text": "b1", "tags": []}
    assert injected == []
    assert after == []


# -- reports are handed on at least once ----------------------------------------------------------


async def test_a_report_cut_off_by_the_drain_is_handed_on_again_after_a_restart(
    tmp_path: Path,
) -> None:
    """An async on_report still awaiting at the drain deadline is cancelled; the completion
    stays in the journal, and the next start hands its report on again without running any
    job again."""
    path = tmp_path / "journal.db"
    pipeline = make_pipeline()
    ran: list[int] = []
    pipeline.job(name="ok")(lambda e: ran.append(e.id))
    entered = anyio.Event()
    never = anyio.Event()

    async def stuck(report: aw.Report) -> None:
        entered.set()
        await never.wait()

    with anyio.fail_after(30):
        async with aw.Dispatcher(journal=path, drain_timeout=0.5, on_report=stuck) as dispatcher:
            await dispatcher.submit(pipeline, Ev(id=1))
            await entered.wait()
        assert ran == [1]
        [kept] = aw.SqliteJournal(path).unfinished()
        assert [(j.job, j.status) for j in kept.jobs] == [("ok", aw.JobStatus.SUCCEEDED)]
        reports: list[aw.Report] = []
        async with aw.Dispatcher(
            journal=path, pipelines=[pipeline], on_report=reports.append
        ) as dispatcher:
            await wait_until(lambda: len(reports) == 1, "the report handed on again")
    assert ran == [1]
    [report] = reports
    assert (report.key, report.ok, report.replayed) == ("1", True, True)
    assert [(o.job, o.status, o.attempts) for o in report.outcomes] == [
        ("ok", aw.JobStatus.SUCCEEDED, 1)
    ]
    assert aw.SqliteJournal(path).unfinished() == []
