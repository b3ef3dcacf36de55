"""memory: what admitted work costs in RSS, and what is left once it has finished.

10,000 completions are admitted while every thread is blocked on a gate, each with an event
carrying a 10 KB payload of its own. RSS is read before the events exist and once every
completion has started its jobs, so the growth per completion counts the payload itself plus
whatever the dispatcher holds for it. The seed's fix is measured alike, queuing 7 items per
completion (its natural shape) and, for reference, one.

Then the gate opens, the work finishes, the handles are dropped, and a second pass traced by
``tracemalloc`` counts what is still alive: events, completions, and traced bytes.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio

import afterwork as aw

from ._chaos import Conversation
from ._harness import (
    Config,
    Result,
    Section,
    Target,
    current_rss_bytes,
    fmt,
    med,
    mib,
    peak_rss_bytes,
    run_interleaved,
    table,
)
from .admission import JOBS, gated_pipeline

PAYLOAD_CHARS = 10_000
MAX_THREADS = 32


class Transcript(Conversation):
    """An event with a payload of its own, like a conversation's transcript."""

    text: str


def transcript(i: int) -> Transcript:
    return Transcript(id=i, text=os.urandom(PAYLOAD_CHARS // 2).hex())


def alive(kind: type) -> int:
    gc.collect()
    return sum(isinstance(o, kind) for o in gc.get_objects())


def _completion_type() -> type:
    # Private, and only for counting: is any completion object still alive?
    from afterwork._completion import Completion

    return Completion


async def _afterwork_pass(n: int, *, hold: bool) -> Result:
    gate = threading.Event()
    pipeline = gated_pipeline(gate, Transcript)
    result: Result = {}
    gc.collect()
    objects_before, traced_before = len(gc.get_objects()), tracemalloc.get_traced_memory()[0]
    async with aw.Dispatcher(max_threads=MAX_THREADS, max_pending=n) as dispatcher:
        gate.set()  # warm up: start the worker threads before the baseline
        await dispatcher.run(pipeline, transcript(-1))
        gate.clear()
        gc.collect()
        rss_before = current_rss_bytes()
        handles = [dispatcher.submit_nowait(pipeline, transcript(i)) for i in range(n)]
        # Wait until every admitted completion is either running, with all its jobs started
        # and queued for a token, or queued for one of max_active places. stats() is a
        # snapshot with nothing to wait on: poll it.
        started = min(n, dispatcher.max_active)
        while dispatcher.stats().running < started * JOBS:  # noqa: ASYNC110
            await anyio.sleep(0.01)
        if hold:
            gc.collect()
            result["growth_per_completion"] = (current_rss_bytes() - rss_before) / n
        gate.set()
        for handle in handles:
            await handle.wait()
        del handles, handle
        result["events_alive"] = alive(Transcript)
        result["completions_alive"] = alive(_completion_type())
    del dispatcher
    gc.collect()
    result["objects_retained_per_completion"] = (len(gc.get_objects()) - objects_before) / n
    result["traced_retained_per_completion"] = (
        tracemalloc.get_traced_memory()[0] - traced_before
    ) / n
    return result


def _afterwork(n: int, retention_n: int) -> Result:
    async def main() -> Result:
        result = await _afterwork_pass(n, hold=True)
        result["peak_rss"] = peak_rss_bytes()
        # The first traced pass grows hash tables that outlive it (asyncio's set of all tasks,
        # anyio's task states) to the peak of pending work; the second shows what each
        # completion leaves behind once those have their size.
        tracemalloc.start()
        await _afterwork_pass(retention_n, hold=False)
        traced = await _afterwork_pass(retention_n, hold=False)
        tracemalloc.stop()
        return result | {f"retention_{key}": value for key, value in traced.items()}

    return anyio.run(main)


def _pool(n: int, per_completion: int) -> Result:
    gate = threading.Event()
    pool = ThreadPoolExecutor(MAX_THREADS)

    def job(event: Transcript) -> None:
        gate.wait()

    gate.set()  # warm up: start the worker threads before the baseline
    for _ in range(MAX_THREADS):
        pool.submit(job, transcript(-1)).result()
    gate.clear()
    gc.collect()
    rss_before = current_rss_bytes()
    for i in range(n):
        event = transcript(i)
        for _ in range(per_completion):
            pool.submit(job, event)
    del event
    gc.collect()
    growth = (current_rss_bytes() - rss_before) / n
    gate.set()
    pool.shutdown(wait=True)
    return {
        "growth_per_completion": growth,
        "peak_rss": peak_rss_bytes(),
        "events_alive": alive(Transcript),
    }


def measure(peer: str, params: dict[str, Any]) -> Result:
    n = params["completions"]
    if peer == "afterwork":
        return _afterwork(n, params["retention_completions"])
    return _pool(n, JOBS if peer == "pool7" else 1)


PEERS = {
    "afterwork": "afterwork, 7 sync jobs per completion",
    "pool7": "ThreadPoolExecutor(32), 7 queued items per completion",
    "pool1": "ThreadPoolExecutor(32), 1 queued item per completion",
}


def run(config: Config) -> Section:
    params = {
        "completions": config.pick(smoke=200, quick=1_000, full=10_000),
        "retention_completions": config.pick(smoke=50, quick=200, full=2_000),
    }
    results = run_interleaved("memory", list(PEERS), params, config.repeats)
    payload = sys.getsizeof(transcript(0).text)
    rows = [
        [
            label,
            fmt(med(results[peer], "growth_per_completion") / 1024, 1),
            f"{med(results[peer], 'growth_per_completion') / payload:.2f}x",
            mib(med(results[peer], "peak_rss")),
            fmt(med(results[peer], "events_alive"), 0),
        ]
        for peer, label in PEERS.items()
    ]
    aw_runs = results["afterwork"]
    per = med(aw_runs, "growth_per_completion")
    retained_events = max(r["events_alive"] + r["retention_events_alive"] for r in aw_runs)
    retained_completions = max(
        r["completions_alive"] + r["retention_completions_alive"] for r in aw_runs
    )
    traced = med(aw_runs, "retention_traced_retained_per_completion")
    objects = med(aw_runs, "retention_objects_retained_per_completion")
    markdown = "\n\n".join(
        [
            "## memory",
            f"{params['completions']:,} admitted completions, each event carrying "
            f"{payload:,} bytes of payload (a {PAYLOAD_CHARS:,}-character string). Growth is "
            "RSS once everything is admitted and waiting, minus RSS before, per completion.",
            table(
                [
                    "peer",
                    "RSS growth per completion (KiB)",
                    "vs payload",
                    "peak RSS (MiB)",
                    "events alive after",
                ],
                rows,
            ),
            f"After completion: {retained_events} events and {retained_completions} completion "
            "objects alive once the handles are dropped, in the main pass and in passes of "
            f"{params['retention_completions']:,} completions under `tracemalloc`. Traced "
            f"memory grew by {fmt(traced, 1)} bytes and the garbage collector's object count "
            f"by {fmt(objects, 3)} per completion in the second such pass, measured after "
            "the dispatcher closed (the first pass grows long-lived hash tables, such as "
            "asyncio's set of all tasks, to the peak of pending work).",
        ]
    )
    targets = [
        Target(
            "memory per admitted completion <= 2x its payload",
            f"{fmt(per / 1024, 1)} KiB for a {fmt(payload / 1024, 1)} KiB payload: "
            f"{per / payload:.2f}x",
            per <= 2 * payload,
            "Up to max_active (256) completions run at once, each with 7 job tasks and, per "
            "job waiting for a token, a runner task and a call record: about 14 KiB a job. "
            "Completions beyond that wait in a queue holding little more than their event. "
            "So the cost per completion falls as the backlog grows past 256 (see --full, "
            "10,000 admitted); a smaller max_active, or lighter job tasks, would lower it "
            "further.",
        ),
        Target(
            "zero events retained after completion",
            f"{retained_events} events, {retained_completions} completions alive; "
            f"{fmt(traced, 1)} traced bytes, {fmt(objects, 3)} objects per completion",
            retained_events == 0,
        ),
    ]
    sizes = (
        f"{params['completions']:,} admitted completions, "
        f"{params['retention_completions']:,} per retention pass"
    )
    return Section("memory", markdown, targets, sizes=sizes)
