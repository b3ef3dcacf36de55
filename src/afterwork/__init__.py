"""afterwork: the work an async service does after a request, within a thread budget.

The public face. Everything lives in private modules and is re-exported here.
"""

from __future__ import annotations

from ._context import JobContext as JobContext
from ._dispatcher import Dispatcher as Dispatcher
from ._exceptions import AfterworkError as AfterworkError
from ._exceptions import DispatcherClosed as DispatcherClosed
from ._exceptions import DispatcherNotOpen as DispatcherNotOpen
from ._exceptions import DuplicateJob as DuplicateJob
from ._exceptions import InvalidEvent as InvalidEvent
from ._exceptions import InvalidJob as InvalidJob
from ._exceptions import InvalidOption as InvalidOption
from ._exceptions import JournalError as JournalError
from ._exceptions import Overloaded as Overloaded
from ._exceptions import RetryLater as RetryLater
from ._exceptions import UnknownLane as UnknownLane
from ._exceptions import UsageError as UsageError
from ._handle import Handle as Handle
from ._journal import JournalEntry as JournalEntry
from ._journal import JournalJob as JournalJob
from ._journal import QuarantinedEntry as QuarantinedEntry
from ._journal import SqliteJournal as SqliteJournal
from ._models import DispatcherState as DispatcherState
from ._models import JobOutcome as JobOutcome
from ._models import JobStatus as JobStatus
from ._models import Report as Report
from ._models import Stats as Stats
from ._pipeline import JobSpec as JobSpec
from ._pipeline import Pipeline as Pipeline
from ._settings import Settings as Settings

__version__ = "0.2.0"

__all__ = [
    "AfterworkError",
    "Dispatcher",
    "DispatcherClosed",
    "DispatcherNotOpen",
    "DispatcherState",
    "DuplicateJob",
    "Handle",
    "InvalidEvent",
    "InvalidJob",
    "InvalidOption",
    "JobContext",
    "JobOutcome",
    "JobSpec",
    "JobStatus",
    "JournalEntry",
    "JournalError",
    "JournalJob",
    "Overloaded",
    "Pipeline",
    "QuarantinedEntry",
    "Report",
    "RetryLater",
    "Settings",
    "SqliteJournal",
    "Stats",
    "UnknownLane",
    "UsageError",
]
