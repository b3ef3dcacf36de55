"""Helpers for testing code that uses afterwork, and for measuring it.

- ``ThreadSampler`` counts OS threads from a thread of its own, so it sees what the event loop
  cannot: threads that block, hang or outlive the task that started them.
- ``Gate`` is blocking work that holds its thread until the test opens it, counting how many
  threads run it at once: concurrency asserted by counting, not by sleeping.
- ``wait_until`` polls a condition that has no event to wait on (a thread counter, stats).
- ``serving`` runs an ASGI app under uvicorn on a free loopback port, in the current event
  loop, with its real lifespan (it needs the ``service`` extra).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

__all__ = ["Gate", "ServerFailed", "ThreadSampler", "base_url", "serving", "wait_until"]


class ThreadSampler:
    """Counts live threads every ``interval`` seconds while in use.

    ``peak_above_baseline`` is the most threads seen alive at once that were not alive when
    the sampler started (its own thread excluded). Threads are told apart by identity, so a
    leftover thread from earlier work that exits meanwhile cannot hide a new one::

        with ThreadSampler() as sampler:
            ...  # run work
        assert sampler.peak_above_baseline <= 32

    A pool that keeps idle threads from earlier work (trio's thread cache across runs) can
    run new work on threads alive at the start, which are not counted: count the work running
    at once as well in that case (``Gate``).
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._before: set[threading.Thread] = set()
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="afterwork-sampler", daemon=True)

    @property
    def peak_above_baseline(self) -> int:
        return self.peak

    def __enter__(self) -> ThreadSampler:
        self._before = set(threading.enumerate())
        self.baseline = len(self._before)
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> int:
        """Take one sample now and return the number of threads above the baseline."""
        new = [t for t in threading.enumerate() if t not in self._before and t is not self._thread]
        count = len(new)
        self.peak = max(self.peak, count)
        self.samples.append((time.perf_counter() - self._t0, count))
        return count

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


class Gate:
    """Blocking work that records how many threads run it at once, until released.

    Jobs call ``gate.block()``; the test waits for ``gate.running`` to reach a number, asserts,
    then calls ``gate.open()``. Nothing here depends on timing. ``limit`` bounds the wait, so
    a failing test cannot hang the suite.
    """

    def __init__(self, limit: float = 30.0) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.running = 0
        self.peak = 0
        self.entered = 0

    def block(self, *_: object, **__: object) -> None:
        with self.counted():
            if not self._released.wait(timeout=self.limit):
                raise RuntimeError(f"the gate was not opened within {self.limit} s")

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        """Count the enclosed work as running, for ``running``, ``peak`` and ``entered``."""
        with self._lock:
            self.running += 1
            self.entered += 1
            self.peak = max(self.peak, self.running)
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1

    def open(self) -> None:
        self._released.set()

    @property
    def is_open(self) -> bool:
        return self._released.is_set()


async def wait_until(
    predicate: Callable[[], bool], what: str, *, limit: float = 30.0, interval: float = 0.005
) -> None:
    """Poll ``predicate`` on the event loop until it is true; fail naming ``what`` after
    ``limit`` seconds. From synchronous code: ``anyio.run(functools.partial(wait_until, ...))``.

    The limit is a safety net for a broken test, not a measurement: keep it generous, so a
    busy machine never fails a correct test.
    """
    deadline = anyio.current_time() + limit
    # Polls state that has no event to wait on (thread counters, stats, other processes).
    while not predicate():
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await anyio.sleep(interval)


class ServerFailed(RuntimeError):
    """The server stopped before it was ready (its lifespan startup failed, or the port)."""


def base_url(server: uvicorn.Server) -> str:
    """``http://host:port`` of a started server."""
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def serving(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, **config: Any
) -> AsyncIterator[uvicorn.Server]:
    """Serve ``app`` until the block ends; then shut it down as on SIGTERM, and wait.

    Real HTTP on ``host``, a free port chosen by the OS unless ``port`` is given, and a real
    lifespan (startup, then drain on the way out). ``base_url(server)`` gives its address.
    """
    import uvicorn

    options: dict[str, Any] = {"log_level": "warning", "access_log": False, **config}
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="on", **options))
    stopped = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when the lifespan startup fails; we report it
            pass
        finally:
            stopped.set()

    failure: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(serve)
        await wait_until(lambda: server.started or stopped.is_set(), "the server to start")
        if not server.started:
            raise ServerFailed(
                f"the server on {host}:{port} stopped before it was ready; its log says why"
            )
        try:
            yield server
        except Exception as error:
            # Raised again below, outside the task group: the caller gets its own exception,
            # not a group, and the server still shuts down (and closes its socket) first.
            failure = error
        finally:
            server.should_exit = True
    if failure is not None:
        raise failure
