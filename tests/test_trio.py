"""The core is anyio-native: the same guarantees hold on the trio backend."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

import afterwork as aw
from afterwork.testing import ThreadSampler

from .helpers import Ev, Gate, make_pipeline, wait_until
from .test_budget import seed_pipeline


def test_seed_scenario_holds_the_budget_on_trio() -> None:
    """50 completions x 7 blocking jobs stay within max_threads threads on trio (G1)."""
    running = Gate()
    pipeline = seed_pipeline((0.001, 0.003), running)

    async def main() -> aw.Stats:
        async with aw.Dispatcher(max_threads=8) as dispatcher:
            handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(50)]
            for h in handles:
                assert (await h.wait()).ok
            return dispatcher.stats()

    with ThreadSampler(interval=0.0005) as sampler:
        stats = anyio.run(main, backend="trio")
    assert stats.succeeded == 350
    assert stats.threads_peak == 8
    # trio keeps idle worker threads across runs, and the sampler does not count threads it
    # saw at its start: the count of jobs running at once covers that case.
    assert running.peak == 8
    assert sampler.peak_above_baseline <= 8


def test_timed_out_threads_keep_their_tokens_on_trio() -> None:
    """On trio too, a timed-out blocking job's thread holds its token until it returns."""
    gate = Gate()
    pipeline = make_pipeline()
    pipeline.job(name="hang", timeout=0.01)(gate.block)

    async def main() -> tuple[list[aw.JobStatus], int, int]:
        async with aw.Dispatcher(max_threads=2) as dispatcher:
            handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(4)]
            # trio starts tasks in random order: whichever two got threads time out first.
            await wait_until(lambda: sum(h.done() for h in handles) == 2, "two time out")
            first = [(await h.wait()).outcomes[0].status for h in handles if h.done()]
            stuck = dispatcher.stats().threads_stuck
            entered = gate.entered
            gate.open()
            for h in handles:
                await h.wait()
            return first, stuck, entered

    with ThreadSampler() as sampler:
        first, stuck, entered = anyio.run(main, backend="trio")
    assert first == ["timed_out", "timed_out"]
    assert (stuck, entered) == (2, 2)
    assert sampler.peak_above_baseline <= 2


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_a_thread_the_os_refuses_is_that_jobs_failure_on_trio(
    monkeypatch: pytest.MonkeyPatch, timeout: float | None
) -> None:
    """On trio too, a job whose thread cannot start fails with that error, at once, and gives
    its token back."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("can't start new thread")

    pipeline = make_pipeline("refused")
    pipeline.job(name="blocking", timeout=timeout)(lambda event: None)

    async def main() -> tuple[aw.Report, int, aw.Report]:
        async with aw.Dispatcher(max_threads=1) as dispatcher:
            monkeypatch.setattr("trio._threads.start_thread_soon", refuse)
            refused = await dispatcher.run(pipeline, Ev(id=1))
            busy = dispatcher.stats().threads_busy
            monkeypatch.undo()
            return refused, busy, await dispatcher.run(pipeline, Ev(id=2))

    refused, busy, accepted = anyio.run(main, backend="trio")
    assert refused.outcome("blocking").status == "failed"
    assert refused.outcome("blocking").error == "RuntimeError: can't start new thread"
    assert busy == 0
    assert accepted.ok


def test_fan_out_and_isolation_on_trio() -> None:
    """On trio, children share a one-thread budget and a failure stays in its own outcome."""
    pipeline = make_pipeline()

    @pipeline.job
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        for n in range(8):
            ctx.spawn(time.sleep, 0.001, name=f"c{n}")

    @pipeline.job
    def fails(event: Ev) -> None:
        raise ValueError("trio failure")

    async def main() -> list[aw.Report]:
        async with aw.Dispatcher(max_threads=1) as dispatcher:
            handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(5)]
            await wait_until(lambda: dispatcher.stats().completed == 5, "all finish")
            return [await h.wait() for h in handles]

    for report in anyio.run(main, backend="trio"):
        assert report.outcome("fails").error == "ValueError: trio failure"
        assert [o.status for o in report.outcomes if o.job.startswith("parent")] == [
            "succeeded"
        ] * 9


def test_the_journal_admits_and_replays_on_trio(tmp_path: Path) -> None:
    """On trio, submit waits for the journal, and a restart replays what a drain left."""
    path = tmp_path / "journal.db"
    runs: list[str] = []
    pipeline = make_pipeline("tj")

    @pipeline.job
    async def job(event: Ev, ctx: aw.JobContext) -> None:
        if not runs:
            runs.append("first run hangs")
            await anyio.sleep_forever()
        runs.append(ctx.idempotency_key)

    async def first() -> None:
        async with aw.Dispatcher(drain_timeout=0, journal=path) as dispatcher:
            await dispatcher.submit(pipeline, Ev(id=1))

    async def second() -> int:
        async with aw.Dispatcher(journal=path, pipelines=[pipeline]) as dispatcher:
            await wait_until(lambda: dispatcher.stats().completed == 1, "replayed")
            return dispatcher.stats().succeeded

    anyio.run(first, backend="trio")
    assert anyio.run(second, backend="trio") == 1
    assert runs == ["first run hangs", "tj:1:job"]
