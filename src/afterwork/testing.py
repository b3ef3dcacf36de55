"""Helpers for testing code that uses afterwork, and for measuring it.

``ThreadSampler`` counts OS threads from a thread of its own, so it sees what the event loop
cannot: threads that block, hang or outlive the task that started them.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType


class ThreadSampler:
    """Samples ``threading.active_count()`` every ``interval`` seconds while in use.

    ``peak_above_baseline`` is the most threads seen at once beyond those alive when the
    sampler started (its own thread excluded)::

        with ThreadSampler() as sampler:
            ...  # run work
        assert sampler.peak_above_baseline <= 32
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="afterwork-sampler", daemon=True)

    @property
    def peak_above_baseline(self) -> int:
        return max(0, self.peak - self.baseline)

    def __enter__(self) -> ThreadSampler:
        self.baseline = threading.active_count()
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
        """Take one sample now and return it (threads above baseline)."""
        # The sampler's own thread is alive while sampling: do not count it.
        count = threading.active_count() - (1 if self._thread.is_alive() else 0)
        self.peak = max(self.peak, count)
        self.samples.append((time.perf_counter() - self._t0, count - self.baseline))
        return count - self.baseline

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
