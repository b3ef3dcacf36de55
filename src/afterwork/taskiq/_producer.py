"""The Producer: the web process's side of the scale-out. It enqueues; workers run the jobs.

``submit`` checks the event completely before anything is sent (pydantic's
``ValidationError``, or ``InvalidEvent`` for a key or an event Redis could not carry exactly),
refuses when the queue's backlog (messages not yet read, plus those being processed) has
reached ``max_pending`` (``Overloaded``), and returns once the message is in Redis.
``handle.wait()`` returns the worker's ``Report`` from taskiq's result backend.

Delayed submission is not offered here: ``submit(delay=...)`` raises ``InvalidOption``.
"""

from __future__ import annotations

import contextvars
import math
import uuid
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel
from redis.asyncio import Redis
from taskiq_redis import RedisStreamBroker

from afterwork import _codec, _options
from afterwork._exceptions import DispatcherClosed, DispatcherNotOpen, InvalidOption, Overloaded
from afterwork._models import Report
from afterwork._pipeline import Pipeline
from afterwork._replay import log_context

from ._broker import RESULT_TTL_S, ensure_group, redis_broker
from ._wire import GROUP, Completion, Keys

E = TypeVar("E", bound=BaseModel)


class RemoteHandle:
    """A completion sent to the workers. ``await handle.wait()`` returns its Report."""

    def __init__(self, producer: Producer, completion: Completion) -> None:
        self._producer = producer
        self.id = completion.id
        self.pipeline = completion.pipeline
        self.key = completion.key

    def __repr__(self) -> str:
        return f"<RemoteHandle {self.pipeline}:{self.key} {self.id}>"

    async def wait(self, timeout: float | None = None) -> Report:
        """The worker's report, once it is stored; ``TimeoutError`` after ``timeout`` s."""
        return await self._producer.report(self.id, timeout)


class Producer:
    """Sends completions to ``afterwork worker`` processes over Redis Streams.

    ``broker`` is a Redis URL (a broker is then made with ``redis_broker``) or a taskiq
    ``RedisStreamBroker`` with a result backend. ``max_pending`` bounds the queue's backlog.
    Use it as ``async with Producer(...) as producer:``.
    """

    def __init__(
        self,
        broker: str | RedisStreamBroker,
        *,
        pipelines: Iterable[Pipeline[Any]] = (),
        max_pending: int = 1000,
        queue: str = "afterwork",
        result_ttl_s: int = RESULT_TTL_S,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.max_pending = _options.count(
            "max_pending", max_pending, 1, "e.g. Producer(url, max_pending=1000)"
        )
        self.poll_interval_s = _options.seconds(
            "poll_interval_s", poll_interval_s, "e.g. Producer(url, poll_interval_s=0.05)",
            positive=True,
        )  # fmt: skip
        if isinstance(broker, str):
            broker = redis_broker(broker, queue=queue, result_ttl_s=result_ttl_s)
        elif not isinstance(broker, RedisStreamBroker):
            raise InvalidOption(
                f"Producer takes a Redis URL or a taskiq RedisStreamBroker, got {broker!r}; "
                "e.g. Producer('redis://127.0.0.1:6379/0')"
            )
        self.broker = broker
        self.keys = Keys(broker.queue_name)
        for pipeline in pipelines:
            _codec.check_model(pipeline.event)
        self._redis: Redis | None = None
        self._state = "new"

    def __repr__(self) -> str:
        return f"<Producer {self._state} queue={self.keys.queue!r}>"

    async def __aenter__(self) -> Producer:
        if self._state != "new":
            raise DispatcherClosed("this Producer was already used; create a new one")
        self._redis = Redis(connection_pool=self.broker.connection_pool)
        await ensure_group(self._redis, self.keys)  # before the broker's own, from entry 0
        await self.broker.startup()
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        with anyio.CancelScope(shield=True):
            await self.broker.shutdown()

    async def submit(
        self,
        pipeline: Pipeline[E],
        event: E | Mapping[str, Any],
        *,
        timeout: float | None = None,
        delay: float | None = None,
    ) -> RemoteHandle:
        """Send ``event`` to the workers; return once the message is in Redis.

        Waits up to ``timeout`` seconds (``None``: as long as it takes, ``0``: not at all)
        for the backlog to drop below ``max_pending``, then raises ``Overloaded``.
        """
        self._check_open(pipeline)
        if delay is not None:
            raise InvalidOption(
                "submit(delay=...) is not offered by the Redis scale-out: a delayed "
                "completion would have to wait in Redis, which afterwork does not do yet; "
                "submit it when it is due, or use a local Dispatcher for delayed work"
            )
        limit = None if timeout is None else _options.seconds(
            "submit timeout", timeout, "e.g. producer.submit(pipeline, event, timeout=0)"
        )  # fmt: skip
        completion = self._prepare(pipeline, event)
        await self._wait_for_room(completion, limit)
        message = self.broker.formatter.dumps(completion.message())
        # The message and its count in ``unfinished`` go in one transaction: sent one after
        # the other, a cancellation between them (or a worker finishing first) would leave
        # the count off by one for good.
        async with self._connection().pipeline(transaction=True) as both:
            both.xadd(
                message.labels.get("queue_name") or self.broker.queue_name,
                {b"data": message.message},
                maxlen=self.broker.maxlen,
                approximate=self.broker.approximate,
            )
            both.hincrby(self.keys.unfinished, completion.label, 1)
            await both.execute()
        return RemoteHandle(self, completion)

    async def run(
        self, pipeline: Pipeline[E], event: E | Mapping[str, Any], *, timeout: float | None = None
    ) -> Report:
        """Submit ``event`` and wait for its report."""
        handle = await self.submit(pipeline, event, timeout=timeout)
        return await handle.wait()

    async def report(self, completion_id: str, timeout: float | None = None) -> Report:
        """The report of completion ``completion_id``, waiting for it to be stored.

        ``TimeoutError`` once ``timeout`` seconds pass without it (``0``: look once).
        """
        limit = None if timeout is None else _options.seconds(
            "timeout", timeout, "e.g. handle.wait(timeout=30)"
        )  # fmt: skip
        backend = self.broker.result_backend
        deadline = math.inf if limit is None else anyio.current_time() + limit
        # Polled: the report is written by another process, with nothing here to wake on.
        while not await backend.is_result_ready(completion_id):
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise TimeoutError(
                    f"no report for completion {completion_id} within {limit:g} s; is an "
                    f"'afterwork worker' running on the queue {self.keys.queue!r}?"
                )
            await anyio.sleep(min(self.poll_interval_s, remaining))
        result = await backend.get_result(completion_id)
        return Report.model_validate(result.return_value)

    async def backlog(self) -> int:
        """Messages not read yet, plus those being processed, in this queue's group."""
        redis = self._connection()
        for group in await redis.xinfo_groups(self.keys.stream):
            name = group["name"]
            if (name.decode() if isinstance(name, bytes) else name) == GROUP:
                lag = group.get("lag")
                waiting = int(lag) if lag is not None else int(await redis.xlen(self.keys.stream))
                return waiting + int(group["pending"])
        return int(await redis.xlen(self.keys.stream))

    async def unfinished(self, pipeline: Pipeline[Any], key: str) -> int:
        """How many completions of ``key`` were submitted and have not finished yet."""
        value = await self._connection().hget(self.keys.unfinished, f"{pipeline.name}:{key}")
        return max(0, int(value or 0))

    def _prepare(self, pipeline: Pipeline[E], event: E | Mapping[str, Any]) -> Completion:
        if not isinstance(pipeline, Pipeline):
            raise InvalidOption(
                f"submit() takes a Pipeline first, got {pipeline!r}; "
                "e.g. producer.submit(pipeline, event)"
            )
        _codec.check_model(pipeline.event)
        model = pipeline.coerce(event)
        return Completion(
            id=uuid.uuid4().hex,
            pipeline=pipeline.name,
            key=pipeline.key_of(model),
            event=_codec.encode(pipeline.event, model).decode(),
            context=log_context(contextvars.copy_context()),
        )

    async def _wait_for_room(self, completion: Completion, timeout: float | None) -> None:
        backlog = await self.backlog()
        if backlog < self.max_pending:
            return
        # Polled: the backlog drops in other processes (the workers), with no event to await.
        with anyio.move_on_after(float("inf") if timeout is None else timeout):
            while backlog >= self.max_pending:
                await anyio.sleep(self.poll_interval_s)
                backlog = await self.backlog()
            return
        waited = "" if timeout == 0 else f" within {timeout:g} s"
        raise Overloaded(
            f"cannot send {completion.label}{waited}: the queue {self.keys.queue!r} holds "
            f"{backlog} completions, max_pending={self.max_pending}; retry later",
            pending=backlog,
            max_pending=self.max_pending,
        )

    def _connection(self) -> Redis:
        assert self._redis is not None
        return self._redis

    def _check_open(self, what: Pipeline[Any]) -> None:
        if self._state == "open":
            return
        if self._state == "new":
            raise DispatcherNotOpen(
                "this Producer is not open yet; use 'async with Producer(...) as producer:'"
            )
        raise DispatcherClosed(
            f"cannot send {what.name if isinstance(what, Pipeline) else what!r}: the Producer "
            "is closed; send before leaving its 'async with', or to a new Producer"
        )
