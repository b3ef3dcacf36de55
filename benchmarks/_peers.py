"""The chaos scenario as each peer would write it, idiomatically.

Each ``run_*`` launches the plan's completions on schedule, records how long each launching
call took, and returns once every completion has an outcome. Sync peers record an outcome when
each blocking call returns (nothing else observes it); async peers when each completion's jobs
have all finished or timed out.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio

import afterwork as aw

from ._chaos import MAX_THREADS, Conversation, Leaf, Plan, Tracker

Latencies = list[float]
Peer = Callable[[Plan, Tracker, Latencies], None]


def _launch_sync(plan: Plan, latencies: Latencies, launch: Callable[[int], None]) -> None:
    start = time.perf_counter()
    for c in range(plan.scenario.completions):
        time.sleep(max(0.0, start + c * plan.scenario.spacing_s - time.perf_counter()))
        began = time.perf_counter()
        launch(c)
        latencies.append(time.perf_counter() - began)


async def _next_slot(plan: Plan, start: float, c: int) -> None:
    await anyio.sleep(max(0.0, start + c * plan.scenario.spacing_s - time.perf_counter()))


# -- 1. raw threads: the seed's "before" ------------------------------------------------------


def run_raw(plan: Plan, tracker: Tracker, latencies: Latencies) -> None:
    def work(leaf: Leaf) -> None:
        leaf.block()
        tracker.record()

    def personas(leaves: list[Leaf]) -> None:
        # The seed's update_personas_async: one thread per persona, joined.
        threads = [threading.Thread(target=work, args=(leaf,)) for leaf in leaves]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def launch(c: int) -> None:
        for k, leaves in enumerate(plan.jobs[c]):
            if plan.is_parent(k):
                threading.Thread(target=personas, args=(leaves,)).start()
            else:
                threading.Thread(target=work, args=(leaves[0],)).start()

    _launch_sync(plan, latencies, launch)
    tracker.done.wait()


# -- 2. ThreadPoolExecutor(32): the seed's fix -------------------------------------------------


def run_pool(plan: Plan, tracker: Tracker, latencies: Latencies) -> None:
    pool = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="conv-bg")

    def work(leaf: Leaf) -> None:
        leaf.block()
        tracker.record()

    def personas(leaves: list[Leaf]) -> None:
        # The fix's _update_personas_via_pool: each persona goes to the shared pool.
        for leaf in leaves:
            pool.submit(work, leaf)

    def launch(c: int) -> None:
        for k, leaves in enumerate(plan.jobs[c]):
            if plan.is_parent(k):
                pool.submit(personas, leaves)
            else:
                pool.submit(work, leaves[0])

    _launch_sync(plan, latencies, launch)
    tracker.done.wait()
    pool.shutdown(wait=True)


# -- 3 and 5. asyncio.to_thread, bare and under aiojobs ----------------------------------------


async def _call(plan: Plan, tracker: Tracker, leaf: Leaf) -> None:
    if not plan.scenario.hang:
        await asyncio.to_thread(leaf.block)
        return
    try:
        await asyncio.wait_for(asyncio.to_thread(leaf.block), plan.scenario.timeout_s)
    except TimeoutError:
        tracker.timeout(leaf)


async def _job(plan: Plan, tracker: Tracker, leaves: list[Leaf]) -> None:
    # One leaf for an ordinary job; the persona children, gathered, for the parent.
    await asyncio.gather(*(_call(plan, tracker, leaf) for leaf in leaves))


def run_to_thread(plan: Plan, tracker: Tracker, latencies: Latencies) -> None:
    async def completion(c: int) -> None:
        await asyncio.gather(*(_job(plan, tracker, leaves) for leaves in plan.jobs[c]))
        tracker.record()

    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        for c in range(plan.scenario.completions):
            await _next_slot(plan, start, c)
            began = time.perf_counter()
            tasks.add(asyncio.create_task(completion(c)))
            latencies.append(time.perf_counter() - began)
        await asyncio.gather(*tasks)

    asyncio.run(main())


def run_aiojobs(plan: Plan, tracker: Tracker, latencies: Latencies) -> None:
    import aiojobs

    finished = asyncio.Event()

    async def job(leaves: list[Leaf]) -> None:
        await _job(plan, tracker, leaves)
        tracker.record()
        if tracker.done.is_set():
            finished.set()

    async def main() -> None:
        # Size the default executor to the scheduler's limit, so limit=32 is what binds and
        # not min(32, cores + 4), the default executor's size.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(MAX_THREADS))
        scheduler = aiojobs.Scheduler(limit=MAX_THREADS)
        start = time.perf_counter()
        for c in range(plan.scenario.completions):
            await _next_slot(plan, start, c)
            began = time.perf_counter()
            for leaves in plan.jobs[c]:
                await scheduler.spawn(job(leaves))
            latencies.append(time.perf_counter() - began)
        await finished.wait()
        await scheduler.close()

    asyncio.run(main())


# -- 4. Starlette/FastAPI BackgroundTasks: run_in_threadpool on anyio's default limiter ---------


def run_starlette(plan: Plan, tracker: Tracker, latencies: Latencies) -> None:
    from starlette.background import BackgroundTasks
    from starlette.concurrency import run_in_threadpool

    async def personas(leaves: list[Leaf]) -> None:
        async with anyio.create_task_group() as group:
            for leaf in leaves:
                group.start_soon(run_in_threadpool, leaf.block)

    async def after_response(tasks: BackgroundTasks) -> None:
        await tasks()
        tracker.record()

    async def main() -> None:
        start = time.perf_counter()
        async with anyio.create_task_group() as group:
            for c in range(plan.scenario.completions):
                await _next_slot(plan, start, c)
                began = time.perf_counter()
                tasks = BackgroundTasks()
                for k, leaves in enumerate(plan.jobs[c]):
                    if plan.is_parent(k):
                        tasks.add_task(personas, leaves)
                    else:
                        tasks.add_task(leaves[0].block)
                group.start_soon(after_response, tasks)
                latencies.append(time.perf_counter() - began)

    anyio.run(main)


# -- 6. afterwork, through run and through submit ------------------------------------------------


def pipeline_for(plan: Plan) -> aw.Pipeline[Conversation]:
    scenario = plan.scenario
    pipeline = aw.Pipeline("conversation.completed", event=Conversation, key=lambda e: e.id)
    timeout = scenario.timeout_s if scenario.hang else None
    for k in range(scenario.jobs):
        job = _parent_job(plan, k) if plan.is_parent(k) else _leaf_job(plan, k)
        pipeline.job(name=f"job{k}", timeout=timeout)(job)
    return pipeline


def _leaf_job(plan: Plan, k: int) -> Callable[[Conversation], None]:
    def job(conv: Conversation) -> None:
        plan.jobs[conv.id][k][0].block()

    return job


def _parent_job(plan: Plan, k: int) -> Callable[..., Any]:
    async def personas(conv: Conversation, ctx: aw.JobContext) -> None:
        for i, leaf in enumerate(plan.jobs[conv.id][k]):
            ctx.spawn(leaf.block, name=f"p{i}")

    return personas


def _account(plan: Plan, tracker: Tracker, c: int, report: aw.Report) -> None:
    for outcome in report.outcomes:
        if outcome.status == "timed_out":
            job, _, child = outcome.job.partition("/")
            leaves = plan.jobs[c][int(job.removeprefix("job"))]
            leaf = leaves[int(child.removeprefix("p"))] if child else leaves[0]
            tracker.timeout(leaf)
    tracker.record()


def _dispatcher() -> aw.Dispatcher:
    return aw.Dispatcher(max_threads=MAX_THREADS, max_pending=1000, drain_timeout=600)


def run_afterwork_run(plan: Plan, tracker: Tracker, latencies: Latencies) -> None:
    pipeline = pipeline_for(plan)

    async def one(dispatcher: aw.Dispatcher, conv: Conversation) -> None:
        _account(plan, tracker, conv.id, await dispatcher.run(pipeline, conv))

    async def main() -> None:
        start = time.perf_counter()
        async with _dispatcher() as dispatcher, anyio.create_task_group() as group:
            for c in range(plan.scenario.completions):
                await _next_slot(plan, start, c)
                conv = Conversation(id=c)
                began = time.perf_counter()
                group.start_soon(one, dispatcher, conv)
                latencies.append(time.perf_counter() - began)

    anyio.run(main)


def run_afterwork_submit(plan: Plan, tracker: Tracker, latencies: Latencies) -> None:
    pipeline = pipeline_for(plan)

    async def wait(handle: aw.Handle, c: int) -> None:
        _account(plan, tracker, c, await handle.wait())

    async def main() -> None:
        start = time.perf_counter()
        async with _dispatcher() as dispatcher, anyio.create_task_group() as group:
            for c in range(plan.scenario.completions):
                await _next_slot(plan, start, c)
                conv = Conversation(id=c)
                began = time.perf_counter()
                handle = await dispatcher.submit(pipeline, conv)
                latencies.append(time.perf_counter() - began)
                group.start_soon(wait, handle, c)

    anyio.run(main)


# name -> (label, runner, what records one outcome: "leaf", "job" or "completion", can time out)
PEERS: dict[str, tuple[str, Peer, str, bool]] = {
    "raw": ("raw threading.Thread", run_raw, "leaf", False),
    "pool": ("ThreadPoolExecutor(32)", run_pool, "leaf", False),
    "to_thread": ("asyncio.to_thread", run_to_thread, "completion", True),
    "starlette": ("Starlette BackgroundTasks", run_starlette, "completion", False),
    "aiojobs": ("aiojobs Scheduler(limit=32)", run_aiojobs, "job", True),
    "afterwork_run": ("afterwork run", run_afterwork_run, "completion", True),
    "afterwork_submit": ("afterwork submit", run_afterwork_submit, "completion", True),
}
