"""Every exception afterwork raises, in one place.

The hierarchy::

    Exception
     └── AfterworkError                       base of everything raised here
          ├── Overloaded                         no room: max_pending (or max_delayed) is full
          ├── DispatcherClosed (RuntimeError)    the dispatcher is draining or closed
          ├── DispatcherNotOpen (RuntimeError)   used before ``async with Dispatcher(...)``
          ├── UsageError (RuntimeError)          a rule of use broken: re-entry, another event
          │                                      loop or thread, a spawn after the job ended
          ├── InvalidOption (ValueError)         an option whose value afterwork cannot use
          ├── InvalidJob (TypeError)             a job or child that cannot be called as one
          ├── InvalidEvent (ValueError)          an event of the wrong type, a bad key, or one
          │                                      that the journal cannot keep exactly
          ├── DuplicateJob (ValueError)          a job, child or pipeline name used twice
          ├── UnknownLane (LookupError)          a job names a lane the dispatcher lacks
          ├── JournalError                       the journal cannot be opened, owned or written
          ├── RetryLater                         raised by a job: try again after ``seconds``
          └── JobTimeout (TimeoutError)          internal: one attempt ran past its timeout

Events that fail their model's validation raise pydantic's ``ValidationError``, which names
the field. Every other error afterwork raises for a mistake is one of the above, and each
also subclasses the builtin a caller would already catch for that kind of mistake.
"""

from __future__ import annotations

import math

#: The longest wait afterwork schedules (a delay, a RetryLater): a year.
MAX_WAIT_S = 366 * 24 * 3600.0


class AfterworkError(Exception):
    """Base class of the exceptions that afterwork raises."""


class Overloaded(AfterworkError):
    """Admission was refused: ``max_pending`` completions (or, for delayed work,
    ``max_delayed`` waiting ones) are already there."""

    def __init__(self, message: str, *, pending: int, max_pending: int) -> None:
        super().__init__(message)
        self.pending = pending
        self.max_pending = max_pending


class DispatcherClosed(AfterworkError, RuntimeError):
    """The dispatcher is draining or closed and admits no new work."""


class DispatcherNotOpen(AfterworkError, RuntimeError):
    """The dispatcher was used before it was entered with ``async with``."""


class UsageError(AfterworkError, RuntimeError):
    """afterwork was used in a way its rules forbid.

    Entering a dispatcher twice, using it from another event loop or from a thread that is
    not the loop's, or spawning a child after the job that spawns it has ended.
    """


class InvalidOption(AfterworkError, ValueError):
    """An option of a dispatcher, pipeline, job or journal has a value afterwork cannot use."""


class InvalidJob(AfterworkError, TypeError):
    """A job or child function cannot be called the way afterwork calls it."""


class InvalidEvent(AfterworkError, ValueError):
    """An event that is not the pipeline's model, whose key function gives no usable key, or
    that the journal cannot store and read back exactly."""


class DuplicateJob(AfterworkError, ValueError):
    """A job name registered twice, a child name spawned twice by one attempt, or two
    pipelines of one name in one dispatcher."""


class UnknownLane(AfterworkError, LookupError):
    """A job names a lane that the dispatcher was not given."""


class JournalError(AfterworkError):
    """The journal cannot be opened, is owned by another process, is damaged, or failed to
    write: durability is not there, so afterwork says so instead of carrying on."""


class RetryLater(AfterworkError):
    """Raised by a job to be tried again after ``seconds`` (a ``Retry-After``, say).

    It counts as a failed attempt against the job's ``retries``. A wait longer than the
    dispatcher's ``park_after`` parks the job: its completion finishes now, reporting it
    ``deferred``, and the job runs again later without holding a pending place.
    """

    def __init__(self, seconds: float, reason: str = "") -> None:
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not (math.isfinite(seconds) and 0 <= seconds <= MAX_WAIT_S)
        ):
            raise InvalidOption(
                f"RetryLater seconds must be a finite number from 0 to {MAX_WAIT_S:.0f} (a "
                f"year), got {seconds!r}; e.g. raise RetryLater(30)"
            )
        self.seconds = float(seconds)
        self.reason = reason
        super().__init__(f"retry in {self.seconds:g} s" + (f": {reason}" if reason else ""))


class JobTimeout(AfterworkError, TimeoutError):
    """One attempt of a job ran past its timeout.

    Reported as ``timed_out``; it never reaches the caller of ``run`` or ``submit``.
    """
