"""journal: what durability costs at admission, and how long a restart takes to replay.

Admission: ``await submit`` of completions carrying a 1 KiB event, one at a time (each call
waits for its own commit) and from 50 concurrent producers (their admissions share commits),
with the journal off and on. All 32 threads are busy on gated jobs meanwhile, as in a
service under load. Replay: a journal left holding N unfinished completions by a drain with
``drain_timeout=0``, then a fresh dispatcher, timed from entry until all N are re-admitted.

Delayed work (G11): ``await submit(..., delay=3600)`` one at a time, journal off and on, into
a dispatcher whose ``max_pending`` is 1, so the bench also shows that delayed work holds no
pending place. Parking: completions whose one job answers ``RetryLater(3600)`` (a 429 with a
long ``Retry-After``), submitted with ``max_pending=32``: timed until every one has parked,
which each can only do by giving its place back.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

import afterwork as aw

from ._harness import Config, Result, Section, Target, fmt, med, percentile, run_interleaved, table

JOBS = 7
PRODUCERS = 50
#: Long enough that nothing delayed or parked comes due during a run.
LATER_S = 3600.0
PARK_ROOM = 32


class Work(BaseModel):
    id: int
    payload: str


def _pipeline(gate: threading.Event) -> aw.Pipeline[Work]:
    pipeline = aw.Pipeline("journal-bench", event=Work, key=lambda w: w.id)
    for k in range(JOBS):
        pipeline.job(name=f"job{k}")(lambda w: gate.wait())
    return pipeline


def _work(i: int) -> Work:
    return Work(id=i, payload="x" * 1024)


async def _admission(journal: Path | None, n: int, producers: int) -> Result:
    gate = threading.Event()
    pipeline = _pipeline(gate)
    latencies: list[float] = []
    dispatcher = aw.Dispatcher(max_pending=n + 1, drain_timeout=0, journal=journal)
    async with dispatcher:

        async def produce(first: int) -> None:
            for i in range(first, n, producers):
                began = time.perf_counter()
                await dispatcher.submit(pipeline, _work(i))
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for first in range(producers):
                tg.start_soon(produce, first)
        elapsed = time.perf_counter() - began
        gate.set()
    return {
        "p50_us": percentile(latencies, 50) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "per_s": n / elapsed,
    }


async def _leave_unfinished(path: Path, n: int) -> None:
    pipeline = aw.Pipeline("journal-bench", event=Work, key=lambda w: w.id)
    for k in range(JOBS):

        async def hang(work: Work) -> None:
            await anyio.sleep_forever()

        pipeline.job(name=f"job{k}")(hang)
    async with aw.Dispatcher(max_pending=n, drain_timeout=0, journal=path) as dispatcher:
        for i in range(n - 1):
            dispatcher.submit_nowait(pipeline, _work(i))
        await dispatcher.submit(pipeline, _work(n - 1))  # the last commit covers them all


async def _replay(n: int) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.db"
        await _leave_unfinished(path, n)
        gate = threading.Event()
        pipeline = _pipeline(gate)
        began = time.perf_counter()
        dispatcher = aw.Dispatcher(max_pending=n, drain_timeout=0, journal=path,
                                   pipelines=[pipeline])  # fmt: skip
        async with dispatcher:
            entered = time.perf_counter() - began
            # stats() is a snapshot with nothing to wait on: poll it.
            while dispatcher.stats().admitted < n:  # noqa: ASYNC110
                await anyio.sleep(0.005)
            readmitted = time.perf_counter() - began
            gate.set()
    return {"enter_ms": entered * 1e3, "replay_s": readmitted}


async def _delayed(journal: Path | None, n: int) -> Result:
    gate = threading.Event()
    pipeline = _pipeline(gate)
    latencies: list[float] = []
    dispatcher = aw.Dispatcher(max_pending=1, max_delayed=n, drain_timeout=0, journal=journal)
    async with dispatcher:
        began = time.perf_counter()
        for i in range(n):
            start = time.perf_counter()
            await dispatcher.submit(pipeline, _work(i), delay=LATER_S)
            latencies.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - began
        stats = dispatcher.stats()
        if (stats.delayed, stats.pending) != (n, 0):
            raise RuntimeError(f"expected {n} delayed and 0 pending, got {stats!r}")
    return {
        "p50_us": percentile(latencies, 50) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "per_s": n / elapsed,
    }


async def _parked(journal: Path | None, n: int) -> Result:
    pipeline = aw.Pipeline("journal-bench-park", event=Work, key=lambda w: w.id)

    @pipeline.job(retries=1)
    async def webhook(work: Work) -> None:
        raise aw.RetryLater(LATER_S, "429 Too Many Requests")

    dispatcher = aw.Dispatcher(
        max_pending=PARK_ROOM, max_delayed=n, park_after=5.0, drain_timeout=0, journal=journal
    )
    async with dispatcher:
        began = time.perf_counter()
        for i in range(n):
            await dispatcher.submit(pipeline, _work(i))  # waits for a place when all are taken
        # stats() is a snapshot with nothing to wait on: poll it.
        while dispatcher.stats().deferred < n:  # noqa: ASYNC110
            await anyio.sleep(0.001)
        elapsed = time.perf_counter() - began
        stats = dispatcher.stats()
    return {"per_s": n / elapsed, "pending": stats.pending, "delayed": stats.delayed}


def measure(peer: str, params: dict[str, Any]) -> Result:
    async def main() -> Result:
        result: Result = {}
        with tempfile.TemporaryDirectory() as tmp:
            journal = Path(tmp) / "journal.db" if peer == "on" else None
            for label, producers in (("serial", 1), ("concurrent", PRODUCERS)):
                stats = await _admission(journal, params["completions"], producers)
                result.update({f"{label}_{k}": v for k, v in stats.items()})
                if journal is not None:
                    journal.unlink()
            for label, scenario in (("delayed", _delayed), ("parked", _parked)):
                stats = await scenario(journal, params["completions"])
                result.update({f"{label}_{k}": v for k, v in stats.items()})
                if journal is not None:
                    journal.unlink()
        if peer == "on":
            result.update(await _replay(params["replay"]))
        return result

    return anyio.run(main)


def run(config: Config) -> Section:
    params = {
        "completions": config.pick(smoke=50, quick=1_000, full=1_000),
        "replay": config.pick(smoke=100, quick=2_000, full=10_000),
    }
    results = run_interleaved("journal", ["off", "on"], params, config.repeats)
    off, on = results["off"], results["on"]
    rows = []
    for label in ("serial", "concurrent"):
        for name, runs in (("off", off), ("on", on)):
            rows.append(
                [
                    f"{label} ({1 if label == 'serial' else PRODUCERS} producer"
                    f"{'' if label == 'serial' else 's'}), journal {name}",
                    fmt(med(runs, f"{label}_p50_us"), 1),
                    fmt(med(runs, f"{label}_p99_us"), 1),
                    fmt(med(runs, f"{label}_per_s"), 0),
                ]
            )
    n = params["completions"]
    later = [
        [
            f"journal {name}",
            fmt(med(runs, "delayed_p50_us"), 1),
            fmt(med(runs, "delayed_p99_us"), 1),
            fmt(med(runs, "delayed_per_s"), 0),
            fmt(med(runs, "parked_per_s"), 0),
            f"{fmt(med(runs, 'parked_pending'), 0)} / {fmt(med(runs, 'parked_delayed'), 0)}",
        ]
        for name, runs in (("off", off), ("on", on))
    ]
    serial_cost = med(on, "serial_p50_us") / med(off, "serial_p50_us")
    concurrent_cost = med(off, "concurrent_per_s") / med(on, "concurrent_per_s")
    p99 = med(on, "serial_p99_us")
    markdown = "\n\n".join(
        [
            "## journal",
            f"`await submit` of {params['completions']:,} completions (1 KiB events) with 32 "
            "threads busy, one producer at a time and 50 at once, journal off and on. "
            "Medians over runs of each run's p50 and p99.",
            table(["admission", "p50 (µs)", "p99 (µs)", "admitted / s"], rows),
            f"Delayed work and parked retries (G11), {params['completions']:,} of each: "
            f"`await submit(..., delay={LATER_S:.0f})` one at a time with `max_pending=1` "
            "(delayed work holds no pending place), and completions whose only job raises "
            f"`RetryLater({LATER_S:.0f})`, submitted with `max_pending={PARK_ROOM}`: each parks "
            "its job, finishes and gives its place back, so the next can be admitted.",
            table(
                [
                    "",
                    "delayed submit p50 (µs)",
                    "p99 (µs)",
                    "delayed / s",
                    "parked / s",
                    "then pending / delayed",
                ],
                later,
            ),
            f"Replay of {params['replay']:,} unfinished completions: entering the dispatcher "
            f"took {fmt(med(on, 'enter_ms'), 1)} ms (start-up does not wait for the backlog), "
            f"and all were re-admitted after {fmt(med(on, 'replay_s'), 2)} s.",
            "With the journal on, each `submit` waits for its own commit: the admission is "
            "handed to the writer thread, committed (SQLite WAL, about 30 µs for the commit "
            "itself here), and the caller is woken by a loop callback. Two thread handoffs "
            "under the GIL dominate a lone producer's latency; concurrent producers share "
            "commits (group commit), which is where the writer earns its keep.",
        ]
    )
    targets = [
        Target(
            "the journal costs at most 2x the admission cost of no journal",
            f"one producer: p50 {serial_cost:.1f}x; 50 producers: throughput "
            f"{concurrent_cost:.1f}x lower",
            serial_cost <= 2 and concurrent_cost <= 2,
            "A lone producer pays two thread handoffs per call, each waiting for the GIL "
            "while the loop or the workers hold it. Writing the admission on the loop thread "
            "(a 30 µs WAL append, checkpoints left to a thread) would close it, at the price "
            "of disk I/O on the event loop, which the design rules out.",
        ),
        Target(
            "`submit` p99 < 2 ms with the journal on",
            f"one producer: p99 {fmt(p99, 1)} µs",
            p99 < 2000,
            "The p99 is GIL hand-off latency (the interpreter's 5 ms switch interval) when "
            "the writer thread wakes while another thread holds the GIL.",
        ),
    ]
    runs = [*off, *on]
    parked_all = all(r["parked_pending"] == 0 and r["parked_delayed"] == n for r in runs)
    targets.append(
        Target(
            "delayed work and parked retries hold no pending place (G11)",
            f"{n:,} delayed with max_pending 1, and {n:,} parked through {PARK_ROOM} places, "
            f"leaving 0 pending, in every run (journal off and on); parking "
            f"{fmt(med(off, 'parked_per_s'), 0)} / {fmt(med(on, 'parked_per_s'), 0)} per s",
            parked_all,
            "" if parked_all else "A parked job kept its completion's place.",
        )
    )
    sizes = (
        f"{params['completions']:,} admissions per mode, replay of {params['replay']:,} "
        "unfinished completions"
    )
    return Section("journal", markdown, targets, sizes=sizes)
