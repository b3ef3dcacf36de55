"""admission: how long a request waits to hand over its work while the dispatcher is busy.

1,000 completions are admitted and pending, and all 32 threads are busy (every job blocks
on a gate until the measurement ends). Then each call is timed on its own, with a pause of
about a millisecond between calls, as requests would arrive: ``submit_nowait``, then
``await submit``, then ``submit_nowait`` once ``max_pending`` is reached (it raises
``Overloaded``). The seed's fix is measured alike: 7 ``ThreadPoolExecutor.submit`` calls per
completion with 7,000 items queued.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio

import afterwork as aw

from ._chaos import MAX_THREADS, Conversation
from ._harness import Config, Result, Section, Target, fmt, med, percentile, run_interleaved, table

E = TypeVar("E", bound=Conversation)

JOBS = 7
GAP_S = 0.001


class FullCollections:
    """Times each full (generation 2) garbage collection while in use."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)


def _stats(latencies: list[float], prefix: str) -> Result:
    return {
        f"{prefix}_p50_us": percentile(latencies, 50) * 1e6,
        f"{prefix}_p99_us": percentile(latencies, 99) * 1e6,
        f"{prefix}_max_us": max(latencies) * 1e6,
    }


def gated_pipeline(gate: threading.Event, event: type[E]) -> aw.Pipeline[E]:
    """7 sync jobs that each block until ``gate`` is set."""
    pipeline = aw.Pipeline("gated", event=event, key=lambda e: e.id)
    for k in range(JOBS):
        pipeline.job(name=f"job{k}")(lambda e: gate.wait())
    return pipeline


async def _afterwork(pending: int, calls: int) -> Result:
    gate = threading.Event()
    pipeline = gated_pipeline(gate, Conversation)
    ids = iter(range(10**9))
    result: Result = {}
    # drain_timeout=0: what is still queued at the end is cancelled, not run; only the
    # admission calls are measured.
    dispatcher = aw.Dispatcher(
        max_threads=MAX_THREADS, max_pending=pending + 2 * calls, drain_timeout=0
    )
    async with dispatcher:
        for _ in range(pending):
            dispatcher.submit_nowait(pipeline, Conversation(id=next(ids)))
        # stats() is a snapshot with nothing to wait on: poll it.
        while dispatcher.stats().threads_busy < MAX_THREADS:  # noqa: ASYNC110
            await anyio.sleep(0.005)
        with FullCollections() as collections:
            for name in ("submit_nowait", "submit", "overloaded"):
                result |= await _timed_calls(dispatcher, pipeline, name, calls, ids)
        result["full_gc_count"] = len(collections.pauses)
        result["full_gc_max_us"] = max(collections.pauses, default=0.0) * 1e6
        result["busy_at_end"] = dispatcher.stats().threads_busy
        gate.set()
    return result


async def _timed_calls(
    dispatcher: aw.Dispatcher,
    pipeline: aw.Pipeline[Conversation],
    name: str,
    calls: int,
    ids: Iterator[int],
) -> Result:
    latencies = []
    for _ in range(calls):
        conv = Conversation(id=next(ids))
        began = time.perf_counter()
        if name == "submit":
            await dispatcher.submit(pipeline, conv)
        else:
            with contextlib.suppress(aw.Overloaded):
                dispatcher.submit_nowait(pipeline, conv)
        latencies.append(time.perf_counter() - began)
        await anyio.sleep(GAP_S)
    return _stats(latencies, name)


def _pool(pending: int, calls: int) -> Result:
    gate = threading.Event()
    pool = ThreadPoolExecutor(MAX_THREADS)

    def job(conv: Conversation) -> None:
        gate.wait()

    for i in range(pending):
        for _ in range(JOBS):
            pool.submit(job, Conversation(id=i))
    latencies = []
    for i in range(calls):
        conv = Conversation(id=pending + i)
        began = time.perf_counter()
        for _ in range(JOBS):
            pool.submit(job, conv)
        latencies.append(time.perf_counter() - began)
        time.sleep(GAP_S)
    gate.set()
    pool.shutdown()
    return _stats(latencies, "submit")


def measure(peer: str, params: dict[str, Any]) -> Result:
    pending, calls = params["pending"], params["calls"]
    if peer == "pool":
        return _pool(pending, calls)

    async def main() -> Result:
        return await _afterwork(pending, calls)

    return anyio.run(main)


def run(config: Config) -> Section:
    params = {"pending": config.pick(smoke=50, quick=1_000, full=1_000)}
    params["calls"] = config.pick(smoke=20, quick=200, full=1_000)
    results = run_interleaved("admission", ["afterwork", "pool"], params, config.repeats)
    aw_runs, pool_runs = results["afterwork"], results["pool"]
    rows = [
        [f"afterwork `{name}`" + (" (raises Overloaded)" if name == "overloaded" else "")]
        + [fmt(med(aw_runs, f"{name}_{stat}_us"), 1) for stat in ("p50", "p99", "max")]
        for name in ("submit_nowait", "submit", "overloaded")
    ]
    rows.append(
        ["`ThreadPoolExecutor.submit` x 7"]
        + [fmt(med(pool_runs, f"submit_{stat}_us"), 1) for stat in ("p50", "p99", "max")]
    )
    markdown = "\n\n".join(
        [
            "## admission",
            f"{params['pending']:,} completions pending, 32 threads busy; {params['calls']:,} "
            "calls of each kind per run, about 1 ms apart. Medians over runs of each run's "
            "p50, p99 and max.",
            table(["call", "p50 (µs)", "p99 (µs)", "max (µs)"], rows),
            "`await submit` always passes through the event loop once (anyio's semaphore "
            "checkpoints even when a slot is free), so its latency includes whatever other "
            "tasks were ready to run at that moment.",
            f"Full garbage collections during the afterwork measurement: "
            f"{fmt(med(aw_runs, 'full_gc_count'), 0)}, the longest taking "
            f"{fmt(med(aw_runs, 'full_gc_max_us') / 1000, 1)} ms (medians over runs). A full "
            "collection scans every object the pending completions hold (see memory) and "
            "lands on whichever call happens to be running: a max far above the p99 is one "
            "of these.",
        ]
    )
    p99 = med(aw_runs, "submit_nowait_p99_us")
    targets = [
        Target(
            f"`submit_nowait` p99 < 1 ms with {params['pending']:,} pending",
            f"p99 {fmt(p99, 1)} µs (max {fmt(med(aw_runs, 'submit_nowait_max_us'), 1)} µs)",
            p99 < 1000,
        )
    ]
    sizes = f"{params['pending']:,} pending, {params['calls']:,} calls of each kind per run"
    return Section("admission", markdown, targets, sizes=sizes)
