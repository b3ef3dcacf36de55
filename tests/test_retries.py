"""G7 retries and timeouts under adversity: retried parents and their children, lane tokens of
timed-out threads, stuck-thread counts, capped backoff, RetryLater, and spawns that come late
or from other threads."""

from __future__ import annotations

import collections
import math
import threading
from pathlib import Path

import anyio
import pytest
from structlog.typing import EventDict

import afterwork as aw
from afterwork._job import MAX_BACKOFF_S, backoff_delay
from afterwork.testing import Gate, wait_until

from .conftest import named
from .helpers import Ev, make_pipeline


def logged(events: list[EventDict], name: str, job: str) -> bool:
    """Whether ``name`` was logged for ``job`` (the outcome is recorded before the log)."""
    return any(e["job"] == job for e in named(events, name))


# -- item 5: a retried parent spawns its children again ---------------------------------------


async def test_a_retried_parent_respawns_children_by_the_replay_rules(
    events: list[EventDict],
) -> None:
    """A parent's retry may spawn the same children: the one that succeeded does not run
    again, the failed one does, and the one still running is not started a second time."""
    gate = Gate()
    pipeline = make_pipeline("fan")
    runs: collections.Counter[str] = collections.Counter()
    parent_attempts: list[int] = []

    async def ok() -> None:
        runs["ok"] += 1

    async def bad() -> None:
        runs["bad"] += 1
        if parent_attempts == [1]:
            raise ValueError("bad during the parent's first attempt")

    def slow() -> None:
        runs["slow"] += 1
        gate.block()

    @pipeline.job(retries=2, backoff=0)
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        parent_attempts.append(ctx.attempt)
        ctx.spawn(ok, name="ok")
        ctx.spawn(bad, name="bad")
        ctx.spawn(slow, name="slow")
        if ctx.attempt == 1:
            await wait_until(
                lambda: (
                    logged(events, "job.succeeded", "parent/ok")
                    and logged(events, "job.failed", "parent/bad")
                    and gate.running == 1
                ),
                "ok succeeded, bad failed (its own 3 attempts), slow blocked",
            )
            raise ConnectionError("the parent's first attempt fails after its spawns")

    async with aw.Dispatcher() as dispatcher:
        handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
        await wait_until(
            lambda: (
                logged(events, "job.succeeded", "parent") or logged(events, "job.failed", "parent")
            ),
            "the parent's retry ended",
        )
        # slow is still blocked from the first attempt while the retry respawned it.
        entered_before_open = gate.entered
        gate.open()
        report = await handle.wait()
    assert parent_attempts == [1, 2]
    assert entered_before_open == 1
    assert gate.entered == 1  # a second start would have entered the open gate by now
    assert runs == {"ok": 1, "bad": 4, "slow": 1}  # bad: 3 attempts, then 1 more on the retry
    # Only bad's first run failed for good; no DuplicateJob failed the parent's retry.
    assert [e["job"] for e in named(events, "job.failed")] == ["parent/bad"]
    assert report.ok
    assert sorted(o.job for o in report.outcomes) == [
        "parent",
        "parent/bad",
        "parent/ok",
        "parent/slow",
    ]
    status = {o.job: (o.status, o.attempts) for o in report.outcomes}
    assert status["parent"] == ("succeeded", 2)
    assert status["parent/ok"] == ("succeeded", 1)
    assert status["parent/slow"] == ("succeeded", 1)
    assert status["parent/bad"][0] == "succeeded"


async def test_replay_respawns_children_by_the_same_rules(
    tmp_path: Path, events: list[EventDict]
) -> None:
    """After a restart, the parent runs again: its succeeded child is not rerun, its failed
    child and its unfinished child are."""
    path = tmp_path / "journal.db"
    restarted = False
    runs: collections.Counter[str] = collections.Counter()
    pipeline = make_pipeline("fan")

    async def ok() -> None:
        runs["ok"] += 1

    async def bad() -> None:
        runs["bad"] += 1
        if not restarted:
            raise ValueError("bad before the restart")

    async def slow() -> None:
        runs["slow"] += 1
        if not restarted:
            await anyio.sleep_forever()

    @pipeline.job
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        runs["parent"] += 1
        ctx.spawn(ok, name="ok")
        ctx.spawn(bad, name="bad")
        ctx.spawn(slow, name="slow")

    async with aw.Dispatcher(drain_timeout=0, journal=path) as dispatcher:
        await dispatcher.submit(pipeline, Ev(id=1))
        await wait_until(
            lambda: (
                logged(events, "job.succeeded", "parent/ok")
                and logged(events, "job.failed", "parent/bad")
                and runs["slow"] == 1
            ),
            "ok succeeded, bad failed, slow started",
        )
    [left] = aw.SqliteJournal(path).unfinished()
    assert {j.job: j.status for j in left.jobs} == {
        "parent": "succeeded",
        "parent/ok": "succeeded",
        "parent/bad": "failed",
        "parent/slow": None,
    }
    restarted = True
    reports: list[aw.Report] = []
    async with aw.Dispatcher(journal=path, pipelines=[pipeline], on_report=reports.append):
        await wait_until(lambda: len(reports) == 1, "the replayed completion's report")
    assert runs == {"parent": 2, "ok": 1, "bad": 2, "slow": 2}
    [report] = reports
    assert (report.replayed, report.ok) == (True, True)
    assert sorted((o.job, o.status) for o in report.outcomes) == [
        ("parent", "succeeded"),
        ("parent/bad", "succeeded"),
        ("parent/ok", "succeeded"),
        ("parent/slow", "succeeded"),
    ]
    assert aw.SqliteJournal(path).unfinished() == []


async def test_one_attempt_spawning_a_name_twice_is_still_a_duplicate() -> None:
    """Within one attempt a child name spawned twice raises DuplicateJob, on a retry too and
    from a job's thread, and the child runs once."""
    pipeline = make_pipeline()
    messages: list[tuple[str, int, str]] = []
    child_runs: collections.Counter[str] = collections.Counter()

    async def child(tag: str) -> None:
        child_runs[tag] += 1

    @pipeline.job(retries=1, backoff=0)
    async def twice(event: Ev, ctx: aw.JobContext) -> None:
        ctx.spawn(child, "async", name="x")
        try:
            ctx.spawn(child, "async", name="x")
        except aw.DuplicateJob as error:
            messages.append((ctx.job, ctx.attempt, str(error)))
        if ctx.attempt == 1:
            raise ConnectionError("retry me")

    @pipeline.job(retries=1, backoff=0)
    def sync_twice(event: Ev, ctx: aw.JobContext) -> None:
        ctx.spawn(child, "sync", name="x")
        try:
            ctx.spawn(child, "sync", name="x")
        except aw.DuplicateJob as error:
            messages.append((ctx.job, ctx.attempt, str(error)))
        if ctx.attempt == 1:
            raise ConnectionError("retry me")

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))

    def message(job: str) -> str:
        return (
            f"child '{job}/x' was already spawned by this attempt of '{job}' in p:1; give each "
            "child its own name with ctx.spawn(fn, *args, name=...)"
        )

    assert sorted(messages) == [
        ("sync_twice", 1, message("sync_twice")),
        ("sync_twice", 2, message("sync_twice")),
        ("twice", 1, message("twice")),
        ("twice", 2, message("twice")),
    ]
    assert child_runs == {"async": 1, "sync": 1}
    assert report.ok
    assert report.outcome("twice").attempts == 2
    assert report.outcome("sync_twice").attempts == 2


async def test_a_duplicate_spawn_left_uncaught_fails_the_retry_with_its_message() -> None:
    """A retried attempt that spawns one name twice fails with DuplicateJob's message."""
    pipeline = make_pipeline()

    async def child() -> None:
        pass

    @pipeline.job(retries=1, backoff=0)
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        ctx.spawn(child, name="c")
        if ctx.attempt == 1:
            raise ConnectionError("retry me")
        ctx.spawn(child, name="c")

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=5))
    outcome = report.outcome("parent")
    assert (outcome.status, outcome.attempts) == ("failed", 2)
    assert outcome.error == (
        "DuplicateJob: child 'parent/c' was already spawned by this attempt of 'parent' in "
        "p:5; give each child its own name with ctx.spawn(fn, *args, name=...)"
    )
    assert report.outcome("parent/c").status == "succeeded"


# -- item 6: lane tokens come back only when the thread returns ---------------------------------


async def check_lane_held_by_stuck_thread(pipeline: aw.Pipeline[Ev], gate: Gate) -> None:
    async with aw.Dispatcher(max_threads=8, lanes={"one": 1}) as dispatcher:
        handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(4)]
        await wait_until(
            lambda: dispatcher.stats().timed_out == 1 and dispatcher.stats().threads_stuck == 1,
            "the first job timed out, its thread stuck in the gate",
        )
        # The observation window (20x the timeout): a token handed back on timeout would let
        # the next job of the lane into the gate within milliseconds, and each one after it
        # 50 ms later.
        await anyio.sleep(1.0)
        stats = dispatcher.stats()
        running, entered = gate.running, gate.entered
        gate.open()
        reports = [await h.wait() for h in handles]
    assert (running, entered) == (1, 1)
    assert (stats.running, stats.timed_out, stats.completed, stats.threads_stuck) == (0, 1, 1, 1)
    assert sum(1 for h in handles if h.done()) == 4
    assert gate.entered == 4
    assert gate.peak == 1
    statuses = [str(r.outcomes[0].status) for r in reports]
    assert statuses.count("timed_out") >= 1
    assert set(statuses) <= {"timed_out", "succeeded"}


async def test_a_timed_out_sync_job_keeps_its_lane_token_until_its_thread_returns() -> None:
    """lanes={"one": 1}: while a sync job's thread is stuck past its timeout, no other job of
    the lane starts; once it returns, the rest all run."""
    gate = Gate()
    pipeline = make_pipeline()
    pipeline.job(name="stuck", lane="one", timeout=0.05)(gate.block)
    await check_lane_held_by_stuck_thread(pipeline, gate)


async def test_an_async_jobs_abandoned_run_sync_keeps_its_lane_token() -> None:
    """The same for an async job whose ctx.run_sync thread outlives the job's timeout."""
    gate = Gate()
    pipeline = make_pipeline()

    @pipeline.job(lane="one", timeout=0.05)
    async def stuck(event: Ev, ctx: aw.JobContext) -> None:
        await ctx.run_sync(gate.block)

    await check_lane_held_by_stuck_thread(pipeline, gate)


# -- item 7: stuck threads of async jobs are counted ----------------------------------------


async def test_threads_stuck_counts_an_async_jobs_abandoned_run_sync_thread() -> None:
    """An async job timed out inside ctx.run_sync leaves a stuck thread, counted until it
    returns."""
    gate = Gate()
    pipeline = make_pipeline()

    @pipeline.job(timeout=0.05)
    async def waits_on_thread(event: Ev, ctx: aw.JobContext) -> None:
        await ctx.run_sync(gate.block)

    async with aw.Dispatcher(max_threads=2) as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
        during = dispatcher.stats()
        gate.open()
        await wait_until(lambda: dispatcher.stats().threads_busy == 0, "the thread returned")
        after = dispatcher.stats()
    outcome = report.outcome("waits_on_thread")
    assert (outcome.status, outcome.error) == (
        "timed_out",
        "JobTimeout: waits_on_thread ran past its timeout of 0.05 s",
    )
    assert (during.threads_stuck, during.threads_busy, during.running) == (1, 1, 0)
    assert (after.threads_stuck, after.threads_busy) == (0, 0)


# -- item 8: backoff never overflows ---------------------------------------------------------


def test_backoff_delay_never_overflows_and_stays_capped() -> None:
    """backoff_delay for attempts 1..5000, with small, zero and huge backoffs, never raises
    and never exceeds MAX_BACKOFF_S."""
    pipeline = make_pipeline()
    for name, backoff in (("small", 0.5), ("zero", 0), ("huge", 1e300)):
        pipeline.job(name=name, retries=5000, backoff=backoff)(lambda e: None)
    assert MAX_BACKOFF_S == 60.0
    for name in ("small", "zero", "huge"):
        spec = pipeline.jobs[name]
        delays = [backoff_delay(spec, attempt) for attempt in range(1, 5001)]
        assert all(math.isfinite(d) and 0 <= d <= MAX_BACKOFF_S for d in delays), name
    zero = pipeline.jobs["zero"]
    assert {backoff_delay(zero, n) for n in (1, 1024, 1025, 1100, 5000)} == {0.0}
    # Past the cap, the equal-jitter delay lies in [cap/2, cap].
    small = pipeline.jobs["small"]
    assert all(backoff_delay(small, n) >= MAX_BACKOFF_S / 2 for n in range(1025, 5001))


async def test_two_thousand_retries_with_zero_backoff_run_to_success() -> None:
    """retries=2000, backoff=0: a job failing until attempt 1100 succeeds there, with no
    OverflowError at attempt 1025."""
    pipeline = make_pipeline()
    attempts: list[int] = []

    @pipeline.job(retries=2000, backoff=0)
    async def stubborn(event: Ev, ctx: aw.JobContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 1100:
            raise ConnectionError(f"attempt {ctx.attempt}")

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
        stats = dispatcher.stats()
    outcome = report.outcome("stubborn")
    assert (outcome.status, outcome.attempts, outcome.error) == ("succeeded", 1100, None)
    assert attempts == list(range(1, 1101))
    assert stats.retried == 1099


# -- RetryLater --------------------------------------------------------------------------------


async def test_retry_later_waits_what_the_job_asked_and_counts_attempts(
    events: list[EventDict],
) -> None:
    """RetryLater(0.01) twice, then success: 3 attempts, each retry logged with delay_s 0.01."""
    pipeline = make_pipeline()

    @pipeline.job(retries=2)
    async def throttled(event: Ev, ctx: aw.JobContext) -> None:
        if ctx.attempt < 3:
            raise aw.RetryLater(0.01)

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
        stats = dispatcher.stats()
    outcome = report.outcome("throttled")
    assert (outcome.status, outcome.attempts) == ("succeeded", 3)
    retrying = named(events, "job.retrying")
    assert [(e["job"], e["attempt"], e["delay_s"], e["error"]) for e in retrying] == [
        ("throttled", 1, 0.01, "RetryLater: retry in 0.01 s"),
        ("throttled", 2, 0.01, "RetryLater: retry in 0.01 s"),
    ]
    assert (stats.retried, stats.deferred) == (2, 0)


async def test_retry_later_counts_against_retries() -> None:
    """With retries=0, RetryLater is the job's last attempt: it fails with its message."""
    pipeline = make_pipeline()
    calls: list[int] = []

    @pipeline.job
    async def no_retries(event: Ev, ctx: aw.JobContext) -> None:
        calls.append(ctx.attempt)
        raise aw.RetryLater(0.01)

    @pipeline.job(retries=1)
    async def one_retry(event: Ev, ctx: aw.JobContext) -> None:
        calls.append(10 + ctx.attempt)
        raise aw.RetryLater(0.01, "429 from the webhook")

    async with aw.Dispatcher() as dispatcher:
        with anyio.fail_after(30):  # a RetryLater that never runs out would retry forever
            report = await dispatcher.run(pipeline, Ev(id=1))
    assert report.outcome("no_retries").model_dump(include={"status", "attempts", "error"}) == {
        "status": "failed",
        "attempts": 1,
        "error": "RetryLater: retry in 0.01 s",
    }
    assert report.outcome("one_retry").model_dump(include={"status", "attempts", "error"}) == {
        "status": "failed",
        "attempts": 2,
        "error": "RetryLater: retry in 0.01 s: 429 from the webhook",
    }
    assert sorted(calls) == [1, 11, 12]


@pytest.mark.parametrize("seconds", [-1, math.nan, math.inf, True, "5", None, 1e12])
def test_retry_later_refuses_a_bad_wait(seconds: object) -> None:
    """RetryLater takes a finite number of seconds from 0 to a year, never a bool, a str or
    None."""
    with pytest.raises(aw.InvalidOption) as info:
        aw.RetryLater(seconds)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"RetryLater seconds must be a finite number from 0 to 31622400 (a year), got "
        f"{seconds!r}; e.g. raise RetryLater(30)"
    )


# -- late spawns, and spawns from other threads ----------------------------------------------


async def test_a_timed_out_sync_jobs_thread_cannot_spawn_while_the_completion_runs() -> None:
    """A sync job's thread that outlived its timeout gets UsageError from ctx.spawn, and the
    child never runs, though its completion is still running."""
    pipeline = make_pipeline()
    release = threading.Event()
    errors: list[BaseException] = []
    child_runs: list[str] = []

    def child() -> None:
        child_runs.append("late")

    tried = threading.Event()

    @pipeline.job(timeout=0.05)
    def hang(event: Ev, ctx: aw.JobContext) -> None:
        release.wait(timeout=30)
        try:
            ctx.spawn(child, name="late")
        except BaseException as error:
            errors.append(error)
        finally:
            tried.set()

    @pipeline.job
    async def holds_the_completion_open(event: Ev) -> None:
        await wait_until(tried.is_set, "the late spawn was tried")

    async with aw.Dispatcher() as dispatcher:
        handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
        await wait_until(lambda: dispatcher.stats().timed_out == 1, "hang timed out")
        release.set()
        report = await handle.wait()
        await wait_until(lambda: dispatcher.stats().threads_busy == 0, "the thread returned")
    [error] = errors
    assert isinstance(error, aw.UsageError)
    assert str(error) == (
        "job 'hang' of p:1 called spawn after its attempt 1 ended (it returned, failed or ran "
        "past its timeout); nothing was started: a job may start work only while it runs"
    )
    assert child_runs == []
    assert sorted(o.job for o in report.outcomes) == ["hang", "holds_the_completion_open"]
    assert report.outcome("hang").status == "timed_out"


async def test_a_timed_out_sync_jobs_thread_cannot_spawn_after_the_completion() -> None:
    """Once the completion has finished, the stuck thread's spawn is refused too."""
    pipeline = make_pipeline()
    release = threading.Event()
    errors: list[BaseException] = []
    child_runs: list[str] = []

    def child() -> None:
        child_runs.append("late")

    @pipeline.job(timeout=0.05)
    def hang(event: Ev, ctx: aw.JobContext) -> None:
        release.wait(timeout=30)
        try:
            ctx.spawn(child, name="late")
        except BaseException as error:
            errors.append(error)

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=2))
        release.set()
        await wait_until(lambda: bool(errors), "the late spawn was refused")
        await wait_until(lambda: dispatcher.stats().threads_busy == 0, "the thread returned")
        stats = dispatcher.stats()
    [error] = errors
    assert isinstance(error, aw.UsageError)
    assert str(error) in {
        "job 'hang' of p:2 spawned a child after the completion finished; the child was not "
        "started",
        "job 'hang' of p:2 called spawn after its attempt 1 ended (it returned, failed or ran "
        "past its timeout); nothing was started: a job may start work only while it runs",
    }
    assert child_runs == []
    assert report.outcome("hang").status == "timed_out"
    assert (stats.completed, stats.succeeded, stats.running) == (1, 0, 0)


async def test_spawn_from_a_helper_thread_of_a_sync_job_starts_the_child() -> None:
    """A sync job may spawn from a threading.Thread it starts (and joins): the child runs."""
    pipeline = make_pipeline()
    errors: list[BaseException] = []
    child_runs: list[str] = []

    def child(tag: str) -> None:
        child_runs.append(tag)

    async def async_child(tag: str) -> None:
        child_runs.append(tag)

    @pipeline.job
    def starts_a_thread(event: Ev, ctx: aw.JobContext) -> None:
        def helper() -> None:
            try:
                ctx.spawn(child, "sync", name="from-helper")
                ctx.spawn(async_child, "async", name="async-from-helper")
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=helper)
        thread.start()
        thread.join(timeout=30)

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
    assert errors == []
    assert sorted(child_runs) == ["async", "sync"]
    assert report.ok
    assert sorted(o.job for o in report.outcomes) == [
        "starts_a_thread",
        "starts_a_thread/async-from-helper",
        "starts_a_thread/from-helper",
    ]


async def test_five_thousand_children_of_one_job_all_run() -> None:
    """One job spawns 5,000 children (half async, half blocking): each runs once, each is
    reported."""
    pipeline = make_pipeline()
    lock = threading.Lock()
    ran: collections.Counter[int] = collections.Counter()

    def sync_child(n: int) -> None:
        with lock:
            ran[n] += 1

    async def async_child(n: int) -> None:
        with lock:
            ran[n] += 1

    @pipeline.job
    async def fan_out(event: Ev, ctx: aw.JobContext) -> None:
        for n in range(5000):
            if n % 2:
                ctx.spawn(sync_child, n, name=f"c{n}")
            else:
                ctx.spawn(async_child, n, name=f"c{n}")

    async with aw.Dispatcher(max_threads=8) as dispatcher:
        with anyio.fail_after(120):
            report = await dispatcher.run(pipeline, Ev(id=1))
        stats = dispatcher.stats()
    assert set(ran) == set(range(5000))
    assert set(ran.values()) == {1}
    assert report.ok
    assert len(report.outcomes) == 5001
    assert {o.job for o in report.outcomes} == {"fan_out"} | {f"fan_out/c{n}" for n in range(5000)}
    assert stats.succeeded == 5001
    assert stats.threads_peak <= 8
