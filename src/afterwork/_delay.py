"""Work that waits for its time without holding a pending place (G11).

Two kinds of work wait here: submissions made with ``delay=``, and parked jobs (a retry wait
longer than ``park_after``) continuing as follow-ups. Both are admitted at once (on disk first,
with a journal) and count against ``max_delayed``, never against ``max_pending``: a dead or
throttling endpoint can then never take the places of work that is due now. When an entry is
due, the dispatcher moves it into admission, where it waits for room like any ``submit``, so
G4 holds.

Times are kept twice: on the event loop's clock for scheduling, and as wall-clock time on the
completion (``due_at``) for the journal, since a monotonic clock means nothing after a restart.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from ._completion import Completion


class Delayed:
    """The waiting entries, earliest first, and the ``max_delayed`` bound on them."""

    def __init__(self, max_delayed: int, park_after: float) -> None:
        self.max_delayed = max_delayed
        self.park_after = park_after
        self._slots = anyio.Semaphore(max_delayed)
        self._heap: list[tuple[float, int, Completion]] = []
        self._order = itertools.count()
        self._changed = anyio.Event()
        self._waiters: set[anyio.CancelScope] = set()

    def __len__(self) -> int:
        return self.max_delayed - self._slots.value

    @property
    def entries(self) -> list[Completion]:
        return [entry for _, _, entry in self._heap]

    def take_slot_nowait(self) -> bool:
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            return False
        return True

    async def wait_for_slot(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` for a slot; False on timeout or when refused by a drain."""
        with anyio.CancelScope() as scope:
            self._waiters.add(scope)
            try:
                with anyio.move_on_after(math.inf if timeout is None else timeout):
                    await self._slots.acquire()
                    return True
            finally:
                self._waiters.discard(scope)
        return False

    def refuse_waiters(self) -> None:
        """Wake every caller waiting for a slot (a drain began): they get none."""
        for scope in self._waiters:
            scope.cancel()

    def give_back_slot(self) -> None:
        self._slots.release()

    def may_park(self, wait: float) -> bool:
        """Whether a retry wait of ``wait`` seconds parks; if so, a slot is taken for it.

        With ``max_delayed`` full, the job waits in place instead, holding its room: the
        bound on waiting work holds either way.
        """
        return wait > self.park_after and self.take_slot_nowait()

    def add(self, completion: Completion, due: float) -> None:
        """Schedule ``completion`` (whose slot is taken) at ``due`` on the loop's clock."""
        heapq.heappush(self._heap, (due, next(self._order), completion))
        self._wake()

    async def next_due(self) -> Completion:
        """Wait until the earliest entry is due, and return it (still scheduled)."""
        while True:
            changed = self._changed
            if self._heap:
                due, _, first = self._heap[0]
                if due <= anyio.current_time():
                    return first
                with anyio.move_on_after(due - anyio.current_time()):
                    await changed.wait()
            else:
                await changed.wait()

    def remove(self, completion: Completion) -> None:
        """Take the due ``completion`` out; its slot goes back."""
        if self._heap and self._heap[0][2] is completion:
            heapq.heappop(self._heap)
        else:  # an earlier entry was added while it waited for room
            self._heap = [entry for entry in self._heap if entry[2] is not completion]
            heapq.heapify(self._heap)
        self.give_back_slot()

    def take_all(self) -> list[Completion]:
        """Take every entry out (a drain): none of them starts."""
        entries = [entry for _, _, entry in sorted(self._heap)]
        self._heap.clear()
        for _ in entries:
            self.give_back_slot()
        return entries

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
