"""The Worker: reads completions from a Redis stream and runs them in a local dispatcher.

It sends through taskiq (the message format, the broker, the result backend) but reads with
a loop of its own over the same stream and consumer group, because taskiq's reader has no
place for what a worker that must not lose or double work needs:

- **fair dispatch**: a message is read (``COUNT 1``) only once the local dispatcher can
  start it now: room, a free place, and no call queued for a thread. Another worker takes
  the rest (Celery's ``-O fair``);
- **claims renewed**: every third of ``claim_timeout`` the worker renews the claims of the
  messages it is still running, so a long completion is never taken by another worker;
- **reclaim on a timer**: messages of a dead worker (idle past ``claim_timeout``) are taken
  over within about ``claim_timeout``, whether or not new messages arrive, by a worker that
  runs their pipeline;
- **poison**: a message delivered more than ``max_recoveries`` times (each delivery after the
  first means the worker running it died) goes to a dead-letter stream, with
  ``afterwork.poisoned`` logged and a report marking its unfinished jobs failed. A
  redelivered message is a suspect and runs alone, so a poison that kills worker after
  worker never takes innocent messages' deliveries with it;
- **ack after the report**: a message is acknowledged once its report is stored, and holds
  its place (``max_active``) until then;
- **clean stop**: stop reading, drain within ``drain_timeout``, hand back what is left so the
  other workers take it at once, and leave the group (never with messages still pending).

One message is one completion; job outcomes are kept in Redis as they happen, so a message
delivered again re-runs only its unfinished jobs, with the same idempotency keys.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from taskiq import TaskiqResult

from afterwork import _options
from afterwork._exceptions import Overloaded
from afterwork._models import JobOutcome, JobStatus, Report
from afterwork._pipeline import Pipeline

from . import _scripts, _wire
from ._broker import CLAIM_TIMEOUT_S, RESULT_TTL_S, ensure_group, result_backend
from ._local import RedisRecorder, Unstored, WorkerDispatcher, Write, jobs_of, plan_from
from ._wire import GROUP, Keys

logger = structlog.get_logger("afterwork")

#: How long one read blocks; a stop waits for it at most this long.
READ_BLOCK_MS = 1000
#: How often the worker trims acknowledged entries and forgets dead consumers.
MAINTENANCE_S = 30.0
#: The consumer that holds messages a stopping worker handed back, until another takes them.
RELEASED = "afterwork:released"
#: How many idle messages a reclaim looks at, oldest first.
RECLAIM_SCAN = 100
#: Claim timeouts a message of a pipeline no worker knows waits before its dead letter.
UNKNOWN_PIPELINE_WAITS = 10


@dataclass
class _Delivery:
    """A message this worker holds: read or reclaimed, not yet acknowledged."""

    message_id: str
    completion: _wire.Completion | None
    deliveries: int
    received: float
    lost: bool = False


class Worker:
    """Runs the completions of ``queue`` at ``url`` for ``pipelines``, until ``stop()``."""

    def __init__(
        self,
        url: str,
        pipelines: Iterable[Pipeline[Any]],
        *,
        queue: str = "afterwork",
        max_threads: int = 32,
        max_active: int = 64,
        drain_timeout: float = 30.0,
        claim_timeout: float = CLAIM_TIMEOUT_S,
        lanes: Mapping[str, int] | None = None,
        max_recoveries: int = 3,
        result_ttl_s: int = RESULT_TTL_S,
        consumer: str | None = None,
        on_report: Callable[[Report], object] = lambda report: None,
    ) -> None:
        self.url = url
        self.keys = Keys(queue)
        self.claim_timeout = _options.seconds(
            "claim_timeout", claim_timeout, "e.g. Worker(url, pipelines, claim_timeout=30)",
            positive=True,
        )  # fmt: skip
        self.max_recoveries = _options.count(
            "max_recoveries", max_recoveries, 1, "e.g. Worker(url, pipelines, max_recoveries=3)"
        )
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.pipelines = {p.name: p for p in pipelines}
        self.max_active = max_active
        # The queue of writes to Redis: opened by run(), which closes it again.
        self._writes_send: MemoryObjectSendStream[Write] | None = None
        self._writes: MemoryObjectReceiveStream[Write] | None = None
        # Past a claim timeout the message is another worker's anyway: wait no longer.
        self._unstored = Unstored(limit_s=self.claim_timeout)
        self.dispatcher = WorkerDispatcher(
            RedisRecorder(self._put, self._unstored),
            before_call=self._unstored.wait,
            max_threads=max_threads,
            max_pending=max_active,
            max_active=max_active,
            max_delayed=0,  # nothing parks in a worker: a wait holds its place, in Redis's care
            drain_timeout=drain_timeout,
            lanes=lanes,
            pipelines=self.pipelines.values(),
            on_report=on_report,
        )
        self.results = result_backend(url, queue, result_ttl_s=result_ttl_s)
        self._held: dict[str, _Delivery] = {}  # message id -> delivery, until acknowledged
        self._held_changed = anyio.Event()
        self._suspect: str | None = None  # a redelivered message, running alone
        self._by_completion: dict[str, str] = {}  # completion id -> message id
        self._stopping = anyio.Event()
        self._read_scope = anyio.CancelScope()
        self._next_reclaim = 0.0  # at once: orphans of an earlier life come first
        self.counts = {"read": 0, "reclaimed": 0, "acked": 0, "poisoned": 0, "released": 0}

    @property
    def reclaim_interval(self) -> float:
        return min(1.0, self.claim_timeout / 3)

    def stop(self) -> None:
        """Stop reading; ``run`` then drains and returns."""
        self._stopping.set()
        self._read_scope.cancel()

    async def run(self) -> None:
        """Read and run completions until ``stop()``; then drain, hand back what is left,
        leave the group, and return."""
        self._ops = Redis.from_url(self.url)
        self._reader = Redis.from_url(self.url, single_connection_client=True)
        self._writes_send, self._writes = anyio.create_memory_object_stream[Write](float("inf"))
        try:
            await ensure_group(self._ops, self.keys)
            await self._ops.xgroup_createconsumer(self.keys.stream, GROUP, self.consumer)
            self._renew = self._ops.register_script(_scripts.RENEW)
            self._finish = self._ops.register_script(_scripts.FINISH)
            async with self.dispatcher, anyio.create_task_group() as timers:
                timers.start_soon(self._write_loop)
                timers.start_soon(self._renew_loop)
                timers.start_soon(self._maintenance_loop)
                logger.info("worker.started", queue=self.keys.queue, consumer=self.consumer)
                with self._read_scope:
                    await self._read_loop()
                await self.dispatcher.aclose()
                await self._flush()
                timers.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._leave()
            for stream in (self._writes_send, self._writes):
                stream.close()

    def _put(self, write: Write) -> None:
        assert self._writes_send is not None, "the recorder is used only while run() runs"
        self._writes_send.send_nowait(write)

    # -- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self._stopping.is_set():
            # A completion holds its place until its message is acknowledged, not only
            # until its jobs end: the read-ahead stays within max_active.
            await self._until(lambda: len(self._held) < self.max_active)
            # A suspect (a message whose worker died) runs alone: nothing else is read
            # while it runs, so if it kills this worker too, no innocent message is charged
            # a delivery for it.
            await self._until(lambda: self._suspect is None)
            await self.dispatcher.wait_for_capacity()
            with anyio.CancelScope(shield=True):  # a delivered message is never dropped
                delivery = await self._next()
            if delivery is not None and not self._stopping.is_set():
                await self._start(delivery)

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._held_changed = anyio.Event()
            await self._held_changed.wait()

    async def _next(self) -> _Delivery | None:
        try:
            if time.monotonic() >= self._next_reclaim:
                orphans = await self._orphans()
                if orphans:
                    # Reclaimed messages are suspects, run alone: let the others finish.
                    await self._until(lambda: not self._held)
                    delivery = await self._reclaim_one(orphans)
                    if delivery is not None:
                        return delivery
            return await self._read_one()
        except RedisConnectionError as error:
            logger.warning("worker.redis_unreachable", error=str(error))
            await anyio.sleep(1.0)
            return None
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await ensure_group(self._ops, self.keys)  # the stream was deleted under us
            return None

    async def _read_one(self) -> _Delivery | None:
        block = min(READ_BLOCK_MS, max(1, int((self._next_reclaim - time.monotonic()) * 1000)))
        reply: Any = await self._reader.xreadgroup(
            GROUP, self.consumer, {self.keys.stream: ">"}, count=1, block=block
        )
        if not reply:
            return None
        _, entries = reply[0]
        message_id, fields = entries[0]
        self.counts["read"] += 1
        return self._delivery(_text(message_id), fields, deliveries=1)

    async def _orphans(self) -> list[tuple[str, int]]:
        """Messages idle past the claim timeout (their worker died) that this worker can
        run, oldest first, with their deliveries so far.

        A message of a pipeline this worker does not know is left to a worker that does (a
        rolling deploy): taking it would only spend its deliveries. Once it has waited
        ``UNKNOWN_PIPELINE_WAITS`` claim timeouts, no worker runs its pipeline, and it goes
        to the dead letters.
        """
        idle_ms = int(self.claim_timeout * 1000)
        pending: Any = await self._ops.xpending_range(
            self.keys.stream, GROUP, "-", "+", RECLAIM_SCAN, idle=idle_ms
        )
        found = []
        for entry in pending:
            message_id = _text(entry["message_id"])
            rows: Any = await self._ops.xrange(self.keys.stream, message_id, message_id)
            if not rows:
                continue  # acknowledged meanwhile
            delivered = int(entry["times_delivered"])
            delivery = self._delivery(message_id, rows[0][1], delivered)
            message = delivery.completion
            if message is not None and message.pipeline not in self.pipelines:
                if entry["time_since_delivered"] >= UNKNOWN_PIPELINE_WAITS * idle_ms:
                    await self._dead_letter(
                        delivery,
                        f"no worker runs its pipeline {message.pipeline!r}: it waited "
                        f"{UNKNOWN_PIPELINE_WAITS} claim timeouts",
                    )
                continue
            found.append((message_id, delivered))
        if not found:
            self._next_reclaim = time.monotonic() + self.reclaim_interval
        return found

    async def _reclaim_one(self, orphans: list[tuple[str, int]]) -> _Delivery | None:
        """Take over the first of ``orphans`` still idle past the claim timeout."""
        for message_id, delivered in orphans:
            # Without JUSTID, so Redis counts the delivery: that count finds a poison.
            claimed: Any = await self._ops.xclaim(
                self.keys.stream, GROUP, self.consumer, int(self.claim_timeout * 1000),
                [message_id],
            )  # fmt: skip
            if not claimed or claimed[0][1] is None:
                continue  # another worker took it first, or it is gone
            self.counts["reclaimed"] += 1
            delivery = self._delivery(message_id, claimed[0][1], delivered + 1)
            if delivery.deliveries <= self.max_recoveries:
                return delivery
            await self._poisoned(delivery)
        return None

    def _delivery(self, message_id: str, fields: Any, deliveries: int) -> _Delivery:
        try:
            completion = _wire.parse(fields[b"data"])
        except (_wire.Unreadable, KeyError) as error:
            logger.error("worker.unreadable", message_id=message_id, error=str(error))
            completion = None
        return _Delivery(message_id, completion, deliveries, time.monotonic())

    async def _start(self, delivery: _Delivery) -> None:
        message = delivery.completion
        if message is None:
            await self._dead_letter(delivery, "not an afterwork completion")
            return
        pipeline = self.pipelines.get(message.pipeline)
        if pipeline is None:
            # Another worker may know it (a rolling deploy). It stays pending here, unrenewed,
            # so any worker takes it once its claim times out. Handed back at once, this
            # worker would take it again at its next reclaim and spend its deliveries in
            # seconds; this way a pipeline nobody knows reaches the dead letters only after
            # max_recoveries claim timeouts.
            logger.warning("worker.unknown_pipeline", pipeline=message.pipeline, key=message.key)
            return
        stored: Any = await self._ops.hgetall(self.keys.jobs(message.id))
        records = jobs_of(stored)
        try:
            self.dispatcher.admit_received(pipeline, message, plan_from(pipeline, records))
        except Overloaded:
            raise  # a bug here, never the message's fault: the read loop waits for room
        except Exception as error:  # the event no longer validates: the message is dead
            await self._dead_letter(delivery, f"its event does not validate: {error}")
            return
        self._held[delivery.message_id] = delivery
        self._by_completion[message.id] = delivery.message_id
        if delivery.deliveries > 1:
            self._suspect = delivery.message_id

    # -- finishing --------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        assert self._writes is not None
        async for write in self._writes:
            await self._apply([write, *self._queued()])

    def _queued(self) -> list[Write]:
        assert self._writes is not None
        writes = []
        while True:
            try:
                writes.append(self._writes.receive_nowait())
            except anyio.WouldBlock:
                return writes

    async def _apply(self, writes: list[Write]) -> None:
        # Every job outcome queued so far goes in one round trip: a job that finished is
        # run again after a SIGKILL only if its outcome was still on its way, so the
        # shorter that gap, the closer the re-runs stay to the jobs actually running.
        jobs = [(completion_id, job, record) for kind, completion_id, job, record in writes
                if kind in ("spawn", "job")]  # fmt: skip
        if jobs:
            async with self._ops.pipeline(transaction=False) as batch:
                for completion_id, job, record in jobs:
                    batch.hset(self.keys.jobs(completion_id), job, record)
                    batch.expire(self.keys.jobs(completion_id), RESULT_TTL_S)
                await batch.execute()
            self._unstored.stored(sum(1 for write in writes if write[0] == "job"))
        # Then the finished completions, each after its own jobs' outcomes (queued earlier).
        for kind, completion_id, report, _ in writes:
            if kind == "finish":
                await self._finished(completion_id, report)

    async def _flush(self) -> None:
        """Apply every write queued so far (the drain's outcomes and acknowledgements)."""
        await self._apply(self._queued())

    async def _finished(self, completion_id: str, report: Report) -> None:
        message_id = self._by_completion.pop(completion_id, None)
        delivery = self._held.get(message_id) if message_id is not None else None
        if delivery is None or delivery.completion is None:
            return
        try:
            if not any(o.status is JobStatus.CANCELLED for o in report.outcomes):
                await self._store(delivery, report)
            # else: cut by the drain; handed back at stop, to run on elsewhere
        finally:
            del self._held[delivery.message_id]  # its place is free once it is acknowledged
            if self._suspect == delivery.message_id:
                self._suspect = None
            self._held_changed.set()

    async def _store(self, delivery: _Delivery, report: Report) -> None:
        """Store the report, then acknowledge the message (never the other way round)."""
        message = delivery.completion
        assert message is not None
        result: TaskiqResult[Any] = TaskiqResult(
            is_err=False,
            return_value=report.model_dump(mode="json"),
            execution_time=round(time.monotonic() - delivery.received, 6),
            labels={"pipeline": message.pipeline, "key": message.key},
        )
        await self.results.set_result(message.id, result)
        await self._finish(
            keys=[self.keys.stream, self.keys.jobs(message.id), self.keys.unfinished],
            args=[GROUP, delivery.message_id, message.label],
        )
        self.counts["acked"] += 1

    async def _poisoned(self, delivery: _Delivery) -> None:
        message = delivery.completion
        reason = (
            f"delivered {delivery.deliveries} times without finishing: each worker that took "
            "it died (or could not run its pipeline); moved to the dead letters "
            f"({self.keys.dead})"
        )
        logger.error(
            "afterwork.poisoned",
            message_id=delivery.message_id,
            deliveries=delivery.deliveries,
            key=message.key if message is not None else None,
        )
        self.counts["poisoned"] += 1
        await self._dead_letter(delivery, reason)

    async def _dead_letter(self, delivery: _Delivery, reason: str) -> None:
        """Move a message to the dead-letter stream; its producer gets a failed report."""
        entry: Any = await self._ops.xrange(
            self.keys.stream, delivery.message_id, delivery.message_id
        )
        fields = dict(entry[0][1]) if entry else {}
        async with self._ops.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead, {**fields, b"origin_id": delivery.message_id,
                                       b"deliveries": str(delivery.deliveries),
                                       b"reason": reason, b"consumer": self.consumer})  # fmt: skip
            pipe.xack(self.keys.stream, GROUP, delivery.message_id)
            await pipe.execute()
        message = delivery.completion
        if message is None:
            return
        pipeline = self.pipelines.get(message.pipeline)
        jobs = list(pipeline.jobs) if pipeline is not None else ["(unknown pipeline)"]
        error = f"JournalError: {reason}"
        failed = tuple(JobOutcome(job=j, status=JobStatus.FAILED, attempts=delivery.deliveries,
                                  duration_s=0.0, error=error) for j in jobs)  # fmt: skip
        report = Report(pipeline=message.pipeline, key=message.key, ok=False, outcomes=failed)
        await self.results.set_result(
            message.id,
            TaskiqResult(
                is_err=False,
                return_value=report.model_dump(mode="json"),
                execution_time=0.0,
                labels={},
            ),
        )
        await self._ops.delete(self.keys.jobs(message.id))
        if await self._ops.hincrby(self.keys.unfinished, message.label, -1) <= 0:
            await self._ops.hdel(self.keys.unfinished, message.label)

    # -- claims -----------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        while True:
            await anyio.sleep(self.claim_timeout / 3)
            ids = list(self._held)
            if not ids:
                continue
            try:
                renewed = {_text(i) for i in await self._renew(
                    keys=[self.keys.stream], args=[GROUP, self.consumer, *ids])}  # fmt: skip
            except (RedisConnectionError, ResponseError) as error:
                logger.warning("worker.renew_failed", error=str(error))
                continue
            for message_id in ids:
                delivery = self._held.get(message_id)
                if delivery is not None and message_id not in renewed and not delivery.lost:
                    delivery.lost = True  # at-least-once: another worker may run it too
                    logger.warning("worker.claim_lost", message_id=message_id)

    async def _release(self, message_ids: list[Any]) -> None:
        """Hand messages back: moved to the group's ``released`` consumer, idle past the
        claim timeout at once, so any worker takes them now and this one can leave."""
        if message_ids:
            await self._ops.xclaim(
                self.keys.stream, GROUP, RELEASED, 0, message_ids,
                idle=int(self.claim_timeout * 1000), justid=True,
            )  # fmt: skip
            self.counts["released"] += len(message_ids)

    async def _leave(self) -> None:
        """Hand back whatever is still pending for this worker, and leave the group."""
        try:
            mine: Any = await self._ops.xpending_range(
                self.keys.stream, GROUP, "-", "+", 10_000, consumername=self.consumer
            )
            await self._release([_text(p["message_id"]) for p in mine])
            for consumer in (self.consumer, RELEASED):  # RELEASED too, once taken over
                await self._ops.eval(_scripts.DELETE_IF_IDLE, 1, self.keys.stream, GROUP, consumer)
            logger.info("worker.stopped", consumer=self.consumer, **self.counts)
        except (RedisConnectionError, ResponseError) as error:
            logger.error("worker.leave_failed", error=str(error))
        finally:
            await self._reader.aclose()
            await self._ops.aclose()
            await self.results.shutdown()

    async def _maintenance_loop(self) -> None:
        while True:
            await anyio.sleep(MAINTENANCE_S)
            try:
                await trim_acknowledged(self._ops, self.keys)
                await self._ops.eval(
                    _scripts.FORGET_DEAD, 1, self.keys.stream, GROUP,
                    int(10 * self.claim_timeout * 1000), self.consumer,
                )  # fmt: skip
            except (RedisConnectionError, ResponseError) as error:
                logger.warning("worker.maintenance_failed", error=str(error))


async def trim_acknowledged(redis: Redis, keys: Keys) -> int:
    """Trim the stream below the oldest entry any group still needs: its oldest pending
    entry, or, with none pending, the one after the last it read."""
    bounds = []
    groups: Any = await redis.xinfo_groups(keys.stream)
    for group in groups:
        summary: Any = await redis.xpending(keys.stream, group["name"])
        if summary["pending"]:
            bounds.append(_text(summary["min"]))
        else:
            millis, sequence = _text(group["last-delivered-id"]).split("-")
            bounds.append(f"{millis}-{int(sequence) + 1}")
    if not bounds:
        return 0
    oldest = min(bounds, key=lambda i: tuple(map(int, i.split("-"))))
    return int(await redis.xtrim(keys.stream, minid=oldest, approximate=False))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
