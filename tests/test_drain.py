"""G5 drain under misuse: aclose() from a job, abandoned, repeated or without __aexit__; the
deadline never starts queued or delayed work; jobs that ignore cancellation; hung threads at
close, in process and in a real `afterwork serve`."""

from __future__ import annotations

import collections
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.from_thread
import anyio.lowlevel
import httpx
import pytest
from structlog.typing import EventDict

import afterwork as aw
from afterwork.testing import Gate, wait_until

from .conftest import named
from .helpers import Ev, make_pipeline

#: drain_timeout of the bounded-exit tests; each block must exit within it plus BOUND_SLACK.
DRAIN = 1.0
#: Generous: the machine is shared. The point is that the block exits, not how fast.
BOUND_SLACK = 10.0
#: The library's own bound beyond drain_timeout (``_host.CLOSE_MARGIN_S``).
CLOSE_MARGIN_S = 1.5
#: The safety net around each scenario: a hang fails the test instead of the suite.
SAFETY = DRAIN + CLOSE_MARGIN_S + 2 * BOUND_SLACK

Backend = Literal["asyncio", "trio"]
BACKENDS: list[Backend] = ["asyncio", "trio"]


def dispatcher_events(events: list[EventDict]) -> list[str]:
    return [e["event"] for e in events if e["event"].startswith("dispatcher.")]


def statuses(report: aw.Report) -> dict[str, tuple[str, int]]:
    return {o.job: (o.status.value, o.attempts) for o in report.outcomes}


# -- aclose() called from inside a job ------------------------------------------------------


async def _aclose_from_a_job(events: list[EventDict], via_thread: bool) -> None:
    pipeline = make_pipeline()
    box: list[aw.Dispatcher] = []
    returned = threading.Event()  # the job's aclose() came back (set from a thread, too)
    returned_on_loop = anyio.Event()

    if via_thread:

        @pipeline.job(name="closer")
        def closer_sync(event: Ev) -> None:
            anyio.from_thread.run(box[0].aclose)
            returned.set()
            anyio.from_thread.run_sync(returned_on_loop.set)

    else:

        @pipeline.job(name="closer")
        async def closer_async(event: Ev) -> None:
            await box[0].aclose()
            returned.set()
            returned_on_loop.set()

    @pipeline.job
    async def finisher(event: Ev) -> None:
        await returned_on_loop.wait()  # finishes within the drain, after aclose() returned

    @pipeline.job
    async def hanger(event: Ev) -> None:
        await anyio.sleep_forever()

    with anyio.fail_after(SAFETY):
        start = anyio.current_time()
        async with aw.Dispatcher(drain_timeout=DRAIN) as dispatcher:
            box.append(dispatcher)
            handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
            await returned_on_loop.wait()
            assert dispatcher.stats().state == "draining"
        elapsed = anyio.current_time() - start
        report = await handle.wait()
    assert elapsed < DRAIN + BOUND_SLACK, elapsed
    assert returned.is_set()
    assert dispatcher.stats().state == "closed"
    assert statuses(report) == {
        "closer": ("succeeded", 1),
        "finisher": ("succeeded", 1),
        "hanger": ("cancelled", 1),
    }
    [unfinished] = named(events, "dispatcher.unfinished")
    assert unfinished["jobs"] == ["p:1:hanger"]
    assert unfinished["never_started"] == []
    assert dispatcher_events(events) == [
        "dispatcher.draining",
        "dispatcher.unfinished",
        "dispatcher.closed",
    ]


@pytest.mark.parametrize("via_thread", [False, True], ids=["async_job", "sync_job_from_thread"])
async def test_aclose_from_inside_a_job_returns_and_the_block_exits_by_the_deadline(
    events: list[EventDict], via_thread: bool
) -> None:
    """aclose() from a job (async, or a sync job via from_thread) returns at once; the block
    exits by the drain deadline; the caller and a prompt sibling succeed, a hung one is
    cancelled and named."""
    await _aclose_from_a_job(events, via_thread)


@pytest.mark.parametrize("via_thread", [False, True], ids=["async_job", "sync_job_from_thread"])
def test_aclose_from_inside_a_job_lets_the_block_exit_on_trio(
    events: list[EventDict], via_thread: bool
) -> None:
    """On trio too, aclose() from a job never hangs the async with block."""
    anyio.run(functools.partial(_aclose_from_a_job, events, via_thread), backend="trio")


# -- aclose() abandoned by its caller -------------------------------------------------------


async def _aclose_abandoned_by_its_caller(events: list[EventDict]) -> None:
    pipeline = make_pipeline()
    started = anyio.Event()

    @pipeline.job
    async def forever(event: Ev) -> None:
        started.set()
        await anyio.sleep_forever()

    with anyio.fail_after(SAFETY):
        start = anyio.current_time()
        async with aw.Dispatcher(drain_timeout=DRAIN) as dispatcher:
            handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
            await started.wait()
            with anyio.move_on_after(0.01) as gave_up:
                await dispatcher.aclose()
            assert gave_up.cancelled_caught, "aclose() returned before its job was done"
            assert dispatcher.stats().state == "draining"
        elapsed = anyio.current_time() - start
        await dispatcher.aclose()  # a later call returns too
        report = await handle.wait()
    assert elapsed < DRAIN + BOUND_SLACK, elapsed
    assert dispatcher.stats().state == "closed"
    assert statuses(report) == {"forever": ("cancelled", 1)}
    [unfinished] = named(events, "dispatcher.unfinished")
    assert unfinished["jobs"] == ["p:1:forever"]
    assert dispatcher_events(events) == [
        "dispatcher.draining",
        "dispatcher.unfinished",
        "dispatcher.closed",
    ]


async def test_an_aclose_its_caller_gave_up_on_still_drains_and_the_block_exits(
    events: list[EventDict],
) -> None:
    """Cancelling the aclose() caller stops only its wait: the drain runs to its deadline,
    names the unfinished job, the block exits in time, and a later aclose() returns."""
    await _aclose_abandoned_by_its_caller(events)


def test_an_aclose_its_caller_gave_up_on_still_drains_on_trio(events: list[EventDict]) -> None:
    """On trio too, an abandoned aclose() neither hangs the block nor skips the drain."""
    anyio.run(functools.partial(_aclose_abandoned_by_its_caller, events), backend="trio")


# -- aclose() on a dispatcher never entered, twice, concurrently ----------------------------


async def test_aclose_on_a_dispatcher_never_entered_is_a_no_op(events: list[EventDict]) -> None:
    """aclose() before any entry, once or twice, does nothing but mark it closed."""
    dispatcher = aw.Dispatcher(journal=None)
    await dispatcher.aclose()
    await dispatcher.aclose()
    assert dispatcher.stats().state == "closed"
    assert dispatcher.unfinished(make_pipeline(), "1") == []
    assert dispatcher_events(events) == []


async def test_aclose_twice_on_an_open_dispatcher_drains_once(events: list[EventDict]) -> None:
    """A second aclose(), and the block's own, drain nothing more and log nothing more."""
    pipeline = make_pipeline()

    @pipeline.job
    async def quick(event: Ev) -> None:
        await anyio.lowlevel.checkpoint()

    async with aw.Dispatcher() as dispatcher:
        handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
        await dispatcher.aclose()
        assert dispatcher.stats().state == "closed"
        await dispatcher.aclose()
    assert (await handle.wait()).ok
    assert dispatcher_events(events) == ["dispatcher.draining", "dispatcher.closed"]


async def test_an_aclose_after_the_close_bound_on_a_closed_dispatcher_is_quiet(
    events: list[EventDict],
) -> None:
    """aclose() on a dispatcher that closed cleanly, made after drain_timeout + CLOSE_MARGIN_S
    (here the block's own exit), returns without a false dispatcher.close_abandoned."""
    async with aw.Dispatcher(drain_timeout=0) as dispatcher:
        await dispatcher.aclose()
        assert dispatcher.stats().state == "closed"
        # The window under test: the close bound has passed when the block exits.
        await anyio.sleep(CLOSE_MARGIN_S + 0.5)
    await dispatcher.aclose()
    assert dispatcher_events(events) == ["dispatcher.draining", "dispatcher.closed"]


async def test_concurrent_aclose_calls_both_wait_for_the_one_drain(
    events: list[EventDict],
) -> None:
    """Two tasks calling aclose() at once each return only once the dispatcher is closed,
    after one drain."""
    pipeline = make_pipeline()
    release = anyio.Event()

    @pipeline.job
    async def held(event: Ev) -> None:
        await release.wait()

    seen: list[str] = []

    async def close(dispatcher: aw.Dispatcher) -> None:
        await dispatcher.aclose()
        seen.append(dispatcher.stats().state.value)

    with anyio.fail_after(SAFETY):
        async with aw.Dispatcher(drain_timeout=30) as dispatcher:
            handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
            async with anyio.create_task_group() as tg:
                tg.start_soon(close, dispatcher)
                tg.start_soon(close, dispatcher)
                await wait_until(lambda: dispatcher.stats().state == "draining", "draining")
                await anyio.wait_all_tasks_blocked()
                assert seen == []  # both still wait: the job still runs
                release.set()
    assert seen == ["closed", "closed"]
    assert statuses(await handle.wait()) == {"held": ("succeeded", 1)}
    assert dispatcher_events(events) == ["dispatcher.draining", "dispatcher.closed"]


# -- __aenter__, then aclose(), and no __aexit__ --------------------------------------------


async def _enter_and_aclose_without_aexit(path: Path) -> None:
    pipeline = make_pipeline()
    ran: list[int] = []

    @pipeline.job(name="note")
    def note(event: Ev) -> None:
        ran.append(event.id)

    async def use(n: int) -> None:
        dispatcher = aw.Dispatcher(journal=path)
        await dispatcher.__aenter__()
        assert (await dispatcher.run(pipeline, Ev(id=n))).ok
        await dispatcher.aclose()
        assert dispatcher.stats().state == "closed"
        # and the task ends without __aexit__

    with anyio.fail_after(SAFETY):
        async with anyio.create_task_group() as tg:
            tg.start_soon(use, 1)
        await use(2)  # in this very task, which goes on using scopes afterwards
        with anyio.move_on_after(0.05) as scope:
            await anyio.sleep_forever()
        assert scope.cancelled_caught
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.lowlevel.checkpoint)
        # The journal was closed: its lock is free for the next dispatcher.
        async with aw.Dispatcher(journal=path) as again:
            assert (await again.run(pipeline, Ev(id=3))).ok
    assert ran == [1, 2, 3]
    assert aw.SqliteJournal(path).unfinished() == []


async def test_aenter_then_aclose_without_aexit_leaves_no_trace(tmp_path: Path) -> None:
    """__aenter__ then aclose() with no __aexit__, in a task that then ends or goes on: no
    error, scopes still work, and the journal is closed for the next dispatcher."""
    await _enter_and_aclose_without_aexit(tmp_path / "j.db")


def test_aenter_then_aclose_without_aexit_leaves_no_trace_on_trio(tmp_path: Path) -> None:
    """On trio, aclose() without __aexit__ does not corrupt the cancel scope stack."""
    anyio.run(_enter_and_aclose_without_aexit, tmp_path / "j.db", backend="trio")


# -- the deadline never starts queued or delayed work ---------------------------------------


@pytest.mark.parametrize("journaled", [False, True], ids=["no_journal", "journal"])
async def test_the_drain_deadline_never_starts_queued_completions(
    events: list[EventDict], tmp_path: Path, journaled: bool
) -> None:
    """At the deadline, completions queued behind max_active never start: their jobs report
    cancelled with 0 attempts, they are named never_started, and a journal keeps them for a
    restart that runs each exactly once."""
    gate = Gate()
    started: list[int] = []
    pipeline = make_pipeline()

    @pipeline.job(name="send")
    async def send(event: Ev, ctx: aw.JobContext) -> None:
        started.append(event.id)  # before any await: a start cut short still shows here
        await ctx.run_sync(gate.block)

    path = tmp_path / "j.db"
    journal = path if journaled else None
    try:
        with anyio.fail_after(SAFETY):
            async with aw.Dispatcher(max_active=1, drain_timeout=0.5, journal=journal) as d:
                handles = [await d.submit(pipeline, Ev(id=i)) for i in range(5)]
                await wait_until(lambda: gate.running == 1, "the first completion running")
                await d.aclose()
                reports = [await h.wait() for h in handles]
        assert started == [0]
        assert statuses(reports[0]) == {"send": ("cancelled", 1)}
        for report in reports[1:]:
            assert statuses(report) == {"send": ("cancelled", 0)}
        [unfinished] = named(events, "dispatcher.unfinished")
        assert unfinished["never_started"] == ["p:1", "p:2", "p:3", "p:4"]
        assert unfinished["jobs"] == [f"p:{i}:send" for i in range(5)]
        assert unfinished["kept_in_journal"] is journaled
        if not journaled:
            return
        entries = {e.key: e for e in aw.SqliteJournal(path).unfinished()}
        assert sorted(entries) == ["0", "1", "2", "3", "4"]
        for key in "1234":
            assert entries[key].state == "queued"  # never marked as started
            assert all(j.attempts == 0 for j in entries[key].jobs)
    finally:
        gate.open()

    runs: collections.Counter[int] = collections.Counter()
    restarted = make_pipeline()

    @restarted.job(name="send")
    def send_again(event: Ev) -> None:
        runs[event.id] += 1

    replayed: list[aw.Report] = []
    with anyio.fail_after(SAFETY):
        async with aw.Dispatcher(journal=path, pipelines=[restarted], on_report=replayed.append):
            await wait_until(lambda: len(replayed) == 5, "the kept completions to run")
    assert runs == {i: 1 for i in range(5)}
    assert all(r.replayed and r.ok for r in replayed)
    assert aw.SqliteJournal(path).unfinished() == []


@pytest.mark.parametrize("journaled", [False, True], ids=["no_journal", "journal"])
async def test_delayed_work_at_the_drain_is_not_started_and_is_kept_with_its_time(
    events: list[EventDict], tmp_path: Path, journaled: bool
) -> None:
    """submit(delay=60) then a drain: it never starts, is named never_started, and the journal
    keeps it with its due time, which a restart keeps too."""
    ran: list[int] = []
    pipeline = make_pipeline()

    @pipeline.job(name="later")
    def later(event: Ev) -> None:
        ran.append(event.id)

    path = tmp_path / "j.db"
    with anyio.fail_after(SAFETY):
        async with aw.Dispatcher(drain_timeout=0.5, journal=path if journaled else None) as d:
            before = datetime.now(UTC)
            handle = await d.submit(pipeline, Ev(id=1), delay=60)
            after = datetime.now(UTC)
            due = handle.due_at
        report = await handle.wait()
    assert ran == []
    assert due is not None
    assert before + timedelta(seconds=60) <= due <= after + timedelta(seconds=60)
    assert statuses(report) == {"later": ("cancelled", 0)}
    [unfinished] = named(events, "dispatcher.unfinished")
    assert unfinished["never_started"] == ["p:1"]
    assert unfinished["jobs"] == ["p:1:later"]
    assert unfinished["kept_in_journal"] is journaled
    if not journaled:
        return
    [entry] = aw.SqliteJournal(path).delayed()
    assert entry.key == "1"
    assert entry.due_at is not None
    assert abs(entry.due_at - due) <= timedelta(milliseconds=1)
    assert all(j.attempts == 0 for j in entry.jobs)

    # A restart takes it back as delayed work, not due yet: it neither runs nor moves.
    with anyio.fail_after(SAFETY):
        async with aw.Dispatcher(journal=path, pipelines=[pipeline], drain_timeout=0.5) as d:
            await wait_until(
                lambda: d.stats().delayed == 1 and not d.stats().replaying, "it is delayed again"
            )
            [again] = d.unfinished(pipeline, "1")
            assert again.due_at is not None
            assert abs(again.due_at - due) <= timedelta(milliseconds=1)
    assert ran == []
    [kept] = aw.SqliteJournal(path).delayed()
    assert kept.due_at == entry.due_at


# -- jobs that ignore cancellation, threads that hang ---------------------------------------


@pytest.mark.parametrize("how", ["shielded", "swallowed"])
async def test_a_job_ignoring_cancellation_cannot_hold_the_block_open(
    events: list[EventDict], how: str
) -> None:
    """A job that shields itself or swallows its cancellation: the block still exits by
    drain_timeout + CLOSE_MARGIN_S with dispatcher.close_abandoned naming it; once the job
    ends the dispatcher closes, and a later aclose() returns without a second complaint."""
    release = anyio.Event()
    started = anyio.Event()
    pipeline = make_pipeline()
    drain = 0.5

    @pipeline.job
    async def stubborn(event: Ev) -> None:
        started.set()
        give_up = anyio.current_time() + SAFETY  # bounded, so a broken test cannot hang
        if how == "shielded":
            with anyio.CancelScope(shield=True), anyio.move_on_after(SAFETY):
                await release.wait()
            return
        while not release.is_set() and anyio.current_time() < give_up:
            try:
                await release.wait()
            except anyio.get_cancelled_exc_class():
                pass  # the bug under test: cancellation swallowed, the job goes on

    with anyio.fail_after(SAFETY):
        start = anyio.current_time()
        async with aw.Dispatcher(drain_timeout=drain) as dispatcher:
            handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
            await started.wait()
        elapsed = anyio.current_time() - start
        [abandoned] = named(events, "dispatcher.close_abandoned")
        assert abandoned["completions"] == ["p:1"]
        assert named(events, "dispatcher.closed") == []
        release.set()
        await handle.wait()
        await wait_until(lambda: dispatcher.stats().state == "closed", "closed once it ended")
        await dispatcher.aclose()
    assert elapsed < drain + CLOSE_MARGIN_S + BOUND_SLACK, elapsed
    assert len(named(events, "dispatcher.close_abandoned")) == 1
    assert len(named(events, "dispatcher.closed")) == 1


@pytest.mark.parametrize("how", ["timed_out", "cancelled_at_deadline", "run_sync_in_async_job"])
async def test_threads_still_running_at_close_are_named(events: list[EventDict], how: str) -> None:
    """A blocking job's thread that outlives its timeout or the drain deadline is named in
    dispatcher.threads_abandoned ("p:key:job"), logged before dispatcher.closed."""
    gate = Gate()
    pipeline = make_pipeline()
    if how == "run_sync_in_async_job":

        @pipeline.job(name="hang")
        async def hang(event: Ev, ctx: aw.JobContext) -> None:
            await ctx.run_sync(gate.block)

    else:
        timeout = 0.5 if how == "timed_out" else None
        pipeline.job(name="hang", timeout=timeout)(gate.block)
    try:
        with anyio.fail_after(SAFETY):
            async with aw.Dispatcher(drain_timeout=0.5) as dispatcher:
                handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
                await wait_until(lambda: gate.running == 1, "the job's thread running")
                if how == "timed_out":
                    assert statuses(await handle.wait()) == {"hang": ("timed_out", 1)}
            report = await handle.wait()
        assert gate.running == 1  # the thread still blocks: it was abandoned, not joined
        [abandoned] = named(events, "dispatcher.threads_abandoned")
        assert abandoned["jobs"] == ["p:1:hang"]
        assert abandoned["threads"] == 1
        assert dispatcher_events(events)[-2:] == [
            "dispatcher.threads_abandoned",
            "dispatcher.closed",
        ]
        if how != "timed_out":
            assert statuses(report) == {"hang": ("cancelled", 1)}
    finally:
        gate.open()


# -- a process with a hung thread exits -----------------------------------------------------

COMMAND = str(Path(sys.executable).parent / "afterwork")
APPS = Path(__file__).parent / "apps"
SERVE_LABELS = [
    "conversation.completed:c1:extract_memories",
    "conversation.completed:c1:extract_trends",
    "conversation.completed:c1:save_action_items",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _poll(url: str, ready: Callable[[httpx.Response], bool], limit: float = 20.0) -> None:
    """Poll ``url`` until ``ready(response)``: the server is another process."""
    deadline = time.monotonic() + limit
    while True:
        try:
            if ready(httpx.get(url, timeout=1)):
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} was not ready within {limit} s")
        time.sleep(0.05)


def _json_lines(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a traceback, say: shown on failure through the raw text
    return events


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_exits_despite_a_thread_hung_past_its_timeout(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """`afterwork serve` stopped by SIGTERM or Ctrl-C while jobs' threads hang past their
    timeout exits within drain_timeout plus a margin, naming them in threads_abandoned."""
    port = _free_port()
    env = {
        **os.environ,
        "AFTERWORK_DRAIN_TIMEOUT": "1",
        "AFTERWORK_JOB_TIMEOUT_S": "1",
        "AFTERWORK_LLM_LATENCY_S": "[3600, 3600]",  # the model never answers: threads hang
    }
    server = subprocess.Popen(
        [COMMAND, "serve", "--port", str(port), "--db", str(tmp_path / "s.db")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    exited = False
    try:
        base = f"http://127.0.0.1:{port}"
        _poll(f"{base}/healthz", lambda r: r.status_code == 200)
        event = {"conversation": {"id": "c1", "uid": "u1", "created_at": "2026-03-14T09:30:00Z"}}
        accepted = httpx.post(f"{base}/v1/conversations/completed", json=event, timeout=5)
        assert accepted.status_code == 202
        # Each of the three model-calling jobs ran past its 1 s timeout, its thread still hung.
        _poll(f"{base}/v1/stats", lambda r: r.json()["threads_stuck"] >= 3)
        server.send_signal(stop)
        try:
            # drain_timeout 1 s, uvicorn's graceful shutdown 1 s, CLOSE_MARGIN_S: 20 s is slack.
            _, stderr = server.communicate(timeout=20)
            exited = True
        except subprocess.TimeoutExpired:
            pass
    finally:
        if server.poll() is None:
            server.kill()
        _, rest = server.communicate()
    if not exited:
        stderr = rest
    assert exited, f"afterwork serve did not exit within 20 s of {stop.name}:\n{stderr[-3000:]}"
    events = _json_lines(stderr)
    names = [e["event"] for e in events if str(e.get("event", "")).startswith("dispatcher.")]
    assert names[-2:] == ["dispatcher.threads_abandoned", "dispatcher.closed"], names
    [abandoned] = [e for e in events if e["event"] == "dispatcher.threads_abandoned"]
    assert sorted(set(abandoned["jobs"])) == SERVE_LABELS


def test_a_script_left_with_a_hung_thread_exits_by_the_documented_way() -> None:
    """A plain script whose job's thread hangs past its timeout learns it at close
    (dispatcher.threads_abandoned) and can exit as the event's hint says (os._exit),
    instead of hanging at interpreter exit on a non-daemon worker thread."""
    script = subprocess.Popen(
        [sys.executable, str(APPS / "hung_thread.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    exited = False
    try:
        try:
            stdout, stderr = script.communicate(timeout=25)
            exited = True
        except subprocess.TimeoutExpired:
            pass
    finally:
        if script.poll() is None:
            script.kill()
        rest_out, rest_err = script.communicate()
    if not exited:
        stdout, stderr = rest_out, rest_err
    assert exited, (
        "the script hung at interpreter exit (its worker thread is not a daemon):\n"
        f"{stdout}\n{stderr[-3000:]}"
    )
    assert stdout.splitlines() == [
        "report: hang timed_out",
        "threads_abandoned: p:1:hang",
        "exiting with os._exit",
    ], stderr[-3000:]
    assert script.returncode == 0, stderr[-3000:]
