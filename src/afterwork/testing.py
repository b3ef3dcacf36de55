"""Helpers for testing code that uses afterwork, and for measuring it.

``ThreadSampler`` counts OS threads from a thread of its own, so it sees what the event loop
cannot: threads that block, hang or outlive the task that started them.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType


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
    at once as well in that case.
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
