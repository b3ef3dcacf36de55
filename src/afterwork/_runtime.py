"""What every completion of one dispatcher shares: budget, lanes, counters and the recorder.

The ``Recorder`` is the seam where durability plugs in: the SQLite journal (``_replay``) and,
beyond one machine, Redis (``afterwork.taskiq``) each implement it, and the dispatcher without
either uses ``NullRecorder``. The ``Runtime`` is built once, on entry, with its final recorder.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from anyio.lowlevel import EventLoopToken
from structlog.typing import FilteringBoundLogger

from ._budget import Lanes, ThreadBudget
from ._models import JobOutcome, JobStatus, Report

if TYPE_CHECKING:
    from ._completion import Completion
    from ._delay import Delayed

#: Awaited by whoever must know a write is on disk (``submit``, a completion about to start).
Durable = Callable[[], Awaitable[object]]


class Recorder(Protocol):
    """Where admissions and outcomes go as they happen."""

    #: True when events must be encoded (and proven to round-trip) before admission.
    encodes_events: bool

    def admitted(self, completion: Completion) -> Durable | None:
        """Queue the admission's write; the result, awaited, returns once it is on disk."""
        ...

    def started(self, completion: Completion) -> Durable | None:
        """Queue the mark that the completion runs now; awaited before its jobs start."""
        ...

    def child_spawned(self, completion: Completion, job: str) -> None: ...

    def job_finished(self, completion: Completion, outcome: JobOutcome) -> None: ...

    def completion_finished(
        self, completion: Completion, report: Report, followups: list[Completion]
    ) -> None:
        """The completion is over and its report delivered; its parked jobs continue as
        ``followups``, which are recorded in the same write."""
        ...

    def interrupted(self, completion: Completion) -> None:
        """A drain stopped the completion (or it never started): keep it for the next start."""
        ...


class NullRecorder:
    """Records nothing: the dispatcher without a journal."""

    encodes_events = False

    def admitted(self, completion: Completion) -> Durable | None:
        return None

    def started(self, completion: Completion) -> Durable | None:
        return None

    def child_spawned(self, completion: Completion, job: str) -> None:
        pass

    def job_finished(self, completion: Completion, outcome: JobOutcome) -> None:
        pass

    def completion_finished(
        self, completion: Completion, report: Report, followups: list[Completion]
    ) -> None:
        pass

    def interrupted(self, completion: Completion) -> None:
        pass


def _zero_by_status() -> dict[JobStatus, int]:
    return dict.fromkeys(JobStatus, 0)


@dataclass
class Counters:
    """The dispatcher's running totals; ``Dispatcher.stats()`` copies them into a Stats."""

    admitted: int = 0
    completed: int = 0
    running: int = 0
    retried: int = 0
    by_status: dict[JobStatus, int] = field(default_factory=_zero_by_status)


@dataclass(frozen=True, eq=False)
class Runtime:
    """What every completion of one dispatcher shares."""

    budget: ThreadBudget
    lanes: Lanes
    counters: Counters
    recorder: Recorder
    delayed: Delayed
    #: The dispatcher's event loop, and its thread: work from other threads goes there.
    token: EventLoopToken
    loop_thread: int
    log: FilteringBoundLogger
