"""afterwork beyond one machine: the same pipelines on taskiq workers over Redis Streams.

The web process sends, ``afterwork worker`` processes run the jobs::

    from afterwork.taskiq import Producer

    async with Producer("redis://127.0.0.1:6379/0", pipelines=[pipeline]) as producer:
        handle = await producer.submit(pipeline, event)   # returns once the message is in Redis
        report = await handle.wait()                      # the worker's Report

Each worker runs the completions it takes in a local ``Dispatcher``, with its own thread
budget, isolation, timeouts, retries, lanes and drain. Needs ``afterwork[taskiq]``; the worker
runs on asyncio.
"""

from __future__ import annotations

from ._broker import redis_broker as redis_broker
from ._producer import Producer as Producer
from ._producer import RemoteHandle as RemoteHandle
from ._worker import Worker as Worker

__all__ = ["Producer", "RemoteHandle", "Worker", "redis_broker"]
