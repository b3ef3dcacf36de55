"""Shared test helpers: events, a blocking gate that counts concurrency, and waiting on state."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import anyio
from pydantic import BaseModel, Field

import afterwork as aw


class Ev(BaseModel):
    """The event most tests submit."""

    id: int
    text: str = ""
    tags: list[str] = Field(default_factory=list)


def make_pipeline(name: str = "p") -> aw.Pipeline[Ev]:
    return aw.Pipeline(name, event=Ev, key=lambda e: e.id)


class Gate:
    """Blocking work that records how many threads run it at once, until released.

    Jobs call ``gate.block()``; the test waits for ``gate.running`` to reach a number, asserts,
    then calls ``gate.open()``. Nothing here depends on timing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.running = 0
        self.peak = 0
        self.entered = 0

    def block(self, *_: object, **__: object) -> None:
        with self.counted():
            # Bounded so a failing test cannot hang the suite; tests open the gate long before.
            if not self._released.wait(timeout=20):
                raise RuntimeError("gate was never opened")

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


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Wait (polling the event loop) until ``predicate()`` is true, or fail after ``limit`` s."""
    with anyio.fail_after(limit):
        # Polls state that has no event to wait on (thread counters, stats).
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.002)
    assert predicate(), what
