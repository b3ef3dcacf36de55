"""G11 delayed work and parked retries: delay= holds no pending place, max_delayed bounds it,
due work waits for room (G4), long retry waits park as follow-ups, and a journal keeps both."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import anyio
import pytest
import structlog
from structlog.typing import EventDict

import afterwork as aw
from afterwork.testing import Gate, wait_until

from .conftest import named
from .helpers import Ev, make_pipeline

#: Slack for comparing a wall-clock run time with a due time stored in the journal.
EARLY = timedelta(seconds=0.05)

How = Literal["submit", "submit_nowait"]


async def admit(
    dispatcher: aw.Dispatcher, how: How, pipeline: aw.Pipeline[Ev], event: Ev, delay: float
) -> aw.Handle:
    if how == "submit":
        return await dispatcher.submit(pipeline, event, delay=delay)
    return dispatcher.submit_nowait(pipeline, event, delay=delay)


def now() -> datetime:
    return datetime.now(UTC)


# -- delayed submission ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["submit", "submit_nowait"])
async def test_delayed_work_is_admitted_at_once_and_runs_when_due(how: How) -> None:
    """delay= admits at once; until due it counts as delayed, not pending, and is listed by
    unfinished() with its due_at; then it runs, not before."""
    pipeline = make_pipeline()
    ran: list[tuple[datetime, aw.Stats]] = []
    dispatcher = aw.Dispatcher()

    @pipeline.job
    async def later(event: Ev) -> None:
        ran.append((now(), dispatcher.stats()))

    async with dispatcher:
        before = now()
        handle = await admit(dispatcher, how, pipeline, Ev(id=1), 1.0)
        after = now()
        waiting = dispatcher.stats()
        listed = dispatcher.unfinished(pipeline, "1")
        not_yet = list(ran)
        report = await handle.wait()
        final = dispatcher.stats()
        left = dispatcher.unfinished(pipeline, "1")
    assert (waiting.delayed, waiting.pending, waiting.queued, waiting.admitted) == (1, 0, 0, 1)
    assert not_yet == []
    due = handle.due_at
    assert due is not None
    assert before + timedelta(seconds=1) <= due <= after + timedelta(seconds=1)
    [listed_handle] = listed
    assert (listed_handle.key, listed_handle.due_at, listed_handle.followup) == ("1", due, False)
    assert report.ok
    [(ran_at, during)] = ran
    assert ran_at >= due - EARLY
    assert (during.delayed, during.pending) == (0, 1)
    assert (final.delayed, final.pending, final.completed) == (0, 0, 1)
    assert left == []


@pytest.mark.parametrize("delay", [-1, math.nan, math.inf, True, "5"])
async def test_a_bad_delay_is_refused_before_anything_is_taken(delay: object) -> None:
    """delay must be a finite number of seconds >= 0; a refusal admits nothing."""
    pipeline = make_pipeline()
    pipeline.job(name="j")(lambda e: None)
    async with aw.Dispatcher(max_delayed=1) as dispatcher:
        with pytest.raises(aw.InvalidOption) as nowait:
            dispatcher.submit_nowait(pipeline, Ev(id=1), delay=delay)  # type: ignore[arg-type]
        with pytest.raises(aw.InvalidOption) as waited:
            await dispatcher.submit(pipeline, Ev(id=1), delay=delay)  # type: ignore[arg-type]
        stats = dispatcher.stats()
        # The one slot is still free.
        handle = dispatcher.submit_nowait(pipeline, Ev(id=2), delay=0)
        report = await handle.wait()
    message = (
        f"submit delay must be a finite number of seconds >= 0, got {delay!r}; "
        "e.g. dispatcher.submit(pipeline, event, delay=30)"
    )
    assert str(nowait.value) == message
    assert str(waited.value) == message
    assert (stats.delayed, stats.pending, stats.admitted) == (0, 0, 0)
    assert report.ok


@pytest.mark.parametrize("delay", [1e12, 1e20, 1.7e308])
async def test_a_delay_past_any_date_is_refused_as_an_invalid_option(delay: float) -> None:
    """A finite delay too far to schedule is refused with InvalidOption naming the option and
    the value (not a raw OverflowError), and nothing is admitted."""
    pipeline = make_pipeline()
    pipeline.job(name="j")(lambda e: None)
    async with aw.Dispatcher() as dispatcher:
        with pytest.raises(aw.InvalidOption) as nowait:
            dispatcher.submit_nowait(pipeline, Ev(id=1), delay=delay)
        with pytest.raises(aw.InvalidOption) as waited:
            await dispatcher.submit(pipeline, Ev(id=1), delay=delay)
        stats = dispatcher.stats()
    for info in (nowait, waited):
        assert str(info.value).startswith("submit delay must be ")
        assert repr(delay) in str(info.value)
        assert "e.g. dispatcher.submit(pipeline, event, delay=" in str(info.value)
    assert (stats.delayed, stats.pending, stats.admitted) == (0, 0, 0)


async def test_delayed_work_counts_against_max_delayed_not_max_pending() -> None:
    """With max_pending full, delayed work is still admitted, up to max_delayed; past it,
    submit_nowait and submit(timeout=0) raise Overloaded naming max_delayed."""
    gate = Gate()
    pipeline = make_pipeline()
    pipeline.job(name="work")(lambda e: gate.block() if e.id == 0 else None)
    async with aw.Dispatcher(max_pending=1, max_delayed=2) as dispatcher:
        holder = dispatcher.submit_nowait(pipeline, Ev(id=0))
        await wait_until(lambda: gate.running == 1, "the holder runs")
        with pytest.raises(aw.Overloaded) as pending_full:
            dispatcher.submit_nowait(pipeline, Ev(id=9))
        first = dispatcher.submit_nowait(pipeline, Ev(id=1), delay=60)
        second = await dispatcher.submit(pipeline, Ev(id=2), delay=60, timeout=0)
        full = dispatcher.stats()
        with pytest.raises(aw.Overloaded) as nowait:
            dispatcher.submit_nowait(pipeline, Ev(id=3), delay=60)
        with pytest.raises(aw.Overloaded) as waited:
            await dispatcher.submit(pipeline, Ev(id=4), delay=60, timeout=0)
        after = dispatcher.stats()
        gate.open()
        assert (await holder.wait()).ok
    assert str(pending_full.value) == (
        "cannot admit p:9: 1 completions are pending, max_pending=1; retry later, or use "
        "'await dispatcher.submit(...)' to wait for room"
    )
    assert (full.pending, full.delayed, full.max_delayed, full.admitted) == (1, 2, 2, 3)
    assert str(nowait.value) == (
        "cannot admit p:3: 2 delayed completions are waiting, max_delayed=2; retry later, or "
        "use 'await dispatcher.submit(...)' to wait for room"
    )
    assert (nowait.value.pending, nowait.value.max_pending) == (2, 2)
    assert str(waited.value) == "cannot admit p:4: no room within 0 s (2 delayed, max_delayed=2)"
    assert (after.delayed, after.admitted) == (2, 3)
    # At close, delayed work that was not due never started.
    for handle in (first, second):
        report = await handle.wait()
        assert [(o.status, o.attempts) for o in report.outcomes] == [("cancelled", 0)]


async def test_a_delayed_submit_waits_for_a_slot_as_one_comes_due() -> None:
    """submit(delay=..., timeout=...) with max_delayed full waits until a slot frees (the
    earlier delayed work came due), then admits."""
    pipeline = make_pipeline()
    ran: list[int] = []
    pipeline.job(name="j")(lambda e: ran.append(e.id))
    async with aw.Dispatcher(max_delayed=1) as dispatcher:
        early = dispatcher.submit_nowait(pipeline, Ev(id=1), delay=0.5)
        late = await dispatcher.submit(pipeline, Ev(id=2), delay=0.5, timeout=20)
        admitted_at = now()
        delayed_then = dispatcher.stats().delayed
        reports = [await early.wait(), await late.wait()]
    assert early.due_at is not None
    assert admitted_at >= early.due_at - EARLY  # the slot came free only as early came due
    assert delayed_then == 1  # late alone: early had left the delayed work
    assert ran == [1, 2]
    assert all(r.ok for r in reports)


async def test_due_work_waits_for_room_like_any_submit() -> None:
    """max_pending=1 held by a blocking completion: delayed work that comes due does not start
    (nor exceed max_pending) until the room frees."""
    gate = Gate()
    pipeline = make_pipeline()
    ran: list[tuple[int, aw.Stats]] = []
    dispatcher = aw.Dispatcher(max_pending=1)

    def work(event: Ev) -> None:
        ran.append((event.id, dispatcher.stats()))
        if event.id == 0:
            gate.block()

    pipeline.job(name="work")(work)
    async with dispatcher:
        holder = dispatcher.submit_nowait(pipeline, Ev(id=0))
        await wait_until(lambda: gate.running == 1, "the holder runs")
        delayed = dispatcher.submit_nowait(pipeline, Ev(id=1), delay=0.2)
        due = delayed.due_at
        assert due is not None
        await wait_until(lambda: now() >= due, "the delayed work is due")
        # The window under test: due, it must keep waiting for room while the holder runs.
        await anyio.sleep(1.0)
        held = dispatcher.stats()
        ran_while_held = [i for i, _ in ran]
        gate.open()
        reports = [await holder.wait(), await delayed.wait()]
    assert ran_while_held == [0]
    assert held.pending == 1
    assert [i for i, _ in ran] == [0, 1]
    [(_, when_run)] = [(i, s) for i, s in ran if i == 1]
    assert when_run.pending == 1  # itself: the holder had given back its room
    assert all(r.ok for r in reports)


# -- parking -------------------------------------------------------------------------------


async def test_a_long_retry_wait_parks_the_job(events: list[EventDict]) -> None:
    """RetryLater(60) with park_after=0.5: the completion finishes now with the job deferred
    (retry_at ~60 s ahead), its pending place is free, and a follow-up waits as delayed."""
    pipeline = make_pipeline()

    @pipeline.job(retries=3)
    async def throttled(event: Ev) -> None:
        if event.id == 1:
            raise aw.RetryLater(60)

    pipeline.job(name="quick")(lambda e: None)
    async with aw.Dispatcher(park_after=0.5, max_pending=1) as dispatcher:
        before = now()
        with anyio.fail_after(30):  # waiting the 60 s in place would be the bug
            report = await dispatcher.run(pipeline, Ev(id=1))
        after = now()
        stats = dispatcher.stats()
        [followup] = dispatcher.unfinished(pipeline, "1")
        # Its place is free: other work is admitted while the follow-up waits.
        other = dispatcher.submit_nowait(pipeline, Ev(id=2))
        other_report = await other.wait()
    outcome = report.outcome("throttled")
    assert (outcome.status, outcome.attempts, outcome.error) == (
        "deferred",
        1,
        "RetryLater: retry in 60 s",
    )
    assert outcome.retry_at is not None
    assert before + timedelta(seconds=60) <= outcome.retry_at <= after + timedelta(seconds=60)
    assert report.outcome("quick").status == "succeeded"
    assert report.ok is False
    assert (report.followup, report.replayed) == (False, False)
    assert (stats.pending, stats.delayed, stats.deferred, stats.retried) == (0, 1, 1, 0)
    assert (followup.followup, followup.due_at) == (True, outcome.retry_at)
    assert other_report.ok
    [deferred] = named(events, "job.deferred")
    assert (deferred["job"], deferred["key"], deferred["attempt"], deferred["delay_s"]) == (
        "throttled",
        "1",
        1,
        60.0,
    )
    assert deferred["error"] == "RetryLater: retry in 60 s"
    assert deferred["retry_at"] == outcome.retry_at.isoformat()
    assert named(events, "job.retrying") == []


async def test_a_parked_job_continues_as_a_followup_with_its_attempts_and_key() -> None:
    """RetryLater(1.0) with park_after=0.5: the follow-up runs the job again (attempt 2, same
    idempotency key and log context, not before retry_at) and reports with followup=True;
    meanwhile the pending place was free for other work."""
    pipeline = make_pipeline()
    seen: list[tuple[int, int, str, datetime]] = []
    requests: list[object] = []
    reports: list[aw.Report] = []

    @pipeline.job(retries=3)
    async def throttled(event: Ev, ctx: aw.JobContext) -> None:
        seen.append((event.id, ctx.attempt, ctx.idempotency_key, now()))
        if event.id == 1:
            requests.append(structlog.contextvars.get_contextvars().get("request_id"))
        if event.id == 1 and ctx.attempt == 1:
            raise aw.RetryLater(1.0)

    async with aw.Dispatcher(park_after=0.5, max_pending=1, on_report=reports.append) as d:
        structlog.contextvars.bind_contextvars(request_id="req-1")
        first = await d.run(pipeline, Ev(id=1))
        structlog.contextvars.bind_contextvars(request_id="req-2")
        # While the follow-up waits, its place is free: this one is admitted and runs.
        other = d.submit_nowait(pipeline, Ev(id=2))
        waiting = d.stats()
        attempts_so_far = len(seen)
        assert (await other.wait()).ok
        await wait_until(lambda: len(reports) == 3, "the follow-up's report")
        final = d.stats()
    assert attempts_so_far == 1
    assert (waiting.delayed, waiting.pending) == (1, 1)
    parked = first.outcome("throttled")
    assert (parked.status, parked.attempts) == ("deferred", 1)
    assert parked.retry_at is not None
    followup = reports[2]
    assert (followup.key, followup.followup, followup.ok) == ("1", True, True)
    assert [(o.job, o.status, o.attempts) for o in followup.outcomes] == [
        ("throttled", "succeeded", 2)
    ]
    runs_of_1 = [s for s in seen if s[0] == 1]
    assert [(attempt, key) for _, attempt, key, _ in runs_of_1] == [
        (1, "p:1:throttled"),
        (2, "p:1:throttled"),
    ]
    assert runs_of_1[1][3] >= parked.retry_at - EARLY
    assert requests == ["req-1", "req-1"]  # the follow-up runs in the submitter's context (G8)
    assert (final.delayed, final.pending, final.deferred, final.succeeded) == (0, 0, 1, 2)


async def test_a_followup_keeps_counting_attempts_against_retries() -> None:
    """A parked job's attempts carry over: with retries=1, a follow-up that is throttled again
    fails at attempt 2 instead of parking again."""
    pipeline = make_pipeline()
    reports: list[aw.Report] = []

    @pipeline.job(retries=1)
    async def always_throttled(event: Ev) -> None:
        raise aw.RetryLater(1.0)

    async with aw.Dispatcher(park_after=0.5, on_report=reports.append) as dispatcher:
        await dispatcher.run(pipeline, Ev(id=1))
        await wait_until(lambda: len(reports) == 2, "the follow-up's report")
        stats = dispatcher.stats()
    first, followup = reports
    assert [(o.status, o.attempts) for o in first.outcomes] == [("deferred", 1)]
    assert followup.followup is True
    assert [(o.status, o.attempts, o.error) for o in followup.outcomes] == [
        ("failed", 2, "RetryLater: retry in 1 s")
    ]
    assert (stats.delayed, stats.deferred, stats.failed) == (0, 1, 1)


async def test_a_long_backoff_parks_too() -> None:
    """A backoff wait longer than park_after parks the job like a RetryLater does."""
    pipeline = make_pipeline()
    reports: list[aw.Report] = []

    @pipeline.job(retries=1, backoff=2.0)  # the first wait is 1 to 2 s
    async def flaky(event: Ev, ctx: aw.JobContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("down")

    async with aw.Dispatcher(park_after=0.5, on_report=reports.append) as dispatcher:
        await dispatcher.run(pipeline, Ev(id=1))
        await wait_until(lambda: len(reports) == 2, "the follow-up's report")
    first, followup = reports
    [parked] = first.outcomes
    assert (parked.status, parked.attempts) == ("deferred", 1)
    assert parked.error == "ConnectionError: down"
    assert [(o.status, o.attempts) for o in followup.outcomes] == [("succeeded", 2)]


async def test_a_wait_up_to_park_after_retries_in_place(events: list[EventDict]) -> None:
    """RetryLater(0.5) with park_after=0.5 is not parked: it waits in place, one report."""
    pipeline = make_pipeline()
    reports: list[aw.Report] = []

    @pipeline.job(retries=1)
    async def throttled(event: Ev, ctx: aw.JobContext) -> None:
        if ctx.attempt == 1:
            raise aw.RetryLater(0.5)

    async with aw.Dispatcher(park_after=0.5, on_report=reports.append) as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
        stats = dispatcher.stats()
    assert [(o.status, o.attempts) for o in report.outcomes] == [("succeeded", 2)]
    assert reports == [report]
    assert (stats.deferred, stats.retried, stats.delayed) == (0, 1, 0)
    assert named(events, "job.deferred") == []
    [retrying] = named(events, "job.retrying")
    assert retrying["delay_s"] == 0.5


async def test_a_parked_child_reruns_its_parent_but_not_its_finished_siblings() -> None:
    """A child parked by RetryLater(1): the follow-up runs the parent again; its succeeded
    sibling is not rerun; the parked child runs with its attempts continuing."""
    pipeline = make_pipeline("fan")
    runs: list[tuple[str, int]] = []
    reports: list[aw.Report] = []

    async def good(ctx: aw.JobContext) -> None:
        runs.append(("good", ctx.attempt))

    async def parked(ctx: aw.JobContext) -> None:
        runs.append(("parked", ctx.attempt))
        if ctx.attempt == 1:
            raise aw.RetryLater(1)

    @pipeline.job(retries=3)
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        runs.append(("parent", ctx.attempt))
        ctx.spawn(good, name="good")
        ctx.spawn(parked, name="parked")

    async with aw.Dispatcher(park_after=0.5, on_report=reports.append) as dispatcher:
        first = await dispatcher.run(pipeline, Ev(id=1))
        mid = dispatcher.stats()
        await wait_until(lambda: len(reports) == 2, "the follow-up's report")
    status = {o.job: (o.status, o.attempts) for o in first.outcomes}
    assert status == {
        "parent": ("succeeded", 1),
        "parent/good": ("succeeded", 1),
        "parent/parked": ("deferred", 1),
    }
    assert first.ok is False
    assert (mid.pending, mid.delayed) == (0, 1)
    followup = reports[1]
    assert followup.followup is True
    assert followup.ok is True
    assert followup.outcome("parent/parked").model_dump(include={"status", "attempts"}) == {
        "status": "succeeded",
        "attempts": 2,
    }
    assert sorted(runs) == [("good", 1), ("parent", 1), ("parent", 1), ("parked", 1), ("parked", 2)]


async def test_a_parents_retry_leaves_its_parked_child_to_the_followup(
    events: list[EventDict],
) -> None:
    """A parked child is waiting, not failed: the parent's retry in place does not run it
    again before its time (with its count reset), nor take a second max_delayed slot."""
    pipeline = make_pipeline("fan")
    runs: list[tuple[str, int]] = []
    reports: list[aw.Report] = []

    async def child(ctx: aw.JobContext) -> None:
        runs.append(("child", ctx.attempt))
        if ctx.attempt == 1:
            raise aw.RetryLater(1.0)

    @pipeline.job(retries=1, backoff=0)
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        runs.append(("parent", ctx.attempt))
        ctx.spawn(child, name="c")
        if runs.count(("parent", 1)) == 1 and ctx.attempt == 1:
            await wait_until(lambda: bool(named(events, "job.deferred")), "the child parked")
            raise ConnectionError("the parent's first attempt fails after its child parked")

    async with aw.Dispatcher(park_after=0.5, on_report=reports.append) as dispatcher:
        first = await dispatcher.run(pipeline, Ev(id=1))
        mid = dispatcher.stats()
        await wait_until(lambda: len(reports) == 2, "the follow-up's report")
        final = dispatcher.stats()
    status = {o.job: (o.status, o.attempts) for o in first.outcomes}
    assert status == {"parent": ("succeeded", 2), "parent/c": ("deferred", 1)}
    assert runs == [("parent", 1), ("child", 1), ("parent", 2), ("parent", 1), ("child", 2)]
    assert (mid.delayed, mid.deferred) == (1, 1)
    assert reports[1].outcome("parent/c").model_dump(include={"status", "attempts"}) == {
        "status": "succeeded",
        "attempts": 2,
    }
    assert (final.delayed, final.pending) == (0, 0)


async def test_a_retry_later_too_far_to_schedule_leaks_no_delayed_slot() -> None:
    """RetryLater(1e12) lies past any date: whatever its outcome, it is not a raw
    OverflowError, and no max_delayed slot stays taken with nothing waiting in it."""
    pipeline = make_pipeline()

    @pipeline.job(retries=1)
    async def far(event: Ev) -> None:
        if event.id == 1:
            raise aw.RetryLater(1e12)

    async with aw.Dispatcher(park_after=0.5, max_delayed=1) as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
        waiting = [h for h in dispatcher.unfinished(pipeline, "1") if h.due_at is not None]
        stats = dispatcher.stats()
    error = report.outcome("far").error or ""
    assert (stats.delayed, error.startswith("OverflowError")) == (len(waiting), False), error


async def test_with_max_delayed_zero_a_long_wait_retries_in_place(
    events: list[EventDict],
) -> None:
    """max_delayed=0: nothing can park, so a long RetryLater waits in place, holding its room."""
    pipeline = make_pipeline()
    reports: list[aw.Report] = []

    @pipeline.job(retries=1)
    async def throttled(event: Ev, ctx: aw.JobContext) -> None:
        if ctx.attempt == 1:
            raise aw.RetryLater(1.0)

    async with aw.Dispatcher(park_after=0.5, max_delayed=0, on_report=reports.append) as dispatcher:
        handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
        await wait_until(lambda: bool(named(events, "job.retrying")), "the retry waits")
        waiting = dispatcher.stats()
        report = await handle.wait()
        stats = dispatcher.stats()
    assert (waiting.pending, waiting.delayed) == (1, 0)
    assert [(o.status, o.attempts) for o in report.outcomes] == [("succeeded", 2)]
    assert reports == [report]
    assert (stats.deferred, stats.retried) == (0, 1)
    assert named(events, "job.deferred") == []
    assert named(events, "job.retrying")[0]["delay_s"] == 1.0


async def test_with_max_delayed_full_a_long_wait_retries_in_place(
    events: list[EventDict],
) -> None:
    """max_delayed=1 taken by a delayed submission: a long RetryLater waits in place."""
    pipeline = make_pipeline()

    @pipeline.job(retries=1)
    async def throttled(event: Ev, ctx: aw.JobContext) -> None:
        if event.id == 1 and ctx.attempt == 1:
            raise aw.RetryLater(1.0)

    async with aw.Dispatcher(park_after=0.5, max_delayed=1) as dispatcher:
        dispatcher.submit_nowait(pipeline, Ev(id=9), delay=60)
        report = await dispatcher.run(pipeline, Ev(id=1))
        stats = dispatcher.stats()
    assert [(o.status, o.attempts) for o in report.outcomes] == [("succeeded", 2)]
    assert (stats.deferred, stats.retried, stats.delayed) == (0, 1, 1)
    assert named(events, "job.deferred") == []


# -- durability ------------------------------------------------------------------------------


Runs = dict[str, list[tuple[int, datetime, object]]]


def durable_pipeline(ran: Runs, park_for: float) -> aw.Pipeline[Ev]:
    """Event 1 is submitted with a delay; event 2's job parks on its first attempt. Each run
    records its attempt, its time and the request id bound in its log context."""
    pipeline = make_pipeline("d")

    @pipeline.job(retries=3)
    async def job(event: Ev, ctx: aw.JobContext) -> None:
        request = structlog.contextvars.get_contextvars().get("request_id")
        ran.setdefault(ctx.key, []).append((ctx.attempt, now(), request))
        if event.id == 2 and ctx.attempt == 1:
            raise aw.RetryLater(park_for)

    return pipeline


async def leave_delayed_and_parked(
    path: Path,
    pipeline: aw.Pipeline[Ev],
    delay: float,
    park_after: float,
    events: list[EventDict],
) -> tuple[datetime, datetime]:
    """Admit a delayed submission and park a job, then close at once; return both due times.
    The close names both as never started, kept in the journal."""
    async with aw.Dispatcher(journal=path, drain_timeout=0, park_after=park_after) as dispatcher:
        structlog.contextvars.bind_contextvars(request_id="req-1")
        delayed = await dispatcher.submit(pipeline, Ev(id=1), delay=delay)
        # On disk as soon as submit returns, while the dispatcher owns the journal.
        assert [e.key for e in aw.SqliteJournal(path).delayed()] == ["1"]
        structlog.contextvars.bind_contextvars(request_id="req-2")
        report = await dispatcher.run(pipeline, Ev(id=2))
    # The restart must restore the context from the journal, not inherit it from this task.
    structlog.contextvars.clear_contextvars()
    [unfinished] = named(events, "dispatcher.unfinished")
    assert (unfinished["never_started"], unfinished["kept_in_journal"]) == (["d:1", "d:2"], True)
    assert delayed.due_at is not None
    retry_at = report.outcome("job").retry_at
    assert report.outcome("job").status == "deferred"
    assert retry_at is not None
    return delayed.due_at, retry_at


def check_journal(path: Path, due_at: datetime, retry_at: datetime) -> None:
    entries = {e.key: e for e in aw.SqliteJournal(path).delayed()}
    assert sorted(entries) == ["1", "2"]
    first, parked = entries["1"], entries["2"]
    assert first.due_at is not None
    assert parked.due_at is not None
    assert abs(first.due_at - due_at) < timedelta(milliseconds=1)
    assert abs(parked.due_at - retry_at) < timedelta(milliseconds=1)
    assert (first.followup, parked.followup) == (False, True)
    assert [(j.job, j.status, j.attempts) for j in parked.jobs] == [("job", None, 1)]


async def test_delayed_and_parked_work_survive_a_restart_and_run_when_due(
    tmp_path: Path, events: list[EventDict]
) -> None:
    """With a journal, a delayed submission and a parked job are kept across a restart, listed
    by SqliteJournal.delayed(), and run by the next dispatcher at their due time, not before,
    in the log context bound at admission."""
    path = tmp_path / "journal.db"
    ran: Runs = {}
    pipeline = durable_pipeline(ran, park_for=3.0)
    due_at, retry_at = await leave_delayed_and_parked(path, pipeline, 3.0, 0.5, events)
    assert list(ran) == ["2"]
    check_journal(path, due_at, retry_at)
    reports: list[aw.Report] = []
    async with aw.Dispatcher(
        journal=path, pipelines=[pipeline], park_after=0.5, on_report=reports.append
    ) as dispatcher:
        await wait_until(
            lambda: dispatcher.stats().delayed == 2 or len(reports) > 0,
            "both rows replayed as delayed work",
        )
        replayed_as_delayed = dispatcher.stats().delayed
        listed = {h.key: h.due_at for h in dispatcher.unfinished(pipeline, "1")}
        await wait_until(lambda: len(reports) == 2, "both ran")
    assert replayed_as_delayed == 2, "restarted well before the due times"
    assert listed["1"] is not None
    assert abs(listed["1"] - due_at) < timedelta(milliseconds=1)
    assert ran["1"][0][1] >= due_at - EARLY
    assert ran["2"][1][1] >= retry_at - EARLY
    assert [(attempt, request) for attempt, _, request in ran["1"]] == [(1, "req-1")]
    assert [(attempt, request) for attempt, _, request in ran["2"]] == [
        (1, "req-2"),
        (2, "req-2"),
    ]
    by_key = {r.key: r for r in reports}
    assert by_key["1"].ok
    assert by_key["1"].followup is False
    assert (by_key["2"].ok, by_key["2"].followup) == (True, True)
    assert [(o.status, o.attempts) for o in by_key["2"].outcomes] == [("succeeded", 2)]
    assert aw.SqliteJournal(path).unfinished() == []


async def test_overdue_delayed_and_parked_work_runs_at_once_after_a_restart(
    tmp_path: Path, events: list[EventDict]
) -> None:
    """Delayed and parked work whose time passed while the process was down runs on start."""
    path = tmp_path / "journal.db"
    ran: Runs = {}
    pipeline = durable_pipeline(ran, park_for=1.5)
    due_at, retry_at = await leave_delayed_and_parked(path, pipeline, 1.5, 0.5, events)
    check_journal(path, due_at, retry_at)
    await wait_until(lambda: now() > max(due_at, retry_at), "both are overdue")
    reports: list[aw.Report] = []
    async with aw.Dispatcher(
        journal=path, pipelines=[pipeline], park_after=0.5, on_report=reports.append
    ) as dispatcher:
        await wait_until(lambda: len(reports) == 2, "both ran")
        stats = dispatcher.stats()
    assert [(attempt, request) for attempt, _, request in ran["1"]] == [(1, "req-1")]
    assert [(attempt, request) for attempt, _, request in ran["2"]] == [
        (1, "req-2"),
        (2, "req-2"),
    ]
    assert all(r.ok for r in reports)
    assert (stats.delayed, stats.pending, stats.completed) == (0, 0, 2)
    assert aw.SqliteJournal(path).unfinished() == []


async def test_a_parked_child_survives_a_restart_and_continues(tmp_path: Path) -> None:
    """A parked child's follow-up is journaled: after a restart the parent runs again, the
    succeeded sibling does not, and the parked child continues at attempt 2."""
    path = tmp_path / "journal.db"
    runs: list[tuple[str, int]] = []
    pipeline = make_pipeline("fan")

    async def good(ctx: aw.JobContext) -> None:
        runs.append(("good", ctx.attempt))

    async def parked(ctx: aw.JobContext) -> None:
        runs.append(("parked", ctx.attempt))
        if ctx.attempt == 1:
            raise aw.RetryLater(1.0)

    @pipeline.job(retries=2)
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        runs.append(("parent", ctx.attempt))
        ctx.spawn(good, name="good")
        ctx.spawn(parked, name="parked")

    async with aw.Dispatcher(journal=path, drain_timeout=0, park_after=0.5) as dispatcher:
        first = await dispatcher.run(pipeline, Ev(id=1))
    assert first.outcome("parent/parked").status == "deferred"
    [entry] = aw.SqliteJournal(path).delayed()
    assert entry.followup is True
    assert sorted((j.job, j.status, j.attempts) for j in entry.jobs) == [
        ("parent", "succeeded", 1),
        ("parent/good", "succeeded", 1),
        ("parent/parked", None, 1),
    ]
    reports: list[aw.Report] = []
    async with aw.Dispatcher(
        journal=path, pipelines=[pipeline], park_after=0.5, on_report=reports.append
    ):
        await wait_until(lambda: len(reports) == 1, "the follow-up's report")
    [report] = reports
    assert (report.followup, report.ok) == (True, True)
    assert report.outcome("parent/parked").model_dump(include={"status", "attempts"}) == {
        "status": "succeeded",
        "attempts": 2,
    }
    assert runs == [("parent", 1), ("good", 1), ("parked", 1), ("parent", 1), ("parked", 2)]
    assert aw.SqliteJournal(path).unfinished() == []


async def test_a_parked_job_runs_once_more_after_a_drain_deadline_cut_its_sibling(
    tmp_path: Path, events: list[EventDict]
) -> None:
    """A job parks while its sibling is cancelled at the drain deadline: after a restart the
    sibling runs again, and the parked job runs once more only, as its follow-up (attempt 2,
    not before retry_at), not also at once with its count reset."""
    path = tmp_path / "journal.db"
    restarted = False
    runs: list[tuple[str, int, datetime]] = []
    pipeline = make_pipeline("d")

    @pipeline.job(retries=3)
    async def parks(event: Ev, ctx: aw.JobContext) -> None:
        runs.append(("parks", ctx.attempt, now()))
        if ctx.attempt == 1:
            raise aw.RetryLater(1.5)

    @pipeline.job
    async def hangs(event: Ev, ctx: aw.JobContext) -> None:
        runs.append(("hangs", ctx.attempt, now()))
        if not restarted:
            await anyio.sleep_forever()

    async with aw.Dispatcher(journal=path, drain_timeout=0, park_after=0.5) as dispatcher:
        handle = await dispatcher.submit(pipeline, Ev(id=1))
        await wait_until(
            lambda: bool(named(events, "job.deferred")) and len(runs) == 2,
            "parks parked, hangs running",
        )
    first = await handle.wait()
    retry_at = first.outcome("parks").retry_at
    assert retry_at is not None
    assert first.outcome("hangs").status == "cancelled"
    restarted = True
    reports: list[aw.Report] = []
    async with aw.Dispatcher(
        journal=path, pipelines=[pipeline], park_after=0.5, on_report=reports.append
    ) as dispatcher:
        await wait_until(lambda: len(reports) == 2, "the replay's and the follow-up's reports")
        await wait_until(lambda: dispatcher.stats().pending == 0, "nothing left running")
        stats = dispatcher.stats()
    after = [(job, attempt) for job, attempt, _ in runs[2:]]
    assert sorted(after) == [("hangs", 1), ("parks", 2)]
    [(_, _, parks_ran_at)] = [r for r in runs[2:] if r[0] == "parks"]
    assert parks_ran_at >= retry_at - EARLY
    assert (stats.delayed, stats.deferred) == (0, 0)
    assert all(r.ok for r in reports)
    assert aw.SqliteJournal(path).unfinished() == []


def test_delayed_work_and_parked_followups_run_on_trio() -> None:
    """On trio too: a delayed submission waits as delayed work, a parked job's follow-up runs
    at attempt 2 in its submitter's log context."""
    pipeline = make_pipeline()
    seen: list[tuple[int, int, object]] = []
    reports: list[aw.Report] = []

    @pipeline.job(retries=2)
    async def job(event: Ev, ctx: aw.JobContext) -> None:
        seen.append((event.id, ctx.attempt, structlog.contextvars.get_contextvars().get("rid")))
        if event.id == 1 and ctx.attempt == 1:
            raise aw.RetryLater(0.8)

    async def main() -> tuple[aw.Stats, aw.Stats]:
        async with aw.Dispatcher(park_after=0.5, on_report=reports.append) as dispatcher:
            structlog.contextvars.bind_contextvars(rid="r1")
            await dispatcher.run(pipeline, Ev(id=1))
            structlog.contextvars.bind_contextvars(rid="r2")
            handle = dispatcher.submit_nowait(pipeline, Ev(id=2), delay=0.3)
            waiting = dispatcher.stats()
            await handle.wait()
            await wait_until(lambda: len(reports) == 3, "every report")
            return waiting, dispatcher.stats()

    waiting, final = anyio.run(main, backend="trio")
    assert (waiting.delayed, waiting.pending) == (2, 0)
    assert sorted(seen) == [(1, 1, "r1"), (1, 2, "r1"), (2, 1, "r2")]
    assert sorted((r.key, r.followup, r.ok) for r in reports) == [
        ("1", False, False),
        ("1", True, True),
        ("2", False, True),
    ]
    assert (final.delayed, final.pending, final.deferred) == (0, 0, 1)
