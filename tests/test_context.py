"""G8 context: what the submitter bound with ``structlog.contextvars`` (a request id) is what its
jobs see, in threads and children too, and what their log events carry. This holds for a
completion that waited in the ``max_active`` queue, for delayed submissions, for parked
follow-ups and, with a journal, for a completion replayed after a restart.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.lowlevel
import pytest
import structlog
from structlog.contextvars import bound_contextvars, get_contextvars
from structlog.typing import EventDict

import afterwork as aw
from afterwork.testing import Gate, wait_until

from .conftest import named
from .helpers import Ev, make_pipeline

T = TypeVar("T")

BACKENDS = ["asyncio", "trio"]

#: A plain context variable, set beside the structlog binding: G8 covers both.
REQUEST: ContextVar[str | None] = ContextVar("request", default=None)

#: What each job and child saw: (event id, job name, attempt) -> (the request id bound for
#: structlog there, the plain context variable there).
Seen = dict[tuple[int, str, int], tuple[object, object]]


def request_id() -> tuple[object, object]:
    return get_contextvars().get("request_id"), REQUEST.get()


@contextlib.contextmanager
def submitting(request: str) -> Iterator[None]:
    """Bind ``request`` as a submitter would: for structlog, and in a plain ContextVar."""
    token = REQUEST.set(request)
    try:
        with bound_contextvars(request_id=request):
            yield
    finally:
        REQUEST.reset(token)


def run_on(backend: str, main: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(main, backend=backend)


def note(seen: Seen, event: Ev, ctx: aw.JobContext) -> None:
    """Record the request id this job (or child) sees, and log an info event from it."""
    seen[(event.id, ctx.job, ctx.attempt)] = request_id()
    ctx.log.info("job.saw")


def sync_child(event: Ev, seen: Seen, ctx: aw.JobContext) -> None:
    note(seen, event, ctx)


async def async_child(event: Ev, seen: Seen, ctx: aw.JobContext) -> None:
    await anyio.lowlevel.checkpoint()
    note(seen, event, ctx)


def observing_pipeline(seen: Seen, name: str = "ctx") -> aw.Pipeline[Ev]:
    """Jobs on the loop and in threads, children spawned from both, a thread borrowed with
    ctx.run_sync, and a failing job: each records the request id it sees."""
    pipeline = make_pipeline(name)

    @pipeline.job
    async def on_loop(event: Ev, ctx: aw.JobContext) -> None:
        note(seen, event, ctx)
        seen[(event.id, "on_loop:run_sync", ctx.attempt)] = await ctx.run_sync(request_id)
        ctx.spawn(sync_child, event, seen, name="sync_child")
        ctx.spawn(async_child, event, seen, name="async_child")

    @pipeline.job
    def in_thread(event: Ev, ctx: aw.JobContext) -> None:
        note(seen, event, ctx)
        # Spawned from the worker thread: the children still belong to the submitter.
        ctx.spawn(sync_child, event, seen, name="sync_child")
        ctx.spawn(async_child, event, seen, name="async_child")

    @pipeline.job
    def fails(event: Ev) -> None:
        raise ValueError(f"failing for {event.id}")

    return pipeline


#: Every name ``observing_pipeline`` records under, per event, on the first attempt.
OBSERVED = sorted(
    [
        "on_loop",
        "on_loop:run_sync",
        "on_loop/sync_child",
        "on_loop/async_child",
        "in_thread",
        "in_thread/sync_child",
        "in_thread/async_child",
    ]
)
#: The names that log ``job.saw`` (the borrowed thread does not log).
LOGGING = [name for name in OBSERVED if name != "on_loop:run_sync"]


def assert_each_saw_its_own(seen: Seen, events: list[EventDict], ids: list[int]) -> None:
    """Every job and child of event ``n`` saw ``req-n``, and its log events carry it."""
    for n in ids:
        mine = {job: rid for (i, job, _), rid in seen.items() if i == n}
        assert mine == dict.fromkeys(OBSERVED, (f"req-{n}", f"req-{n}")), n
        logged = {
            e["job"]: e.get("request_id") for e in named(events, "job.saw") if e["key"] == str(n)
        }
        assert logged == dict.fromkeys(LOGGING, f"req-{n}"), n
        (failure,) = [e for e in named(events, "job.failed") if e["key"] == str(n)]
        assert failure.get("request_id") == f"req-{n}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_queued_completions_run_in_their_submitters_context(
    backend: str, events: list[EventDict]
) -> None:
    """With max_active=1, completions 2-4 queued behind a blocked completion 1 each see their
    own request_id in async jobs, sync jobs, ctx.run_sync threads and children (spawned from
    the loop and from a thread), and in their log events, never request 1's."""
    seen: Seen = {}
    pipeline = observing_pipeline(seen)

    async def main() -> list[aw.Report]:
        release = anyio.Event()

        @pipeline.job
        async def holds(event: Ev) -> None:
            if event.id == 1:
                await release.wait()

        async with aw.Dispatcher(max_active=1) as dispatcher:
            handles = []
            for n in (1, 2, 3, 4):
                with submitting(f"req-{n}"):
                    if n == 4:  # the awaiting submit captures the context as well
                        handles.append(await dispatcher.submit(pipeline, Ev(id=n)))
                    else:
                        handles.append(dispatcher.submit_nowait(pipeline, Ev(id=n)))
            await wait_until(lambda: dispatcher.stats().queued == 3, "2, 3 and 4 to queue")
            await wait_until(lambda: len(named(events, "job.failed")) == 1, "1 to run")
            assert {i for i, _, _ in seen} == {1}, "only completion 1 runs"
            # The task that frees the place has a request id of its own: it must not leak.
            with submitting("req-releaser"):
                release.set()
            return [await handle.wait() for handle in handles]

    reports = run_on(backend, main)
    assert [r.key for r in reports] == ["1", "2", "3", "4"]
    assert_each_saw_its_own(seen, events, [1, 2, 3, 4])


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_a_job_binds_stays_in_that_job(backend: str, events: list[EventDict]) -> None:
    """A job that binds structlog context, on the loop or in a pooled worker thread, leaks it
    neither to its sibling, nor to the completion queued next, nor to a later job run on the
    same thread, nor back to the submitter."""
    seen: dict[tuple[int, str], dict[str, object]] = {}
    pipeline = make_pipeline("leak")

    @pipeline.job
    async def binds_on_loop(event: Ev) -> None:
        structlog.contextvars.bind_contextvars(leak=f"loop-{event.id}")
        seen[(event.id, "binds_on_loop")] = get_contextvars()

    @pipeline.job
    def binds_in_thread(event: Ev) -> None:
        seen[(event.id, "binds_in_thread")] = get_contextvars()
        structlog.contextvars.bind_contextvars(leak=f"thread-{event.id}")
        seen[(event.id, "binds_in_thread:after")] = get_contextvars()

    @pipeline.job
    async def sibling(event: Ev) -> None:
        await wait_until(
            lambda: {(event.id, "binds_on_loop"), (event.id, "binds_in_thread:after")} <= set(seen),
            "the binding jobs to bind",
        )
        seen[(event.id, "sibling")] = get_contextvars()

    async def main() -> dict[str, object]:
        # One thread and one active completion: each thread job reuses the thread before it.
        async with aw.Dispatcher(max_active=1, max_threads=1) as dispatcher:
            handles = []
            for n in (1, 2, 3):
                with submitting(f"req-{n}"):
                    handles.append(dispatcher.submit_nowait(pipeline, Ev(id=n)))
            for handle in handles:
                assert (await handle.wait()).ok
            return get_contextvars()

    assert run_on(backend, main) == {}
    for n in (1, 2, 3):
        own = {"request_id": f"req-{n}"}
        assert seen[(n, "binds_on_loop")] == {**own, "leak": f"loop-{n}"}
        assert seen[(n, "binds_in_thread:after")] == {**own, "leak": f"thread-{n}"}
        assert seen[(n, "binds_in_thread")] == own, n
        assert seen[(n, "sibling")] == own, n


@pytest.mark.parametrize("backend", BACKENDS)
def test_delayed_submissions_run_in_their_submitters_context(
    backend: str, events: list[EventDict]
) -> None:
    """Delayed submissions, started later by the dispatcher's own task (and queued behind
    max_active), run in the context each submitter bound, not in the dispatcher's or in
    whatever the test binds meanwhile."""
    seen: Seen = {}
    pipeline = observing_pipeline(seen, "delayed")

    async def main() -> None:
        async with aw.Dispatcher(max_active=1) as dispatcher:
            handles = []
            for n in (1, 2, 3):
                with submitting(f"req-{n}"):
                    if n == 3:
                        handles.append(await dispatcher.submit(pipeline, Ev(id=n), delay=0.2))
                    else:
                        handles.append(dispatcher.submit_nowait(pipeline, Ev(id=n), delay=0.2))
            with submitting("req-waiter"):
                for handle in handles:
                    await handle.wait()

    run_on(backend, main)
    assert_each_saw_its_own(seen, events, [1, 2, 3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_parked_follow_ups_run_in_their_submitters_context(
    backend: str, events: list[EventDict]
) -> None:
    """A job (or child) parked by RetryLater runs again in a follow-up completion started by
    the dispatcher; that attempt still sees the submitter's request_id, and logs it."""
    seen: Seen = {}
    pipeline = make_pipeline("park")

    @pipeline.job(retries=1)
    async def throttled(event: Ev, ctx: aw.JobContext) -> None:
        note(seen, event, ctx)
        if ctx.attempt == 1:
            raise aw.RetryLater(0.05, "429")

    @pipeline.job(retries=1)
    def throttled_in_thread(event: Ev, ctx: aw.JobContext) -> None:
        note(seen, event, ctx)
        if ctx.attempt == 1:
            raise aw.RetryLater(0.05, "429")

    def throttled_child(event: Ev, ctx: aw.JobContext) -> None:
        note(seen, event, ctx)
        if ctx.attempt == 1:
            raise aw.RetryLater(0.05, "429")

    @pipeline.job(retries=1)
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        ctx.spawn(throttled_child, event, name="child")

    reports: list[aw.Report] = []

    async def main() -> aw.Stats:
        async with aw.Dispatcher(park_after=0, on_report=reports.append) as dispatcher:
            for n in (1, 2, 3):
                with submitting(f"req-{n}"):
                    await dispatcher.submit(pipeline, Ev(id=n))
            with submitting("req-waiter"):
                await wait_until(
                    lambda: dispatcher.stats().completed == 3 * 4, "3 completions, 9 follow-ups"
                )
        return dispatcher.stats()

    stats = run_on(backend, main)
    assert stats.deferred == 9
    assert sum(r.followup for r in reports) == 9
    assert all(r.ok for r in reports if r.followup)
    for n in (1, 2, 3):
        for job in ("throttled", "throttled_in_thread", "parent/child"):
            assert seen[(n, job, 1)] == seen[(n, job, 2)] == (f"req-{n}", f"req-{n}"), (n, job)
        second = [e for e in named(events, "job.saw") if e["key"] == str(n) and e["attempt"] == 2]
        assert sorted(e["job"] for e in second) == [
            "parent/child",
            "throttled",
            "throttled_in_thread",
        ]
        assert {e.get("request_id") for e in second} == {f"req-{n}"}


async def test_a_replayed_completion_runs_in_the_context_bound_at_admission(
    tmp_path: Path, events: list[EventDict]
) -> None:
    """With a journal, the structlog context bound at admission is kept: after a restart the
    replayed jobs, their threads and children see the same request_id (not the context of
    whoever opens the dispatcher), and their log events carry it."""
    path = tmp_path / "journal.db"
    seen: Seen = {}
    restarted = False
    gate = Gate()
    pipeline = make_pipeline("replay")

    @pipeline.job
    async def hangs(event: Ev, ctx: aw.JobContext) -> None:
        if not restarted:
            await anyio.sleep_forever()
        note(seen, event, ctx)
        seen[(event.id, "hangs:run_sync", ctx.attempt)] = await ctx.run_sync(request_id)
        ctx.spawn(sync_child, event, seen, name="sync_child")
        ctx.spawn(async_child, event, seen, name="async_child")

    @pipeline.job
    def hangs_in_thread(event: Ev, ctx: aw.JobContext) -> None:
        if not restarted:
            gate.block()
            return  # the first run's thread, abandoned at the drain deadline
        note(seen, event, ctx)

    async with aw.Dispatcher(drain_timeout=0, journal=path) as dispatcher:
        with bound_contextvars(request_id="req-7", user="u-7"):
            await dispatcher.submit(pipeline, Ev(id=7))
        await wait_until(lambda: gate.running == 1, "the jobs to hang")
    gate.open()  # the first run's thread may return now; its job was cancelled
    (entry,) = aw.SqliteJournal(path).unfinished()
    assert entry.context == {"request_id": "req-7", "user": "u-7"}
    assert seen == {}

    restarted = True
    reports: list[aw.Report] = []
    # Whoever opens the dispatcher has a context of its own: the replay must not take it.
    with bound_contextvars(request_id="req-restart"):
        async with aw.Dispatcher(
            journal=path, pipelines=[pipeline], on_report=reports.append
        ) as dispatcher:
            await wait_until(lambda: bool(reports), "the replayed report")
    (report,) = reports
    assert report.replayed
    assert report.ok
    # The journal keeps the structlog context (G8); a plain ContextVar is not carried over.
    assert {key: bound for key, (bound, _) in seen.items()} == {
        (7, "hangs", 1): "req-7",
        (7, "hangs:run_sync", 1): "req-7",
        (7, "hangs/sync_child", 1): "req-7",
        (7, "hangs/async_child", 1): "req-7",
        (7, "hangs_in_thread", 1): "req-7",
    }
    logged = [(e["job"], e.get("request_id"), e.get("user")) for e in named(events, "job.saw")]
    assert sorted(logged) == [
        ("hangs", "req-7", "u-7"),
        ("hangs/async_child", "req-7", "u-7"),
        ("hangs/sync_child", "req-7", "u-7"),
        ("hangs_in_thread", "req-7", "u-7"),
    ]
    assert aw.SqliteJournal(path).unfinished() == []
    assert structlog.contextvars.get_contextvars() == {}


async def test_context_values_the_journal_cannot_encode_do_not_refuse_the_work(
    tmp_path: Path, events: list[EventDict]
) -> None:
    """With a journal, a bound value that is not JSON (a UUID, an object) or holds a lone
    surrogate neither refuses the submit nor fails a journal write, and the job still sees the
    very objects the submitter bound."""
    request = uuid.UUID("12345678-1234-5678-1234-567812345678")
    session = object()
    header = b"caf\xe9".decode("utf-8", "surrogateescape")
    seen: list[dict[str, object]] = []
    pipeline = make_pipeline("odd_context")

    @pipeline.job
    async def looks(event: Ev, ctx: aw.JobContext) -> None:
        seen.append(get_contextvars())
        ctx.log.info("job.saw")

    async with aw.Dispatcher(journal=tmp_path / "journal.db") as dispatcher:
        with bound_contextvars(request_id=request, session=session, header=header):
            handle = await dispatcher.submit(pipeline, Ev(id=1))
        report = await handle.wait()
    assert report.ok
    (context,) = seen
    assert context["request_id"] is request
    assert context["session"] is session
    assert context["header"] == header
    (saw,) = named(events, "job.saw")
    assert saw["request_id"] is request
    assert not named(events, "journal.write_failed")
    assert not named(events, "journal.failed")
    assert aw.SqliteJournal(tmp_path / "journal.db").unfinished() == []
