"""G1: at no moment do more than max_threads threads run dispatcher work."""

from __future__ import annotations

import random
import time

import anyio
import anyio.lowlevel
import pytest

import afterwork as aw
from afterwork.testing import ThreadSampler

from .helpers import Ev, Gate, make_pipeline, wait_until


def seed_pipeline(sleep_range: tuple[float, float], running: Gate | None = None) -> aw.Pipeline[Ev]:
    """The seed's completion: seven blocking jobs, each sleeping a random while.

    With ``running``, each job also counts itself in and out of it, so a test can assert how
    many ran at once without relying on thread identities alone.
    """
    pipeline = make_pipeline("seed")
    rng = random.Random(4827)
    for i in range(7):
        delay = rng.uniform(*sleep_range)

        def job(event: Ev, delay: float = delay) -> None:
            if running is None:
                time.sleep(delay)
            else:
                with running.counted():
                    time.sleep(delay)

        pipeline.job(name=f"job{i}")(job)
    return pipeline


async def test_seed_scenario_never_exceeds_the_budget() -> None:
    """50 completions of 7 blocking jobs never use more than max_threads OS threads."""
    running = Gate()
    pipeline = seed_pipeline((0.002, 0.005), running)
    with ThreadSampler(interval=0.0005) as sampler:
        async with aw.Dispatcher(max_threads=32) as dispatcher:
            handles = []
            for i in range(50):
                handles.append(dispatcher.submit_nowait(pipeline, Ev(id=i)))
            reports = [await h.wait() for h in handles]
            stats = dispatcher.stats()
    assert all(r.ok for r in reports)
    assert sum(len(r.outcomes) for r in reports) == 350
    assert sampler.peak_above_baseline <= 32
    assert running.peak <= 32
    assert stats.threads_peak <= 32
    assert stats.succeeded == 350


async def test_the_budget_is_used_to_the_full_and_no_further() -> None:
    """With 20 blocking jobs and max_threads=4, exactly 4 run at once until released."""
    gate = Gate()
    pipeline = make_pipeline()
    pipeline.job(name="block")(gate.block)
    with ThreadSampler() as sampler:
        async with aw.Dispatcher(max_threads=4) as dispatcher:
            handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(20)]
            await wait_until(lambda: gate.running == 4, "4 threads running")
            stats = dispatcher.stats()
            gate.open()
            reports = [await h.wait() for h in handles]
    assert stats.threads_busy == 4
    assert gate.peak == 4
    assert sampler.peak_above_baseline <= 4
    assert all(r.ok for r in reports)


async def test_timed_out_threads_keep_their_tokens() -> None:
    """A sync job past its timeout still holds its token, so no fifth thread starts."""
    gate = Gate()
    pipeline = make_pipeline()
    pipeline.job(name="hang", timeout=0.01)(gate.block)
    with ThreadSampler() as sampler:
        async with aw.Dispatcher(max_threads=4) as dispatcher:
            handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(10)]
            first = [await h.wait() for h in handles[:4]]
            stuck = dispatcher.stats()
            # The other six wait for tokens that the stuck threads still hold.
            assert not any(h.done() for h in handles[4:])
            assert gate.entered == 4
            gate.open()
            rest = [await h.wait() for h in handles[4:]]
            await wait_until(lambda: dispatcher.stats().threads_stuck == 0, "stuck threads end")
    assert [r.outcomes[0].status for r in first] == ["timed_out"] * 4
    assert stuck.threads_stuck == 4
    assert stuck.threads_busy == 4
    assert [r.outcomes[0].status for r in rest] == ["succeeded"] * 6
    assert sampler.peak_above_baseline <= 4


async def test_cancelled_run_sync_callers_keep_the_budget() -> None:
    """Cancelling run_sync callers neither frees their tokens early nor starts queued calls."""
    gate = Gate()
    with ThreadSampler() as sampler:
        async with aw.Dispatcher(max_threads=4) as dispatcher:
            async with anyio.create_task_group() as callers:
                for _ in range(10):
                    callers.start_soon(dispatcher.run_sync, gate.block)
                await wait_until(lambda: gate.running == 4, "4 threads running")
                callers.cancel_scope.cancel()
            # The 4 threads run on and hold their tokens; the 6 queued calls never start.
            assert dispatcher.stats().threads_busy == 4
            async with anyio.create_task_group() as late:
                for _ in range(4):
                    late.start_soon(dispatcher.run_sync, gate.block)
                await wait_until(lambda: dispatcher.stats().threads_busy == 4, "still 4 busy")
                assert gate.entered == 4
                gate.open()
    assert gate.entered == 8
    assert gate.peak == 4
    assert sampler.peak_above_baseline <= 4


async def test_cancelled_run_callers_do_not_stop_admitted_work() -> None:
    """Cancelling the caller of run() stops its wait; the completion still finishes."""
    gate = Gate()
    pipeline = make_pipeline()
    pipeline.job(name="block")(gate.block)
    with ThreadSampler() as sampler:
        async with aw.Dispatcher(max_threads=2) as dispatcher:
            with anyio.move_on_after(0.05) as scope:
                await dispatcher.run(pipeline, Ev(id=1))
            assert scope.cancelled_caught
            assert dispatcher.stats().pending == 1
            gate.open()
            await wait_until(lambda: dispatcher.stats().completed == 1, "completion finishes")
    assert dispatcher.stats().succeeded == 1
    assert sampler.peak_above_baseline <= 2


async def test_dispatcher_threads_do_not_draw_on_anyio_default_limiter() -> None:
    """Busy dispatcher threads borrow no tokens from anyio's default 40-token limiter."""
    gate = Gate()
    default = anyio.to_thread.current_default_thread_limiter()
    async with aw.Dispatcher(max_threads=3) as dispatcher, anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(dispatcher.run_sync, gate.block)
        await wait_until(lambda: gate.running == 3, "3 threads running")
        borrowed = default.borrowed_tokens
        gate.open()
    assert borrowed == 0


async def test_run_sync_returns_values_and_raises_errors() -> None:
    """run_sync returns the function's value and re-raises its exception to the caller."""

    def fail() -> None:
        raise ValueError("no good")

    async with aw.Dispatcher(max_threads=1) as dispatcher:
        assert await dispatcher.run_sync(divmod, 7, 2) == (3, 1)
        with pytest.raises(ValueError, match=r"^no good$"):
            await dispatcher.run_sync(fail)


@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_a_thread_the_os_refuses_is_that_jobs_failure(
    monkeypatch: pytest.MonkeyPatch, timeout: float | None
) -> None:
    """When no new thread can be started ("can't start new thread"), the job that needed one
    fails with that error at once (a timed job too, whose clock would start with its thread),
    its token comes back, and the next job runs once threads start."""
    from anyio._backends import _asyncio as asyncio_backend

    def refuse(self: object) -> None:
        raise RuntimeError("can't start new thread")

    pipeline = make_pipeline("refused")
    pipeline.job(name="blocking", timeout=timeout)(lambda event: None)
    async with aw.Dispatcher(max_threads=1) as dispatcher:
        monkeypatch.setattr(asyncio_backend.WorkerThread, "start", refuse)
        refused = await dispatcher.run(pipeline, Ev(id=1))
        busy = dispatcher.stats().threads_busy
        monkeypatch.undo()
        accepted = await dispatcher.run(pipeline, Ev(id=2))
    assert refused.outcome("blocking").status == "failed"
    assert refused.outcome("blocking").error == "RuntimeError: can't start new thread"
    assert busy == 0
    assert accepted.ok


async def test_a_runner_cut_off_before_its_first_step_still_finishes_its_call() -> None:
    """On asyncio each call's runner is a plain task. If the budget closes before that task
    has taken a step, its body never runs: the close finishes the call itself, so the lane
    token comes back, the call counts as neither running nor stuck, and its function never
    runs."""
    from afterwork._budget import Lease, ThreadBudget

    ran: list[int] = []
    lane = anyio.CapacityLimiter(1)
    lease = Lease(lane)
    await lease.acquire()
    async with ThreadBudget(1) as budget:
        caller = budget.run_sync(ran.append, 1, lease=lease)
        caller.send(None)  # up to its first await: the runner task exists, and has not run
        caller.close()  # the caller leaves at once
        lease.drop()  # and its attempt ends; the call's own hold on the lane remains
        held = lane.borrowed_tokens
    assert held == 1
    assert lane.borrowed_tokens == 0
    assert budget.stuck == 0
    assert ran == []


async def test_a_close_cut_short_by_a_cancel_still_ends_every_call() -> None:
    """If the task closing the budget is itself cancelled (the loop shutting down), every call
    still ends: its caller is told the dispatcher closed, its lane token comes back, and the
    closing task's cancel scopes are left as they were, so it can go on awaiting."""
    import asyncio

    from afterwork._budget import Lease, ThreadBudget

    gate = Gate()
    lane = anyio.CapacityLimiter(1)
    lease = Lease(lane)
    await lease.acquire()
    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await budget.run_sync(gate.block, lease=lease)
        except aw.DispatcherClosed as error:
            errors.append(error)

    budget = ThreadBudget(1)
    await budget.__aenter__()
    waiting = asyncio.get_running_loop().create_task(caller())
    await wait_until(lambda: gate.running == 1, "the call's thread to start")
    lease.drop()  # the attempt ends; the running thread's hold remains
    closing = asyncio.current_task()
    assert closing is not None
    closing.cancel()  # delivered at the close's first await
    with pytest.raises(asyncio.CancelledError):
        await budget.__aexit__(None, None, None)
    closing.uncancel()
    await waiting
    await anyio.lowlevel.checkpoint()  # no cancel scope of the budget's is left behind here
    held = lane.borrowed_tokens
    gate.open()
    await wait_until(lambda: gate.running == 0, "the thread to return")
    assert [str(e) for e in errors] == [
        "the dispatcher closed while Gate.block was still running; its thread runs on unattended"
    ]
    assert held == 0


async def test_before_call_runs_in_the_thread_holding_its_token_before_the_clock() -> None:
    """``before_call`` runs in the worker thread with the token held: a second call queues
    for the token meanwhile, and a timed call's timeout starts only after it returns."""
    import threading

    from afterwork._budget import ThreadBudget

    entered, release = threading.Event(), threading.Event()
    where: list[str] = []

    def before() -> None:
        where.append(threading.current_thread().name)
        entered.set()
        release.wait(20)

    async with ThreadBudget(1) as budget:
        budget.before_call = before
        results: list[str] = []

        async def call(timeout: float | None) -> None:
            results.append(await budget.run_sync(lambda: "ran", timeout=timeout))

        async with anyio.create_task_group() as group:
            group.start_soon(call, 0.5)  # longer than nothing, shorter than the test's wait
            await anyio.to_thread.run_sync(entered.wait, 20)
            group.start_soon(call, None)
            await wait_until(lambda: budget.waiting == 1, "the second call to queue")
            busy, waiting = budget.busy, budget.waiting
            await anyio.sleep(0.6)  # past the first call's timeout, had its clock started
            release.set()
    assert (busy, waiting) == (1, 1)
    assert results == ["ran", "ran"]
    assert all(name != threading.main_thread().name for name in where)


def test_unstored_waits_until_every_outcome_is_stored_or_the_limit() -> None:
    """A job's thread waits while outcomes are queued, goes on once they are all stored, and
    gives up after ``limit_s`` (Redis unreachable: the bound is lost, not the work)."""
    import threading

    from afterwork.taskiq._local import Unstored

    unstored = Unstored(limit_s=30)
    unstored.add()
    unstored.add()
    waited = threading.Event()

    def wait() -> None:
        unstored.wait()
        waited.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    unstored.stored(1)
    assert not waited.wait(0.2)  # one is still on its way
    unstored.stored(1)
    assert waited.wait(20)
    waiter.join()

    stuck = Unstored(limit_s=0.05)
    stuck.add()
    began = time.monotonic()
    stuck.wait()
    assert time.monotonic() - began >= 0.05
