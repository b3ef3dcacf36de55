"""taskiq's Redis Streams broker and result backend, configured the way afterwork needs them.

``redis_broker()`` is the broker afterwork's producer sends through, for users who also want
taskiq directly. The settings that differ from taskiq-redis's defaults, and why:

- ``consumer_id="0"``: the consumer group starts at the beginning of the stream, so messages
  sent before any worker started are delivered (``"$"`` would skip them);
- ``maxlen=None``: taskiq-redis trims with ``MAXLEN``, which drops entries whether or not
  they were processed; afterwork's workers trim only what every group has acknowledged;
- ``xread_count=1`` and ``unacknowledged_batch_size=1``: a reader takes one message at a
  time (fair dispatch), should anyone drive the broker's own ``listen``;
- results as JSON (not pickle: anyone who can write to Redis could otherwise run code in the
  producer), under a prefix of their own, expiring after ``result_ttl_s``.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from taskiq.serializers import JSONSerializer
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from ._wire import GROUP, Keys

#: How long a worker may hold a message without renewing its claim before others take it.
CLAIM_TIMEOUT_S = 30.0
#: How long a finished completion's report waits in Redis for its producer.
RESULT_TTL_S = 24 * 3600


def result_backend(
    url: str, queue: str = "afterwork", *, result_ttl_s: int = RESULT_TTL_S
) -> RedisAsyncResultBackend[object]:
    return RedisAsyncResultBackend(
        url,
        serializer=JSONSerializer(),
        prefix_str=Keys(queue).results,
        result_ex_time=result_ttl_s,
    )


def redis_broker(
    url: str,
    *,
    queue: str = "afterwork",
    claim_timeout_s: float = CLAIM_TIMEOUT_S,
    result_ttl_s: int = RESULT_TTL_S,
) -> RedisStreamBroker:
    """A taskiq ``RedisStreamBroker`` for ``queue`` at ``url``, set up as afterwork runs it
    (see the module docstring), with its JSON result backend."""
    broker = RedisStreamBroker(
        url,
        queue_name=Keys(queue).stream,
        consumer_group_name=GROUP,
        consumer_id="0",
        maxlen=None,
        xread_count=1,
        unacknowledged_batch_size=1,
        idle_timeout=int(claim_timeout_s * 1000),
    )
    return broker.with_result_backend(result_backend(url, queue, result_ttl_s=result_ttl_s))


async def ensure_group(redis: Redis, keys: Keys) -> None:
    """Create the stream and its consumer group from the first entry, if not there yet."""
    try:
        await redis.xgroup_create(keys.stream, GROUP, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
