"""Every exception afterwork raises, in one place.

The hierarchy::

    Exception
     └── AfterworkError                      base of everything raised here
          ├── Overloaded                        no room: max_pending completions unfinished
          ├── DispatcherClosed (RuntimeError)   the dispatcher is draining or closed
          ├── DispatcherNotOpen (RuntimeError)  used before ``async with Dispatcher(...)``
          ├── InvalidJob (TypeError)            a job or child that cannot be called as one
          ├── DuplicateJob (ValueError)         a job or child name used twice
          ├── UnknownLane (LookupError)         a job names a lane the dispatcher lacks
          ├── JournalError                      the journal cannot be opened or written
          └── JobTimeout (TimeoutError)         internal: one attempt ran past its timeout

Invalid events raise pydantic's ``ValidationError`` (or a ``TypeError`` naming the expected
model), and invalid dispatcher settings raise ``ValueError``: those are the builtins callers
already catch for bad input.
"""

from __future__ import annotations


class AfterworkError(Exception):
    """Base class of the exceptions that afterwork raises."""


class Overloaded(AfterworkError):
    """Admission was refused because ``max_pending`` completions are already unfinished."""

    def __init__(self, message: str, *, pending: int, max_pending: int) -> None:
        super().__init__(message)
        self.pending = pending
        self.max_pending = max_pending


class DispatcherClosed(AfterworkError, RuntimeError):
    """The dispatcher is draining or closed and admits no new work."""


class DispatcherNotOpen(AfterworkError, RuntimeError):
    """The dispatcher was used before it was entered with ``async with``."""


class InvalidJob(AfterworkError, TypeError):
    """A job or child function cannot be called the way afterwork calls it."""


class DuplicateJob(AfterworkError, ValueError):
    """A job name is registered twice in a pipeline, or a child name spawned twice."""


class UnknownLane(AfterworkError, LookupError):
    """A job names a lane that the dispatcher was not given."""


class JournalError(AfterworkError):
    """The journal file cannot be opened, is not a journal, or a write to it failed."""


class JobTimeout(AfterworkError, TimeoutError):
    """One attempt of a job ran past its timeout.

    Reported as ``timed_out``; it never reaches the caller of ``run`` or ``submit``.
    """
