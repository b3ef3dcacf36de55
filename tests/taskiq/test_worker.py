"""The Redis scale-out's Worker, in this process (issue 11, "Semantics").

Each test runs ``Worker(url, pipelines, ...).run()`` in a task group against a Redis server of
its own (``redis_url``), sends with a ``Producer``, and looks at Redis itself (the stream
``afterwork``, its group ``afterwork``, the dead letters ``afterwork:dead``, the job outcomes
``afterwork:afterwork:jobs:{id}``) to check what a worker promises: every job of every
completion runs and is reported; a redelivered completion re-runs only its unfinished jobs;
a worker reads only what it can start now; claims of running messages are renewed and those
of dead consumers reclaimed on a timer; poison and unreadable messages go to the dead letters;
a clean stop leaves the group and hands back what it cut; acknowledged entries are trimmed;
a worker's OS threads stay within its budget.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from structlog.typing import EventDict
from taskiq import TaskiqMessage

import afterwork as aw
from afterwork.taskiq import Producer, Worker
from afterwork.taskiq._wire import Keys
from afterwork.taskiq._worker import trim_acknowledged
from afterwork.testing import Gate, ThreadSampler, wait_until
from tests.conftest import named
from tests.helpers import Ev, make_pipeline
from tests.taskiq.conftest import RedisServer

STREAM = "afterwork"
GROUP = "afterwork"
DEAD = "afterwork:dead"
UNFINISHED = "afterwork:afterwork:unfinished"
#: Bounds every wait on workers and Redis: a safety net, not a measurement.
LIMIT = 30.0


def jobs_key(completion_id: str) -> str:
    return f"afterwork:afterwork:jobs:{completion_id}"


# -- helpers ----------------------------------------------------------------------------------


@asynccontextmanager
async def running(*workers: Worker, limit: float = 45.0) -> AsyncIterator[None]:
    """Run ``workers`` for the block; then ``stop()`` them and wait until each ``run``
    returned (drained, handed back, left the group), all within ``limit`` seconds."""
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as group:
            for worker in workers:
                group.start_soon(worker.run)
            try:
                yield
            finally:
                for worker in workers:
                    worker.stop()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = LIMIT) -> None:
    """Poll the async ``check`` (Redis state: no event to await) until it is true."""
    deadline = anyio.current_time() + limit
    while not await check():
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await anyio.sleep(0.02)


class Runs:
    """What the jobs did, from any thread: (key, job) started and finished, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started: list[tuple[str, str]] = []
        self.ended: list[tuple[str, str]] = []
        self.idempotency: list[str] = []
        self.started_at: dict[tuple[str, str], float] = {}

    def start(self, ctx: aw.JobContext) -> None:
        with self._lock:
            self.started.append((ctx.key, ctx.job))
            self.idempotency.append(ctx.idempotency_key)
            self.started_at.setdefault((ctx.key, ctx.job), time.monotonic())

    def end(self, ctx: aw.JobContext) -> None:
        with self._lock:
            self.ended.append((ctx.key, ctx.job))

    def starts(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self.started)


def recording(name: str, runs: Runs, jobs: tuple[str, ...] = ("a", "b", "c")) -> aw.Pipeline[Ev]:
    """A pipeline whose jobs only record that they ran."""
    pipeline = make_pipeline(name)
    for job_name in jobs:

        def job(event: Ev, ctx: aw.JobContext) -> None:
            runs.start(ctx)
            runs.end(ctx)

        pipeline.job(name=job_name)(job)
    return pipeline


async def pending_of(redis: Redis, consumer: str) -> int:
    summary = await redis.xpending(STREAM, GROUP)
    for entry in summary["consumers"]:
        if entry["name"] in (consumer, consumer.encode()):
            return int(entry["pending"])
    return 0


async def consumers(redis: Redis) -> set[str]:
    """The group's consumers (none before the stream and group exist)."""
    try:
        found = await redis.xinfo_consumers(STREAM, GROUP)
    except ResponseError:  # no such key / no such group yet
        return set()
    return {_text(c["name"]) for c in found}


async def entries(
    redis: Redis, stream: str = STREAM, first: str = "-", last: str = "+"
) -> list[tuple[str, dict[bytes, bytes]]]:
    """The stream's entries: (id, fields)."""
    found: Any = await redis.xrange(stream, first, last)
    return [(_text(entry_id), dict(fields)) for entry_id, fields in found]


async def stream_ids(redis: Redis, stream: str = STREAM) -> list[str]:
    return [entry_id for entry_id, _ in await entries(redis, stream)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# -- every job runs, once ---------------------------------------------------------------------


async def test_every_job_of_every_completion_runs_once_and_is_reported(
    redis_url: str, redis: Redis
) -> None:
    """20 completions of 3 jobs through one worker: each job runs exactly once, each producer
    gets an ok report naming all 3, the worker's on_report saw the same 20, and afterwards
    nothing is pending, unfinished or left in the job-outcome hashes."""
    runs = Runs()
    pipeline = recording("every", runs)
    reports: list[aw.Report] = []
    worker = Worker(redis_url, [pipeline], max_threads=4, consumer="w", on_report=reports.append)
    async with Producer(redis_url, pipelines=[pipeline]) as producer, running(worker):
        handles = [await producer.submit(pipeline, Ev(id=i)) for i in range(20)]
        got = [await handle.wait(timeout=LIMIT) for handle in handles]
    for i, report in enumerate(got):
        assert (report.key, report.ok, report.replayed) == (str(i), True, False)
        assert sorted(o.job for o in report.outcomes) == ["a", "b", "c"]
        assert all(o.status is aw.JobStatus.SUCCEEDED and o.attempts == 1 for o in report.outcomes)
    assert runs.starts() == Counter({(str(i), j): 1 for i in range(20) for j in "abc"})
    assert sorted(reports, key=lambda r: int(r.key)) == got
    assert worker.counts["read"] == worker.counts["acked"] == 20
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    assert await redis.hgetall(UNFINISHED) == {}
    assert await redis.keys("afterwork:afterwork:jobs:*") == []


# -- redelivery re-runs only what did not finish ----------------------------------------------


async def test_a_redelivered_completion_reruns_only_its_unfinished_jobs(
    redis_url: str, redis: Redis
) -> None:
    """With outcomes recorded in Redis for a completion (job0 succeeded, job1 failed, job2
    started and unfinished, job3 never started), a worker runs job2 and job3 only, by the
    journal's replay rules, and the report carries the recorded outcomes too."""
    runs = Runs()
    pipeline = recording("redo", runs, ("job0", "job1", "job2", "job3"))
    async with Producer(redis_url, pipelines=[pipeline]) as producer:
        handle = await producer.submit(pipeline, Ev(id=7))
        await redis.hset(
            jobs_key(handle.id),
            mapping={
                "job0": json.dumps({"status": "succeeded", "attempts": 2, "duration_s": 0.5,
                                    "error": None}),
                "job1": json.dumps({"status": "failed", "attempts": 1, "duration_s": 0.1,
                                    "error": "ValueError: boom"}),
                "job2": json.dumps({"status": None}),
            },
        )  # fmt: skip
        worker = Worker(redis_url, [pipeline], consumer="w")
        async with running(worker):
            report = await handle.wait(timeout=LIMIT)
    assert runs.starts() == Counter({("7", "job2"): 1, ("7", "job3"): 1})
    assert report.replayed
    assert not report.ok  # job1's recorded failure stands
    assert report.outcome("job0").status is aw.JobStatus.SUCCEEDED
    assert report.outcome("job0").attempts == 2
    assert report.outcome("job1").status is aw.JobStatus.FAILED
    assert report.outcome("job1").error == "ValueError: boom"
    assert report.outcome("job2").status is aw.JobStatus.SUCCEEDED
    assert report.outcome("job3").status is aw.JobStatus.SUCCEEDED
    assert await redis.exists(jobs_key(handle.id)) == 0


def cut_pipeline(runs: Runs, release: anyio.Event) -> aw.Pipeline[Ev]:
    """Job "quick" finishes at once; job "slow" waits for ``release`` (cancellable)."""
    pipeline = make_pipeline("cut")

    @pipeline.job
    def quick(event: Ev, ctx: aw.JobContext) -> None:
        runs.start(ctx)
        runs.end(ctx)

    @pipeline.job
    async def slow(event: Ev, ctx: aw.JobContext) -> None:
        runs.start(ctx)
        await release.wait()
        runs.end(ctx)

    return pipeline


async def test_work_cut_by_a_clean_stop_is_handed_back_and_finished_by_another_worker(
    redis_url: str, redis: Redis
) -> None:
    """A worker stopped (drain_timeout=0) with two completions half done hands both back and
    leaves the group (XINFO CONSUMERS); a second worker takes them over at once and runs only
    the unfinished job of each, with the same idempotency keys; each producer gets one ok
    report in which the finished job keeps its single attempt."""
    runs = Runs()
    release = anyio.Event()
    pipeline = cut_pipeline(runs, release)
    first = Worker(redis_url, [pipeline], drain_timeout=0, claim_timeout=5, consumer="first")
    second = Worker(redis_url, [pipeline], claim_timeout=5, consumer="second")
    async with Producer(redis_url, pipelines=[pipeline]) as producer:
        handles = [await producer.submit(pipeline, Ev(id=i)) for i in (1, 2)]
        async with running(first):
            await wait_until(
                lambda: sorted(runs.started) == [("1", "quick"), ("1", "slow"),
                                                 ("2", "quick"), ("2", "slow")],
                "both completions to be half done",
            )  # fmt: skip

            async def quick_recorded() -> bool:
                return all([await redis.hexists(jobs_key(h.id), "quick") for h in handles])

            await eventually(quick_recorded, "the quick jobs' outcomes in Redis")
        assert first.counts["released"] == 2
        assert first.counts["acked"] == 0
        left_after_stop = await consumers(redis)
        summary = await redis.xpending(STREAM, GROUP)
        assert summary["pending"] == 2  # handed back, not acknowledged
        release.set()
        async with running(second):
            reports = [await h.wait(timeout=LIMIT) for h in handles]
    assert second.counts["reclaimed"] == 2
    assert second.counts["read"] == 0
    starts = runs.starts()
    assert starts == Counter({("1", "quick"): 1, ("2", "quick"): 1,
                              ("1", "slow"): 2, ("2", "slow"): 2})  # fmt: skip
    assert Counter(runs.idempotency)["cut:1:slow"] == 2
    for report in reports:
        assert report.ok
        assert report.outcome("quick").attempts == 1
        assert report.outcome("slow").status is aw.JobStatus.SUCCEEDED
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    assert "first" not in left_after_stop  # left the group, though it handed work back
    assert await consumers(redis) == set()


async def test_an_idle_worker_leaves_the_group_on_a_clean_stop(
    redis_url: str, redis: Redis, events: list[EventDict]
) -> None:
    """A worker is a consumer of the group while it runs and is removed from it when it
    stops cleanly, so dead consumers do not pile up in the group."""
    pipeline = recording("idle", Runs())
    worker = Worker(redis_url, [pipeline], consumer="idle-worker")
    async with running(worker):
        await eventually(
            lambda: _has_consumer(redis, "idle-worker"), "the worker to join the group"
        )
    assert await consumers(redis) == set()
    assert len(named(events, "worker.stopped")) == 1


async def _has_consumer(redis: Redis, name: str) -> bool:
    return name in await consumers(redis)


# -- fair reads -------------------------------------------------------------------------------


async def test_a_busy_worker_reads_nothing_more_and_a_free_one_takes_the_rest(
    redis_url: str, redis: Redis
) -> None:
    """Two workers with max_active=1: while the first one's job is blocked on a Gate, the
    second one takes every following message, and no consumer ever holds more than one
    message (the first read nothing beyond what it could start)."""
    gate = Gate()
    pipeline = make_pipeline("fair")

    @pipeline.job
    def work(event: Ev) -> None:
        if event.id == 0:
            gate.block()

    first_reports: list[aw.Report] = []
    second_reports: list[aw.Report] = []
    first = Worker(redis_url, [pipeline], max_active=1, max_threads=2, consumer="first",
                   on_report=first_reports.append)  # fmt: skip
    second = Worker(redis_url, [pipeline], max_active=1, max_threads=2, consumer="second",
                    on_report=second_reports.append)  # fmt: skip
    most: Counter[str] = Counter()

    async def sample() -> None:
        while True:
            summary = await redis.xpending(STREAM, GROUP)
            for entry in summary["consumers"]:
                name = _text(entry["name"])
                most[name] = max(most[name], int(entry["pending"]))
            await anyio.sleep(0.005)

    async with Producer(redis_url, pipelines=[pipeline]) as producer, running(first):
        blocked = await producer.submit(pipeline, Ev(id=0))
        await wait_until(lambda: gate.running == 1, "the first worker's job to block")
        async with running(second), anyio.create_task_group() as sampler:
            sampler.start_soon(sample)
            handles = [await producer.submit(pipeline, Ev(id=i)) for i in range(1, 7)]
            reports = [await h.wait(timeout=LIMIT) for h in handles]
            sampler.cancel_scope.cancel()
        assert gate.running == 1  # all six finished while the first worker was still blocked
        gate.open()
        assert (await blocked.wait(timeout=LIMIT)).ok
    assert all(r.ok for r in reports)
    assert sorted(r.key for r in second_reports) == [str(i) for i in range(1, 7)]
    assert [r.key for r in first_reports] == ["0"]
    assert first.counts["read"] == 1
    assert max(most.values()) == 1


# -- claims: renewed while running, reclaimed when dead ---------------------------------------


async def test_a_completion_longer_than_the_claim_timeout_is_never_stolen(
    redis_url: str, redis: Redis, events: list[EventDict]
) -> None:
    """With claim_timeout=1 s and a second worker idle beside it, a 4 s job starts exactly
    once: its worker renews the claim, so the message stays with it, delivered once."""
    runs = Runs()
    pipeline = make_pipeline("long")

    @pipeline.job
    def long(event: Ev, ctx: aw.JobContext) -> None:
        runs.start(ctx)
        time.sleep(4)  # the job's length is what this test is about
        runs.end(ctx)

    workers = [Worker(redis_url, [pipeline], claim_timeout=1, consumer=f"w{n}") for n in (1, 2)]
    owners: set[str] = set()
    deliveries: set[int] = set()
    async with Producer(redis_url, pipelines=[pipeline]) as producer, running(*workers):
        handle = await producer.submit(pipeline, Ev(id=1))
        await wait_until(lambda: len(runs.started) == 1, "the long job to start")
        while len(runs.ended) == 0:  # sample who holds the message while the job runs
            for entry in await redis.xpending_range(STREAM, GROUP, "-", "+", 10):
                owners.add(_text(entry["consumer"]))
                deliveries.add(int(entry["times_delivered"]))
            await anyio.sleep(0.05)
        report = await handle.wait(timeout=LIMIT)
    assert report.ok
    assert runs.starts() == Counter({("1", "long"): 1})
    assert len(owners) == 1
    assert deliveries == {1}
    assert sum(w.counts["reclaimed"] for w in workers) == 0
    assert named(events, "worker.claim_lost") == []


async def test_a_dead_consumers_messages_are_reclaimed_without_new_traffic(
    redis_url: str, redis: Redis
) -> None:
    """Two messages read by a consumer that never acknowledges them (a worker that died) are
    taken over by a running worker with claim_timeout=1 s, with nothing new arriving, within
    claim_timeout + 2 s of their delivery; both finish."""
    runs = Runs()
    pipeline = recording("orphans", runs, ("a",))
    worker = Worker(redis_url, [pipeline], claim_timeout=1, consumer="w")
    async with Producer(redis_url, pipelines=[pipeline]) as producer:
        handles = [await producer.submit(pipeline, Ev(id=i)) for i in (1, 2)]
        read: Any = await redis.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=2)
        delivered = time.monotonic()
        assert len(read[0][1]) == 2
        async with running(worker):
            reports = [await h.wait(timeout=LIMIT) for h in handles]
            assert await pending_of(redis, "ghost") == 0
    assert all(r.ok for r in reports)
    assert worker.counts["reclaimed"] == 2
    assert worker.counts["read"] == 0
    latest = max(runs.started_at.values()) - delivered
    print(f"reclaimed within {latest:.2f} s of delivery (claim_timeout 1 s)")
    assert latest <= 1 + 2


# -- poison and unreadable messages -----------------------------------------------------------


async def test_a_message_delivered_more_than_max_recoveries_times_is_dead_lettered(
    redis_url: str, redis: Redis, events: list[EventDict]
) -> None:
    """A message already delivered 3 times (its workers died) is, on its 4th delivery with
    max_recoveries=3, moved to "afterwork:dead" unrun, with afterwork.poisoned logged, and its
    producer gets a report with every job failed; one delivered twice before still runs."""
    runs = Runs()
    pipeline = recording("poison", runs, ("a", "b"))
    worker = Worker(redis_url, [pipeline], claim_timeout=1, max_recoveries=3, consumer="w")
    async with Producer(redis_url, pipelines=[pipeline]) as producer:
        survivor = await producer.submit(pipeline, Ev(id=1))
        poison = await producer.submit(pipeline, Ev(id=2))
        await redis.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=2)
        survivor_id, poison_id = await stream_ids(redis)
        [(_, fields)] = await entries(redis, STREAM, poison_id, poison_id)
        data = fields[b"data"]
        # As if the worker running each had died: 2 and 3 deliveries so far, long idle.
        await redis.xclaim(STREAM, GROUP, "ghost", 0, [survivor_id], idle=60_000, retrycount=2)
        await redis.xclaim(STREAM, GROUP, "ghost", 0, [poison_id], idle=60_000, retrycount=3)
        async with running(worker):
            poisoned = await poison.wait(timeout=LIMIT)
            survived = await survivor.wait(timeout=LIMIT)
    assert survived.ok
    assert runs.starts() == Counter({("1", "a"): 1, ("1", "b"): 1})  # the poison never ran
    reason = (
        "delivered 4 times without finishing: each worker that took it died (or could not "
        "run its pipeline); moved to the dead letters (afterwork:dead)"
    )
    assert not poisoned.ok
    assert sorted(o.job for o in poisoned.outcomes) == ["a", "b"]
    for outcome in poisoned.outcomes:
        assert outcome.status is aw.JobStatus.FAILED
        assert outcome.attempts == 4
        assert outcome.error == f"JournalError: {reason}"
    [logged] = named(events, "afterwork.poisoned")
    assert (logged["message_id"], logged["deliveries"], logged["key"]) == (poison_id, 4, "2")
    [(_, dead)] = await entries(redis, DEAD)
    assert dead[b"origin_id"] == poison_id.encode()
    assert dead[b"deliveries"] == b"4"
    assert dead[b"reason"] == reason.encode()
    assert dead[b"data"] == data
    assert worker.counts["poisoned"] == 1
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    assert await redis.hgetall(UNFINISHED) == {}


async def test_unreadable_entries_are_dead_lettered_and_the_worker_goes_on(
    redis_url: str, redis: Redis, events: list[EventDict]
) -> None:
    """Entries that are not afterwork completions (garbage data, no data field, another
    taskiq task) are acknowledged into the dead letters with worker.unreadable logged, and a
    good completion behind them still runs."""
    runs = Runs()
    pipeline = recording("after_garbage", runs, ("a",))
    other_task = TaskiqMessage(task_id="x", task_name="someone.else", labels={},
                               labels_types={}, args=[], kwargs={})  # fmt: skip
    async with Producer(redis_url, pipelines=[pipeline]) as producer:
        bad = [
            _text(await redis.xadd(STREAM, {"data": b"\xff not json"})),
            _text(await redis.xadd(STREAM, {"other": "field"})),
            _text(await redis.xadd(STREAM, {"data": other_task.model_dump_json()})),
        ]
        handle = await producer.submit(pipeline, Ev(id=1))
        worker = Worker(redis_url, [pipeline], consumer="w")
        async with running(worker):
            report = await handle.wait(timeout=LIMIT)
    assert report.ok
    assert runs.starts() == Counter({("1", "a"): 1})
    dead = await entries(redis, DEAD)
    assert [fields[b"origin_id"].decode() for _, fields in dead] == bad
    assert {fields[b"reason"] for _, fields in dead} == {b"not an afterwork completion"}
    assert [e["message_id"] for e in named(events, "worker.unreadable")] == bad
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0


def other_pipeline(runs: Runs) -> aw.Pipeline[Ev]:
    return recording("other", runs, ("a",))


async def test_an_unknown_pipeline_is_handed_back_not_acknowledged(
    redis_url: str, redis: Redis, events: list[EventDict]
) -> None:
    """A worker that does not know a message's pipeline logs worker.unknown_pipeline and
    hands the message back unacknowledged (still pending, not dead-lettered); a worker that
    knows the pipeline then runs it."""
    runs = Runs()
    known = recording("known", runs, ("a",))
    other = other_pipeline(runs)
    unaware = Worker(redis_url, [known], claim_timeout=1, consumer="unaware")
    aware = Worker(redis_url, [known, other], claim_timeout=1, consumer="aware")
    async with Producer(redis_url, pipelines=[other]) as producer, running(unaware):
        handle = await producer.submit(other, Ev(id=1))
        await wait_until(
            lambda: bool(named(events, "worker.unknown_pipeline")), "the worker to hand it back"
        )
        [message_id] = await stream_ids(redis)
        pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
        assert [_text(p["message_id"]) for p in pending] == [message_id]
        assert await redis.xlen(DEAD) == 0
        async with running(aware):
            report = await handle.wait(timeout=LIMIT)
    assert report.ok
    assert runs.starts() == Counter({("1", "a"): 1})
    [logged, *_] = named(events, "worker.unknown_pipeline")
    assert (logged["pipeline"], logged["key"]) == ("other", "1")


async def test_a_handed_back_message_is_not_taken_again_at_once_by_the_same_worker(
    redis_url: str, redis: Redis, events: list[EventDict]
) -> None:
    """A worker that handed back a message it cannot run (unknown pipeline) does not take it
    back from itself at once, using up its deliveries: 3 s later, within one claim timeout
    (5 s), with only that worker running, the message is still pending, delivered once and
    not in the dead letters; a worker that knows the pipeline (a rolling deploy's new
    version) then runs it, with an ok report."""
    runs = Runs()
    known = recording("known", runs, ("a",))
    other = other_pipeline(runs)
    unaware = Worker(redis_url, [known], claim_timeout=5, consumer="unaware")
    aware = Worker(redis_url, [known, other], claim_timeout=5, consumer="aware")
    async with Producer(redis_url, pipelines=[other]) as producer:
        handle = await producer.submit(other, Ev(id=1))
        async with running(unaware):
            await wait_until(
                lambda: bool(named(events, "worker.unknown_pipeline")), "the hand-back"
            )
            await anyio.sleep(3)  # less than a claim timeout: the window this test is about
            pending: Any = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
        assert await redis.xlen(DEAD) == 0
        assert [int(p["times_delivered"]) for p in pending] == [1]
        async with running(aware):
            report = await handle.wait(timeout=LIMIT)
    assert report.ok
    assert runs.starts() == Counter({("1", "a"): 1})


# -- trimming ---------------------------------------------------------------------------------


async def test_trim_acknowledged_removes_acknowledged_entries_only(redis: Redis) -> None:
    """trim_acknowledged drops only entries below what every group still needs: never one
    pending or not yet read, in this group or any other."""
    keys = Keys("afterwork")
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ids = [_text(await redis.xadd(STREAM, {"data": str(n)})) for n in range(5)]
    await redis.xreadgroup(GROUP, "c", {STREAM: ">"}, count=3)
    await redis.xack(STREAM, GROUP, ids[0], ids[2])  # ids[1] still pending
    assert await trim_acknowledged(redis, keys) == 1
    assert await stream_ids(redis) == ids[1:]
    await redis.xack(STREAM, GROUP, ids[1])  # nothing pending; ids[3:] not read yet
    assert await trim_acknowledged(redis, keys) == 2
    assert await stream_ids(redis) == ids[3:]
    await redis.xgroup_create(STREAM, "lagging", id="0")  # another group that read nothing
    await redis.xreadgroup(GROUP, "c", {STREAM: ">"}, count=2)
    await redis.xack(STREAM, GROUP, *ids[3:])
    assert await trim_acknowledged(redis, keys) == 0
    assert await stream_ids(redis) == ids[3:]


async def test_a_worker_trims_the_entries_it_acknowledged(
    redis_url: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running worker's maintenance trims acknowledged entries from the stream (here every
    0.2 s instead of 30), so the stream does not grow without bound."""
    monkeypatch.setattr("afterwork.taskiq._worker.MAINTENANCE_S", 0.2)
    pipeline = recording("trimmed", Runs(), ("a",))
    worker = Worker(redis_url, [pipeline], consumer="w")
    async with Producer(redis_url, pipelines=[pipeline]) as producer, running(worker):
        handles = [await producer.submit(pipeline, Ev(id=i)) for i in range(5)]
        for handle in handles:
            await handle.wait(timeout=LIMIT)

        async def trimmed() -> bool:
            return await redis.xlen(STREAM) == 0

        await eventually(trimmed, "the acknowledged entries to be trimmed")


# -- threads ----------------------------------------------------------------------------------


async def test_a_workers_os_threads_stay_within_max_threads_plus_three(
    redis_server: RedisServer,
) -> None:
    """A worker with max_threads=4 running 8 completions of 3 blocking jobs never has more
    than 4 + 3 OS threads of its own (counted by a sampler thread), and runs 4 jobs at once."""
    if not redis_server.real:
        pytest.skip("needs a real redis-server: fakeredis serves each connection on a thread "
                    "of this process, which the sampler would count as the worker's")  # fmt: skip
    redis_url = redis_server.url
    gate = Gate()
    pipeline = make_pipeline("threads")
    for name in ("a", "b", "c"):

        def job(event: Ev) -> None:
            gate.block()

        pipeline.job(name=name)(job)
    worker = Worker(redis_url, [pipeline], max_threads=4, max_active=8, consumer="w")
    async with Producer(redis_url, pipelines=[pipeline]) as producer:
        handles = [await producer.submit(pipeline, Ev(id=i)) for i in range(8)]
        with ThreadSampler() as sampler:
            async with running(worker):
                await wait_until(lambda: gate.running == 4, "the budget to fill")
                gate.open()
                reports = [await h.wait(timeout=LIMIT) for h in handles]
    assert all(r.ok for r in reports)
    assert gate.peak == 4
    print(f"threads above baseline: peak {sampler.peak_above_baseline}")
    assert sampler.peak_above_baseline <= 4 + 3
