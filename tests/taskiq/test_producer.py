"""The Redis scale-out's Producer (issue 11, "The interface").

``submit`` checks everything before anything is sent, refuses with ``Overloaded`` once the
queue's backlog reached ``max_pending``, refuses after close and before entry, refuses
``delay=``; what it sends is delivered even to workers that start later, and
``handle.wait`` / ``producer.run`` return the worker's own Report. ``redis_broker()`` is the
taskiq broker configured as afterwork runs it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import anyio
import pydantic
import pytest
from pydantic import BaseModel
from redis.asyncio import Redis
from taskiq.serializers import JSONSerializer
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

import afterwork as aw
from afterwork.taskiq import Producer, RemoteHandle, Worker, redis_broker
from afterwork.testing import wait_until
from tests.helpers import Ev, make_pipeline
from tests.taskiq.test_worker import LIMIT, running

STREAM = "afterwork"
GROUP = "afterwork"
UNFINISHED = "afterwork:afterwork:unfinished"


class Measure(BaseModel):
    id: int
    value: float = 0.0


def done_pipeline(name: str = "p") -> aw.Pipeline[Ev]:
    pipeline = make_pipeline(name)

    @pipeline.job
    def first(event: Ev) -> None:
        pass

    @pipeline.job
    def second(event: Ev) -> None:
        if event.text == "fail":
            raise ValueError("asked to fail")

    return pipeline


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# -- refusals: nothing is sent ----------------------------------------------------------------


async def test_an_invalid_event_is_refused_before_anything_is_sent(
    redis_url: str, redis: Redis
) -> None:
    """A mapping that does not validate raises pydantic's ValidationError; an event JSON
    would not carry exactly (NaN) and a bad key raise InvalidEvent naming the problem; in
    every case the stream stays empty and no key is counted unfinished."""
    pipeline = done_pipeline()
    measures = aw.Pipeline("measures", event=Measure, key=lambda m: m.id)
    empty_key = aw.Pipeline("empty_key", event=Measure, key=lambda m: "")
    async with Producer(redis_url, pipelines=[pipeline, measures, empty_key]) as producer:
        with pytest.raises(pydantic.ValidationError):
            await producer.submit(pipeline, {"id": "not a number"})
        with pytest.raises(aw.InvalidEvent) as nan:
            await producer.submit(measures, Measure(id=1, value=math.nan))
        with pytest.raises(aw.InvalidEvent) as key:
            await producer.submit(empty_key, Measure(id=1))
        assert await redis.xlen(STREAM) == 0
        assert await redis.hgetall(UNFINISHED) == {}
        assert await producer.backlog() == 0
    assert str(nan.value) == (
        "field Measure.value does not read back from its own JSON (Input should be a valid "
        "number); give it a value JSON keeps exactly (finite floats, say), or run this "
        "pipeline without a journal"
    )
    assert str(key.value) == (
        "pipeline 'empty_key': the key function returned ''; a key must be 1 to 1000 "
        "characters long"
    )


async def test_submit_is_overloaded_once_the_backlog_reaches_max_pending(
    redis_url: str, redis: Redis
) -> None:
    """With no worker running and max_pending=2, the third submit raises Overloaded at once
    (timeout=0) and after waiting (timeout=0.3), with the exact message, pending and
    max_pending; nothing more is sent."""
    pipeline = done_pipeline()
    async with Producer(redis_url, pipelines=[pipeline], max_pending=2) as producer:
        await producer.submit(pipeline, Ev(id=1))
        await producer.submit(pipeline, Ev(id=2))
        assert await producer.backlog() == 2
        with pytest.raises(aw.Overloaded) as at_once:
            await producer.submit(pipeline, Ev(id=3), timeout=0)
        with pytest.raises(aw.Overloaded) as waited:
            await producer.submit(pipeline, Ev(id=3), timeout=0.3)
        assert await redis.xlen(STREAM) == 2
        assert await producer.unfinished(pipeline, "3") == 0
    assert str(at_once.value) == (
        "cannot send p:3: the queue 'afterwork' holds 2 completions, max_pending=2; retry later"
    )
    assert str(waited.value) == (
        "cannot send p:3 within 0.3 s: the queue 'afterwork' holds 2 completions, "
        "max_pending=2; retry later"
    )
    assert (waited.value.pending, waited.value.max_pending) == (2, 2)


async def test_the_backlog_counts_messages_being_processed_too(
    redis_url: str, redis: Redis
) -> None:
    """Messages read by a worker but not yet acknowledged still count towards max_pending:
    with both read (pending), a third submit is still Overloaded."""
    pipeline = done_pipeline()
    async with Producer(redis_url, pipelines=[pipeline], max_pending=2) as producer:
        await producer.submit(pipeline, Ev(id=1))
        await producer.submit(pipeline, Ev(id=2))
        await redis.xreadgroup(GROUP, "reader", {STREAM: ">"}, count=2)
        assert await producer.backlog() == 2
        with pytest.raises(aw.Overloaded):
            await producer.submit(pipeline, Ev(id=3), timeout=0)


async def test_a_waiting_submit_is_sent_once_a_worker_makes_room(redis_url: str) -> None:
    """submit without a timeout waits while the backlog is full, and sends once a worker
    started meanwhile has finished a completion; every report then arrives."""
    pipeline = done_pipeline()
    worker = Worker(redis_url, [pipeline], consumer="w")
    async with Producer(redis_url, pipelines=[pipeline], max_pending=1) as producer:
        first = await producer.submit(pipeline, Ev(id=1))
        sent: list[RemoteHandle] = []

        async def submit_second() -> None:
            sent.append(await producer.submit(pipeline, Ev(id=2)))

        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as group:
                group.start_soon(submit_second)
                await anyio.sleep(0.3)  # it waits: nothing sent while the backlog is full
                assert sent == []
                async with running(worker):
                    assert (await first.wait(timeout=LIMIT)).ok
                    await wait_until(lambda: bool(sent), "the waiting submit to be sent")
                    assert (await sent[0].wait(timeout=LIMIT)).ok


async def test_submit_after_close_and_before_entry_is_refused(redis_url: str) -> None:
    """submit before 'async with' raises DispatcherNotOpen, after it DispatcherClosed, both
    with their exact messages; a used Producer cannot be entered again."""
    pipeline = done_pipeline()
    producer = Producer(redis_url, pipelines=[pipeline])
    with pytest.raises(aw.DispatcherNotOpen) as not_open:
        await producer.submit(pipeline, Ev(id=1))
    async with producer:
        pass
    with pytest.raises(aw.DispatcherClosed) as closed:
        await producer.submit(pipeline, Ev(id=1))
    with pytest.raises(aw.DispatcherClosed) as again:
        async with producer:
            pass
    assert str(not_open.value) == (
        "this Producer is not open yet; use 'async with Producer(...) as producer:'"
    )
    assert str(closed.value) == (
        "cannot send 'p': the Producer is closed; send before leaving its 'async with', or to "
        "a new Producer"
    )
    assert str(again.value) == "this Producer was already used; create a new one"


async def test_submit_with_a_delay_is_refused(redis_url: str, redis: Redis) -> None:
    """submit(delay=...) raises InvalidOption with the exact message, and sends nothing."""
    pipeline = done_pipeline()
    async with Producer(redis_url, pipelines=[pipeline]) as producer:
        with pytest.raises(aw.InvalidOption) as info:
            await producer.submit(pipeline, Ev(id=1), delay=5)
        assert await redis.xlen(STREAM) == 0
    assert str(info.value) == (
        "submit(delay=...) is not offered by the Redis scale-out: a delayed completion would "
        "have to wait in Redis, which afterwork does not do yet; submit it when it is due, or "
        "use a local Dispatcher for delayed work"
    )


# -- delivery and reports ---------------------------------------------------------------------


async def test_messages_sent_before_any_worker_started_are_delivered(
    redis_url: str, redis: Redis
) -> None:
    """Three completions sent with no worker running, and the group then deleted (as if the
    stream was filled by someone else first), are all run by a worker started afterwards: the
    group is created from the start of the stream."""
    pipeline = done_pipeline()
    worker = Worker(redis_url, [pipeline], consumer="late")
    async with Producer(redis_url, pipelines=[pipeline]) as producer:
        handles = [await producer.submit(pipeline, Ev(id=i)) for i in range(3)]
        await redis.xgroup_destroy(STREAM, GROUP)
        async with running(worker):
            reports = [await h.wait(timeout=LIMIT) for h in handles]
    assert [(r.key, r.ok) for r in reports] == [("0", True), ("1", True), ("2", True)]
    assert worker.counts["read"] == 3


async def test_run_returns_the_workers_report(redis_url: str) -> None:
    """producer.run returns a Report equal to the one the worker handed to its on_report,
    failed jobs included."""
    pipeline = done_pipeline()
    seen: list[aw.Report] = []
    worker = Worker(redis_url, [pipeline], consumer="w", on_report=seen.append)
    async with Producer(redis_url, pipelines=[pipeline]) as producer, running(worker):
        with anyio.fail_after(LIMIT):
            good = await producer.run(pipeline, Ev(id=1))
            bad = await producer.run(pipeline, {"id": 2, "text": "fail"})
    assert seen == [good, bad]
    assert good.ok
    assert not bad.ok
    assert bad.outcome("second").status is aw.JobStatus.FAILED
    assert bad.outcome("second").error == "ValueError: asked to fail"
    assert bad.outcome("first").status is aw.JobStatus.SUCCEEDED


async def test_wait_raises_timeout_error_when_no_worker_runs(redis_url: str) -> None:
    """handle.wait(timeout) raises the builtin TimeoutError (as its docstring says) when no
    report came within timeout seconds."""
    pipeline = done_pipeline()
    async with Producer(redis_url, pipelines=[pipeline]) as producer:
        handle = await producer.submit(pipeline, Ev(id=1))
        with anyio.fail_after(LIMIT), pytest.raises(TimeoutError):
            await handle.wait(timeout=0.3)


async def test_wait_with_timeout_zero_does_not_wait(redis_url: str) -> None:
    """handle.wait(timeout=0) looks once and raises TimeoutError when there is no report yet,
    as submit(timeout=0) does not wait either (taskiq treats 0 as "forever")."""
    pipeline = done_pipeline()
    async with Producer(redis_url, pipelines=[pipeline]) as producer:
        handle = await producer.submit(pipeline, Ev(id=1))
        with anyio.fail_after(10):  # outside: its own TimeoutError must not satisfy the check
            with pytest.raises(TimeoutError):
                await handle.wait(timeout=0)


async def test_unfinished_counts_per_key_and_drops_to_zero(redis_url: str, redis: Redis) -> None:
    """unfinished(pipeline, key) counts the completions of a key sent and not finished, and
    drops to 0 (the counter removed) once a worker finished them."""
    pipeline = done_pipeline()
    worker = Worker(redis_url, [pipeline], consumer="w")
    async with Producer(redis_url, pipelines=[pipeline]) as producer:
        handles = [await producer.submit(pipeline, Ev(id=i)) for i in (1, 1, 2)]
        assert await producer.unfinished(pipeline, "1") == 2
        assert await producer.unfinished(pipeline, "2") == 1
        assert await producer.unfinished(pipeline, "3") == 0
        async with running(worker):
            for handle in handles:
                await handle.wait(timeout=LIMIT)
        assert await producer.unfinished(pipeline, "1") == 0
        assert await producer.unfinished(pipeline, "2") == 0
        assert await redis.hgetall(UNFINISHED) == {}


# -- the broker -------------------------------------------------------------------------------


def test_redis_broker_is_configured_as_afterwork_runs_it() -> None:
    """redis_broker() reads from the stream's start (consumer_id "0"), never trims with
    MAXLEN, reads one message at a time, and keeps results as JSON (not pickle) under the
    queue's own prefix."""
    broker = redis_broker("redis://127.0.0.1:1/0", queue="jobs", claim_timeout_s=7)
    assert isinstance(broker, RedisStreamBroker)
    assert broker.queue_name == "jobs"
    assert broker.consumer_group_name == "afterwork"
    assert broker.consumer_id == "0"
    assert broker.maxlen is None
    assert broker.count == 1
    assert broker.unacknowledged_batch_size == 1
    assert broker.idle_timeout == 7000
    backend = broker.result_backend
    assert isinstance(backend, RedisAsyncResultBackend)
    assert isinstance(backend.serializer, JSONSerializer)
    assert backend.prefix_str == "afterwork:jobs:result"


async def test_a_producer_given_a_broker_sends_through_it(redis_url: str, redis: Redis) -> None:
    """Producer(redis_broker(url, queue="jobs")) sends to the stream "jobs", and a worker of
    queue "jobs" runs it and reports back."""
    pipeline = done_pipeline()
    worker = Worker(redis_url, [pipeline], queue="jobs", consumer="w")
    producer = Producer(redis_broker(redis_url, queue="jobs"), pipelines=[pipeline])
    async with producer:
        handle = await producer.submit(pipeline, Ev(id=1))
        assert await redis.xlen("jobs") == 1
        assert await redis.xlen(STREAM) == 0
        async with running(worker):
            report = await handle.wait(timeout=LIMIT)
    assert report.ok
    assert report.key == "1"


def test_a_producer_refuses_what_is_not_a_url_or_a_stream_broker() -> None:
    """Producer(42) raises InvalidOption with a fix."""
    with pytest.raises(aw.InvalidOption) as info:
        Producer(42)  # type: ignore[arg-type]
    assert str(info.value) == (
        "Producer takes a Redis URL or a taskiq RedisStreamBroker, got 42; "
        "e.g. Producer('redis://127.0.0.1:6379/0')"
    )
