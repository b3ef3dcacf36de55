"""Admission (G4): at most ``max_pending`` completions admitted and unfinished, and at most
``max_active`` of them running their jobs; the rest wait in a FIFO queue, holding only their
event and a few small objects.

This module only keeps the books. It never starts anything itself: ``admit`` and
``finished`` return the completions that may start now, and the dispatcher starts them.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from ._completion import Completion


class Admission:
    """Room for completions, and the order in which admitted ones start."""

    def __init__(self, max_pending: int, max_active: int) -> None:
        self.max_pending = max_pending
        self.max_active = max_active
        #: Admitted and unfinished, queued or running.
        self.pending: set[Completion] = set()
        self._room = anyio.Semaphore(max_pending)
        self._queue: deque[Completion] = deque()
        self._active = 0
        self._waiters: set[anyio.CancelScope] = set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def can_start_now(self) -> bool:
        """Whether one more completion would be admitted and start at once."""
        return self._room.value > 0 and not self._queue and self._active < self.max_active

    def take_room_nowait(self) -> bool:
        """Take room for one completion if there is some now."""
        try:
            self._room.acquire_nowait()
        except anyio.WouldBlock:
            return False
        return True

    async def wait_for_room(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` for room; False on timeout or when refused by a drain."""
        with anyio.CancelScope() as scope:
            self._waiters.add(scope)
            try:
                with anyio.move_on_after(math.inf if timeout is None else timeout):
                    await self._room.acquire()
                    return True
            finally:
                self._waiters.discard(scope)
        return False

    def give_back_room(self) -> None:
        self._room.release()

    def refuse_waiters(self) -> None:
        """Wake every caller waiting for room (a drain began): they get no room."""
        for scope in self._waiters:
            scope.cancel()

    def admit(self, completion: Completion, *, first: bool = False) -> list[Completion]:
        """Admit a completion whose room was taken; return what may start now (``first``
        puts it at the head of the queue)."""
        self.pending.add(completion)
        if first:
            self._queue.appendleft(completion)
        else:
            self._queue.append(completion)
        return self._startable()

    def finished(self, completion: Completion) -> list[Completion]:
        """A started completion ended: free its room and its place; return what may start."""
        self.pending.discard(completion)
        self._room.release()
        self._active -= 1
        return self._startable()

    def take_queued(self) -> list[Completion]:
        """Take out every completion that has not started (a drain deadline): none will."""
        queued = list(self._queue)
        self._queue.clear()
        for completion in queued:
            self.pending.discard(completion)
            self._room.release()
        return queued

    def set_max_active(self, max_active: int) -> list[Completion]:
        """Change how many completions may run at once; return what may start now."""
        self.max_active = max_active
        return self._startable()

    def _startable(self) -> list[Completion]:
        ready = []
        while self._queue and self._active < self.max_active:
            self._active += 1
            ready.append(self._queue.popleft())
        return ready
