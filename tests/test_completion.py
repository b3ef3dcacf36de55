"""G2 isolation, G3 fan-out, G7 timeouts and retries, and lanes: how one completion runs."""

from __future__ import annotations

import threading
import time

import anyio
from structlog.typing import EventDict

import afterwork as aw
from afterwork._job import MAX_BACKOFF_S, backoff_delay
from afterwork.testing import ThreadSampler

from .conftest import named
from .helpers import Ev, Gate, make_pipeline, wait_until


def seven_jobs_one_failing() -> aw.Pipeline[Ev]:
    pipeline = make_pipeline("iso")
    for i in range(6):
        pipeline.job(name=f"ok{i}")(lambda e: time.sleep(0.001))

    @pipeline.job
    def explode(event: Ev) -> None:
        raise ValueError(f"bad event {event.id}")

    return pipeline


async def test_a_failing_job_never_cancels_its_siblings(events: list[EventDict]) -> None:
    """One failing job per completion: every sibling succeeds and the caller gets a Report."""
    pipeline = seven_jobs_one_failing()
    async with aw.Dispatcher(max_threads=4) as dispatcher:
        reports = [await dispatcher.run(pipeline, Ev(id=i)) for i in range(10)]
    for i, report in enumerate(reports):
        assert not report.ok
        assert sorted(o.job for o in report.outcomes if o.status == "succeeded") == [
            f"ok{n}" for n in range(6)
        ]
        failed = report.outcome("explode")
        assert (failed.status, failed.attempts) == ("failed", 1)
        assert failed.error == f"ValueError: bad event {i}"
    failures = named(events, "job.failed")
    assert len(failures) == 10
    for failure in failures:
        assert failure["pipeline"] == "iso"
        assert failure["job"] == "explode"
        assert failure["attempt"] == 1
        assert failure["log_level"] == "error"
        assert isinstance(failure["exc_info"], ValueError)
    assert sorted(f["key"] for f in failures) == sorted(str(i) for i in range(10))


async def test_async_job_failures_are_isolated_too(events: list[EventDict]) -> None:
    """An async job's exception is reported once and does not cancel a sibling mid-await."""
    pipeline = make_pipeline()
    sibling_may_finish = anyio.Event()

    @pipeline.job
    async def fails(event: Ev) -> None:
        raise KeyError("missing")

    @pipeline.job
    async def waits(event: Ev) -> None:
        await sibling_may_finish.wait()

    async with aw.Dispatcher() as dispatcher:
        handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
        await wait_until(lambda: len(named(events, "job.failed")) == 1, "failure logged")
        sibling_may_finish.set()
        report = await handle.wait()
    assert report.outcome("waits").status == "succeeded"
    assert report.outcome("fails").error == "KeyError: 'missing'"
    assert len(named(events, "job.failed")) == 1


async def test_cancelling_the_caller_is_not_swallowed() -> None:
    """A cancelled run() caller is cancelled; run does not turn it into a Report."""
    started = anyio.Event()
    pipeline = make_pipeline()

    @pipeline.job
    async def slow(event: Ev) -> None:
        started.set()
        await anyio.sleep_forever()

    reached_after_run = False
    async with aw.Dispatcher(drain_timeout=0) as dispatcher:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(dispatcher.run, pipeline, Ev(id=1))
                await started.wait()
                scope.cancel()
            reached_after_run = True
    assert scope.cancelled_caught
    assert not reached_after_run


async def test_fan_out_finishes_with_a_single_thread() -> None:
    """With max_threads=1, parents that each spawn 8 children under saturation all finish."""
    pipeline = make_pipeline("fan")
    child_threads: set[int] = set()

    def child(n: int) -> int:
        child_threads.add(threading.get_ident())
        time.sleep(0.001)
        return n

    @pipeline.job
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        for n in range(8):
            ctx.spawn(child, n, name=f"c{n}")

    @pipeline.job
    def sync_parent(event: Ev, ctx: aw.JobContext) -> None:
        # Spawned from a worker thread: the parent's own token is returned as it ends.
        for n in range(8):
            ctx.spawn(child, n, name=f"s{n}")

    with ThreadSampler() as sampler:
        async with aw.Dispatcher(max_threads=1) as dispatcher:
            with anyio.fail_after(20):
                handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(20)]
                reports = [await h.wait() for h in handles]
            peak = dispatcher.stats().threads_peak
    for report in reports:
        assert report.ok
        names = {o.job for o in report.outcomes}
        assert {f"parent/c{n}" for n in range(8)} <= names
        assert {f"sync_parent/s{n}" for n in range(8)} <= names
        assert len(report.outcomes) == 18
    assert peak == 1
    assert sampler.peak_above_baseline <= 1


async def test_a_parent_holds_no_token_while_children_wait() -> None:
    """An async parent that awaits after spawning holds no thread, so its child can run."""
    pipeline = make_pipeline()
    child_ran = anyio.Event()

    async def child(ctx: aw.JobContext) -> None:
        await ctx.run_sync(time.sleep, 0)
        child_ran.set()

    @pipeline.job
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        ctx.spawn(child, name="only")
        with anyio.fail_after(5):
            await child_ran.wait()

    async with aw.Dispatcher(max_threads=1) as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
    assert report.ok
    assert report.outcome("parent/only").status == "succeeded"


async def test_children_are_isolated_and_bad_spawns_fail_the_parent() -> None:
    """A failing child fails alone; spawning a duplicate or a bad child fails the parent."""
    pipeline = make_pipeline()

    def persona(name: str) -> None:
        if name == "bad":
            raise RuntimeError("persona bad failed")

    @pipeline.job
    async def personas(event: Ev, ctx: aw.JobContext) -> None:
        for name in ("a", "bad", "c"):
            ctx.spawn(persona, name, name=name)

    @pipeline.job
    async def twice(event: Ev, ctx: aw.JobContext) -> None:
        ctx.spawn(persona, "x", name="x")
        ctx.spawn(persona, "y", name="x")

    @pipeline.job
    async def uncallable(event: Ev, ctx: aw.JobContext) -> None:
        ctx.spawn(persona, name="too-few-args")  # type: ignore[call-arg, arg-type]

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=3))
    status = {o.job: (o.status, o.error) for o in report.outcomes}
    assert status["personas"] == ("succeeded", None)
    assert status["personas/a"] == ("succeeded", None)
    assert status["personas/c"] == ("succeeded", None)
    assert status["personas/bad"] == ("failed", "RuntimeError: persona bad failed")
    assert status["twice/x"] == ("succeeded", None)
    assert status["twice"] == (
        "failed",
        "DuplicateJob: child 'twice/x' was already spawned by this attempt of 'twice' in p:3; "
        "give each child its own name with ctx.spawn(fn, *args, name=...)",
    )
    assert status["uncallable"] == (
        "failed",
        "InvalidJob: child 'uncallable/too-few-args' persona(name: 'str') -> 'None' cannot be "
        "called with 0 positional argument(s); a job takes the event, and optionally 'ctx'",
    )


async def test_async_job_timeout_is_reported_at_the_deadline(events: list[EventDict]) -> None:
    """An async job past its timeout is timed_out, and its siblings' results stand."""
    pipeline = make_pipeline()

    @pipeline.job(timeout=0.02)
    async def hangs(event: Ev) -> None:
        await anyio.sleep_forever()

    @pipeline.job
    async def quick(event: Ev) -> None:
        pass

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
        stats = dispatcher.stats()
    outcome = report.outcome("hangs")
    assert (outcome.status, outcome.attempts) == ("timed_out", 1)
    assert outcome.error == "JobTimeout: hangs ran past its timeout of 0.02 s"
    assert report.outcome("quick").status == "succeeded"
    assert stats.timed_out == 1
    [event] = named(events, "job.timed_out")
    assert (event["job"], event["timeout_s"], event["attempt"]) == ("hangs", 0.02, 1)


async def test_sync_timeout_moves_on_and_counts_the_stuck_thread() -> None:
    """A blocking job past its timeout is timed_out while its thread runs on, counted stuck."""
    gate = Gate()
    pipeline = make_pipeline()
    pipeline.job(name="hang", timeout=0.02)(gate.block)
    async with aw.Dispatcher(max_threads=2) as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
        during = dispatcher.stats()
        gate.open()
        await wait_until(lambda: dispatcher.stats().threads_stuck == 0, "thread returns")
        after = dispatcher.stats()
    assert report.outcome("hang").status == "timed_out"
    assert (during.threads_stuck, during.threads_busy) == (1, 1)
    assert (after.threads_stuck, after.threads_busy) == (0, 0)


async def test_waiting_for_a_thread_does_not_count_against_the_timeout() -> None:
    """A sync job's clock starts when its thread starts, not while it queues for one."""
    gate = Gate()
    pipeline = make_pipeline()
    pipeline.job(name="hog")(gate.block)
    pipeline.job(name="patient", timeout=0.05)(lambda e: None)
    async with aw.Dispatcher(max_threads=1) as dispatcher:
        handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
        await wait_until(lambda: gate.running == 1, "hog holds the only thread")
        await anyio.sleep(0.15)  # patient has now queued for three times its timeout
        gate.open()
        report = await handle.wait()
    assert report.outcome("patient").status == "succeeded"


async def test_retries_back_off_and_report_attempts(events: list[EventDict]) -> None:
    """A job that fails twice then succeeds reports 3 attempts; one that never does fails once."""
    pipeline = make_pipeline()
    calls: dict[str, int] = {"flaky": 0, "broken": 0}

    @pipeline.job(retries=2, backoff=0.001)
    def flaky(event: Ev, ctx: aw.JobContext) -> None:
        calls["flaky"] += 1
        assert ctx.attempt == calls["flaky"]
        if ctx.attempt < 3:
            raise ConnectionError(f"try {ctx.attempt}")

    @pipeline.job(retries=2, backoff=0.001)
    async def broken(event: Ev) -> None:
        calls["broken"] += 1
        raise ConnectionError("down")

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
        stats = dispatcher.stats()
    assert report.outcome("flaky").model_dump(include={"status", "attempts"}) == {
        "status": "succeeded",
        "attempts": 3,
    }
    assert report.outcome("broken").model_dump(include={"status", "attempts", "error"}) == {
        "status": "failed",
        "attempts": 3,
        "error": "ConnectionError: down",
    }
    assert calls == {"flaky": 3, "broken": 3}
    assert stats.retried == 4
    retrying = named(events, "job.retrying")
    assert sorted((e["job"], e["attempt"]) for e in retrying) == [
        ("broken", 1),
        ("broken", 2),
        ("flaky", 1),
        ("flaky", 2),
    ]
    assert all(e["delay_s"] >= 0 for e in retrying)
    assert [e["job"] for e in named(events, "job.failed")] == ["broken"]


async def test_a_timed_out_attempt_is_retried() -> None:
    """Timeouts count as failed attempts and are retried like errors."""
    pipeline = make_pipeline()
    attempts: list[int] = []

    @pipeline.job(timeout=0.02, retries=1, backoff=0.001)
    async def slow_then_fast(event: Ev, ctx: aw.JobContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await anyio.sleep_forever()

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
    assert (report.outcome("slow_then_fast").status, attempts) == ("succeeded", [1, 2])


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    """Each delay lies in [step/2, step] for step = backoff * 2**(n-1), capped, and varies."""
    pipeline = make_pipeline()
    pipeline.job(name="j", retries=30, backoff=0.1)(lambda e: None)
    spec = pipeline.jobs["j"]
    for attempt in (1, 2, 3, 4):
        step = 0.1 * 2 ** (attempt - 1)
        delays = {backoff_delay(spec, attempt) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays)
        assert len(delays) > 1
    assert backoff_delay(spec, 30) <= MAX_BACKOFF_S


async def test_when_skips_and_a_failing_when_fails(events: list[EventDict]) -> None:
    """`when` returning False skips the job; `when` raising fails it, reported once."""
    pipeline = make_pipeline()
    pipeline.job(name="odd_only", when=lambda e: e.id % 2 == 1)(lambda e: None)

    def broken_predicate(event: Ev) -> bool:
        raise ValueError("predicate broke")

    pipeline.job(name="guarded", when=broken_predicate)(lambda e: None)
    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=2))
    assert report.outcome("odd_only").model_dump(include={"status", "attempts"}) == {
        "status": "skipped",
        "attempts": 0,
    }
    assert report.outcome("guarded").error == "ValueError: predicate broke"
    assert [e["job"] for e in named(events, "job.skipped")] == ["odd_only"]
    assert report.ok is False


async def test_a_lane_caps_its_running_jobs_inside_the_budget() -> None:
    """lanes={"llm": 2} runs at most 2 llm jobs at once, even with spare threads."""
    llm = Gate()
    pipeline = make_pipeline()
    pipeline.job(name="llm_job", lane="llm")(llm.block)
    pipeline.job(name="db_job")(lambda e: None)
    with ThreadSampler() as sampler:
        async with aw.Dispatcher(max_threads=6, lanes={"llm": 2}) as dispatcher:
            handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(8)]
            await wait_until(
                lambda: llm.running == 2 and dispatcher.stats().succeeded == 8,
                "2 llm jobs running and every db job done",
            )
            # Four threads are free, yet the other six llm jobs wait for their lane.
            busy = dispatcher.stats().threads_busy
            llm.open()
            reports = [await h.wait() for h in handles]
    assert busy == 2
    assert llm.peak == 2
    assert llm.entered == 8
    assert sampler.peak_above_baseline <= 6
    assert all(r.ok for r in reports)


async def test_async_jobs_in_a_lane_are_capped_too() -> None:
    """A lane counts running async jobs as well as blocking ones."""
    running = 0
    peak = 0
    release = anyio.Event()
    pipeline = make_pipeline()

    @pipeline.job(lane="io")
    async def call_out(event: Ev) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    async with aw.Dispatcher(lanes={"io": 3}) as dispatcher:
        handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(10)]
        await wait_until(lambda: running == 3, "3 in the lane")
        assert dispatcher.stats().running == 3
        release.set()
        for h in handles:
            await h.wait()
    assert peak == 3
