"""The seed's chaos scenario, and the work plan every peer runs identically.

50 completions launched 5 ms apart, 7 blocking jobs each, each job sleeping uniformly 2-5 s
times ``scale``. The plan is drawn from a fixed seed, so every peer sleeps exactly the same
durations in the same order. Variants:

- ``hang``: every tenth job hangs for ``20 * scale`` s, past a timeout of ``6 * scale`` s
  (0.6 s at the default scale: just above the slowest ordinary job, so scheduling jitter never
  cuts an ordinary job short). Only peers that can time out a job take part.
- ``personas``: the seventh job does no work of its own; it fans out that many children, each
  sleeping like a job (the seed's one thread per persona).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel

MAX_THREADS = 32


@dataclass(frozen=True)
class Scenario:
    """One chaos run's shape."""

    scale: float = 0.1
    completions: int = 50
    jobs: int = 7
    spacing_s: float = 0.005
    hang: bool = False
    personas: int = 0
    seed: int = 4827

    @property
    def timeout_s(self) -> float:
        return 6 * self.scale

    @property
    def hang_s(self) -> float:
        return 20 * self.scale

    def params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Leaf:
    """One blocking call: a job, or one child of the personas job."""

    index: int
    seconds: float
    hangs: bool

    def block(self) -> None:
        time.sleep(self.seconds)


class Plan:
    """Who sleeps how long: ``jobs[c][k]`` is the leaves of job k of completion c."""

    def __init__(self, scenario: Scenario) -> None:
        rng = random.Random(scenario.seed)
        self.scenario = scenario
        self.jobs: list[list[list[Leaf]]] = []
        count = 0
        for _ in range(scenario.completions):
            completion: list[list[Leaf]] = []
            for k in range(scenario.jobs):
                width = scenario.personas if self.is_parent(k) else 1
                leaves = []
                for _ in range(width):
                    hangs = scenario.hang and count % 10 == 9
                    seconds = scenario.hang_s if hangs else rng.uniform(2, 5) * scenario.scale
                    leaves.append(Leaf(count, seconds, hangs))
                    count += 1
                completion.append(leaves)
            self.jobs.append(completion)
        self.leaves = [leaf for c in self.jobs for job in c for leaf in job]

    def is_parent(self, k: int) -> bool:
        return self.scenario.personas > 0 and k == self.scenario.jobs - 1

    @property
    def useful_work_s(self) -> float:
        """Thread-seconds of work that is meant to finish (hung leaves excluded)."""
        return sum(leaf.seconds for leaf in self.leaves if not leaf.hangs)

    @property
    def hung(self) -> int:
        return sum(leaf.hangs for leaf in self.leaves)


class Tracker:
    """Collects outcome times and timeouts from any thread; ``done`` fires at the last one."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.t0 = time.perf_counter()
        self.outcomes: list[float] = []
        self.timed_out = 0
        self.spurious_timeouts = 0
        # Seconds of ordinary work reported as timed out: not counted as work done.
        self.lost_work_s = 0.0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def record(self) -> None:
        with self._lock:
            self.outcomes.append(time.perf_counter())
            if len(self.outcomes) >= self.expected:
                self.done.set()

    def timeout(self, leaf: Leaf) -> None:
        with self._lock:
            self.timed_out += 1
            if not leaf.hangs:
                self.spurious_timeouts += 1
                self.lost_work_s += leaf.seconds

    @property
    def makespan_s(self) -> float:
        return max(self.outcomes) - self.t0 if self.outcomes else float("nan")


class Conversation(BaseModel):
    """The event of afterwork's peers: which completion of the plan this is."""

    id: int
