"""overhead: what afterwork adds to a blocking call, measured with jobs that do nothing.

A no-op job costs only the machinery: handing the call to a worker thread and back. Each
peer runs its calls from 32 concurrent callers (or, for the ``sequential`` rows, from one
caller awaiting each call in turn), after a warm-up that starts the worker threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import anyio

import afterwork as aw

from ._chaos import MAX_THREADS, Conversation
from ._harness import (
    Config,
    Result,
    Section,
    Target,
    fmt,
    med,
    paired_ratio,
    run_interleaved,
    table,
)

JOBS = 7
WARMUP_FRACTION = 10


def noop() -> None:
    pass


async def anoop(conv: Conversation) -> None:
    pass


def sync_pipeline() -> aw.Pipeline[Conversation]:
    pipeline = aw.Pipeline("noop.sync", event=Conversation, key=lambda e: e.id)
    for k in range(JOBS):
        pipeline.job(name=f"job{k}")(lambda conv: None)
    return pipeline


def async_pipeline() -> aw.Pipeline[Conversation]:
    pipeline = aw.Pipeline("noop.async", event=Conversation, key=lambda e: e.id)
    for k in range(JOBS):
        pipeline.job(name=f"job{k}")(anoop)
    return pipeline


async def _drive(call: Callable[[], Awaitable[object]], n: int, callers: int) -> float:
    """Run ``call`` n times from ``callers`` concurrent tasks; return the wall time."""

    async def caller(count: int) -> None:
        for _ in range(count):
            await call()

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for i in range(callers):
            group.start_soon(caller, n // callers + (i < n % callers))
    return time.perf_counter() - started


async def _timed(call: Callable[[], Awaitable[object]], n: int, callers: int) -> float:
    await _drive(call, max(callers, n // WARMUP_FRACTION), callers)
    return await _drive(call, n, callers)


def _measure_async(peer: str, n: int, completions: int) -> tuple[float, int]:
    """Wall time and job count for the async peers, in a fresh event loop."""

    async def main() -> tuple[float, int]:
        limiter = anyio.CapacityLimiter(MAX_THREADS)
        if peer in ("anyio", "anyio_sequential"):
            callers = 1 if peer.endswith("sequential") else MAX_THREADS
            return await _timed(
                lambda: anyio.to_thread.run_sync(noop, limiter=limiter), n, callers
            ), n
        if peer == "executor":
            loop = asyncio.get_running_loop()
            pool = ThreadPoolExecutor(MAX_THREADS)
            return await _timed(lambda: loop.run_in_executor(pool, noop), n, MAX_THREADS), n
        if peer == "anyio_completion":

            async def completion() -> None:
                async with anyio.create_task_group() as group:
                    for _ in range(JOBS):
                        group.start_soon(lambda: anyio.to_thread.run_sync(noop, limiter=limiter))

            return await _timed(completion, completions, MAX_THREADS), completions * JOBS
        if peer == "anyio_completion_async":
            event = Conversation(id=0)

            async def async_completion() -> None:
                async with anyio.create_task_group() as group:
                    for _ in range(JOBS):
                        group.start_soon(anoop, event)

            return await _timed(async_completion, completions, MAX_THREADS), completions * JOBS
        async with aw.Dispatcher(max_threads=MAX_THREADS, max_pending=10_000) as dispatcher:
            if peer in ("afterwork", "afterwork_sequential"):
                callers = 1 if peer.endswith("sequential") else MAX_THREADS
                return await _timed(lambda: dispatcher.run_sync(noop), n, callers), n
            pipeline = sync_pipeline() if peer == "afterwork_completion" else async_pipeline()
            counter = iter(range(10**9))

            def run() -> Awaitable[aw.Report]:
                return dispatcher.run(pipeline, Conversation(id=next(counter)))

            return await _timed(run, completions, MAX_THREADS), completions * JOBS

    return anyio.run(main)


def _measure_pool(n: int) -> tuple[float, int]:
    """ThreadPoolExecutor.submit from sync code: submit them all, then wait for them all."""
    pool = ThreadPoolExecutor(MAX_THREADS)
    wait([pool.submit(noop) for _ in range(max(MAX_THREADS, n // WARMUP_FRACTION))])
    started = time.perf_counter()
    wait([pool.submit(noop) for _ in range(n)])
    elapsed = time.perf_counter() - started
    pool.shutdown()
    return elapsed, n


def measure(peer: str, params: dict[str, Any]) -> Result:
    n, completions = params["calls"], params["completions"]
    elapsed, jobs = _measure_pool(n) if peer == "pool" else _measure_async(peer, n, completions)
    return {"per_job_us": elapsed / jobs * 1e6, "jobs_per_s": jobs / elapsed}


PEERS = {
    "anyio": "bare `anyio.to_thread.run_sync(limiter=CapacityLimiter(32))`",
    "afterwork": "afterwork `run_sync`",
    "executor": "`loop.run_in_executor` on a 32-thread pool",
    "pool": "`ThreadPoolExecutor(32).submit` from sync code",
    "anyio_sequential": "bare anyio, one caller in turn",
    "afterwork_sequential": "afterwork `run_sync`, one caller in turn",
    "anyio_completion": "bare anyio: a task group of 7 calls",
    "afterwork_completion": "afterwork `run`: 7 sync no-op jobs",
    "anyio_completion_async": "bare anyio: a task group of 7 async no-ops",
    "afterwork_completion_async": "afterwork `run`: 7 async no-op jobs",
}


def run(config: Config) -> Section:
    params = {
        "calls": config.pick(smoke=200, quick=3_000, full=50_000),
        "completions": config.pick(smoke=30, quick=450, full=7_000),
    }
    results = run_interleaved("overhead", list(PEERS), params, config.repeats)
    rows = []
    for peer, label in PEERS.items():
        base = "anyio_sequential" if peer.endswith("sequential") else "anyio"
        if "completion" in peer:
            base = "anyio_completion_async" if peer.endswith("async") else "anyio_completion"
        ratio = paired_ratio(results[peer], results[base], "per_job_us")
        rows.append(
            [
                label,
                fmt(med(results[peer], "per_job_us"), 1),
                fmt(med(results[peer], "jobs_per_s"), 0),
                f"{ratio:.2f}x",
            ]
        )
    call_ratio = paired_ratio(results["afterwork"], results["anyio"], "per_job_us")
    seq_ratio = paired_ratio(
        results["afterwork_sequential"], results["anyio_sequential"], "per_job_us"
    )
    job_ratio = paired_ratio(
        results["afterwork_completion"], results["anyio_completion"], "per_job_us"
    )
    markdown = "\n\n".join(
        [
            "## overhead",
            f"No-op jobs: {params['calls']:,} calls, or {params['completions']:,} completions of "
            f"{JOBS} jobs, per run, from 32 concurrent callers unless marked. The ratio compares "
            "each row with its bare-anyio counterpart (calls with calls, one caller with one "
            "caller, a completion with a task group of 7 calls, or of 7 no-op coroutines).",
            table(["what", "per job (µs)", "jobs/s", "vs bare anyio"], rows),
        ]
    )
    targets = [
        Target(
            "afterwork per-job overhead <= 1.3x bare `anyio.to_thread.run_sync`",
            f"run_sync {call_ratio:.2f}x (32 callers), {seq_ratio:.2f}x (one caller); "
            f"a 7-job completion {job_ratio:.2f}x per job",
            max(call_ratio, seq_ratio) <= 1.3,
            "Per call, afterwork starts a runner task that owns the token and the thread, and "
            "the caller waits for it: two event-loop passes more than bare anyio. The runner "
            "is what keeps G1 when a caller times out or is cancelled; on asyncio it is a "
            "plain loop task, since anyio's start_soon cost as much again. Handing the token "
            "back from the worker thread instead would drop the runner, but the token would "
            "then return before anyio's worker is idle again, so the next call could start "
            "one thread beyond the budget; closing the rest needs a hook in anyio's worker "
            "pool.",
        )
    ]
    sizes = f"{params['calls']:,} calls, {params['completions']:,} completions per run"
    return Section("overhead", markdown, targets, sizes=sizes)
