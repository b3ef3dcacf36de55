"""Admission (G4): at most ``max_pending`` completions admitted and unfinished, and at most
``max_active`` of them running their jobs; the rest wait in a FIFO queue, holding only their
event and a few small objects.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import anyio

from ._completion import Completion


class Admission:
    """Room for completions, and the order in which admitted ones start."""

    def __init__(
        self, max_pending: int, max_active: int, start: Callable[[Completion], None]
    ) -> None:
        self.max_pending = max_pending
        self.max_active = max_active
        self.unfinished: set[Completion] = set()  # admitted and unfinished, queued or not
        self._room = anyio.Semaphore(max_pending)
        self._queued: deque[Completion] = deque()
        self._active = 0
        self._waiters: set[anyio.CancelScope] = set()
        self._start = start

    @property
    def queued(self) -> int:
        return len(self._queued)

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

    def admit(self, completion: Completion) -> None:
        """Admit a completion whose room was taken; it starts now or once a place frees."""
        self.unfinished.add(completion)
        self._queued.append(completion)
        self.start_queued()

    def start_queued(self, *, all_of_them: bool = False) -> None:
        """Start queued completions while fewer than ``max_active`` run (or all of them)."""
        while self._queued and (all_of_them or self._active < self.max_active):
            self._active += 1
            self._start(self._queued.popleft())

    def finished(self, completion: Completion) -> None:
        """A started completion ended: free its room and its place."""
        self.unfinished.discard(completion)
        self._room.release()
        self._active -= 1
        self.start_queued()
