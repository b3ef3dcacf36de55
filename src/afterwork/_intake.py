"""What happens to work before it is admitted: every check, then the completion to admit.

All of it runs before any room is taken, so a refusal leaves nothing behind (G4, G10): a
closed dispatcher, the wrong event loop or thread, a failed journal, an event that does not
validate or would not survive the journal exactly, an unknown lane, a bad delay.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel

from . import _codec
from ._completion import Completion
from ._config import Config, call_seconds
from ._exceptions import MAX_WAIT_S, InvalidOption, JournalError, Overloaded, UsageError
from ._handle import Handle
from ._host import Host
from ._loop import is_current
from ._pipeline import Pipeline

E = TypeVar("E", bound=BaseModel)


def check_loop(host: Host, action: str) -> None:
    """Refuse a call from outside the loop (and thread) the dispatcher lives on."""
    if host.runtime is not None and not is_current(host.runtime.token):
        raise UsageError(
            f"{action} was called outside the event loop this Dispatcher runs on (another "
            "loop, or a thread that is not the loop's); a Dispatcher lives on the loop "
            "that entered it: from a worker thread use anyio.from_thread.run(...), or "
            "give each event loop a Dispatcher of its own"
        )


def prepare(
    host: Host,
    config: Config,
    pipeline: Pipeline[E],
    event: E | Mapping[str, Any],
    delay: float | None,
    *,
    encode: bool,
) -> Completion:
    """The completion of ``event``, checked; nothing is taken or written yet."""
    check_loop(host, "submit")
    if not isinstance(pipeline, Pipeline):
        raise InvalidOption(
            f"submit() takes a Pipeline first, got {pipeline!r}; "
            "e.g. dispatcher.submit(pipeline, event)"
        )
    journal = config.journal
    if journal is not None and journal.failure is not None:
        raise JournalError(
            f"cannot admit work to {pipeline.name!r}: the journal failed "
            f"({journal.failure}); restart once it is fixed"
        )
    model = pipeline.coerce(event)
    key = pipeline.key_of(model)
    assert host.runtime is not None
    host.runtime.lanes.check(pipeline.lanes)
    due = None
    if delay is not None:
        due = datetime.now(UTC) + timedelta(seconds=delay_seconds(delay))
    return Completion(
        host.runtime,
        pipeline,
        model,
        key,
        # The submitter's context, so the jobs see what it bound (G8).
        context=contextvars.copy_context(),
        encoded=_codec.encode(pipeline.event, model) if encode else None,
        due_at=due,
    )


def delay_seconds(delay: object) -> float:
    seconds = call_seconds("delay", delay, "30")
    if seconds > MAX_WAIT_S:
        raise InvalidOption(
            f"submit delay must be at most {MAX_WAIT_S:.0f} seconds (a year), got {delay!r}; "
            "e.g. dispatcher.submit(pipeline, event, delay=30)"
        )
    return seconds


async def enter(host: Host, completion: Completion) -> Handle:
    """Admit ``completion``, whose room is taken; with a journal, return once it is on disk
    (``JournalError`` if it could not be written)."""
    host.enter(completion)
    if completion.durable is not None:
        # Shielded: once admitted, the caller learns whether it is on disk.
        with anyio.CancelScope(shield=True):
            await completion.durable()
        completion.durable = None
    return Handle(completion)


def overloaded(
    host: Host, config: Config, completion: Completion | None, waited: float | None
) -> Overloaded:
    """The refusal when no room (or, for delayed work, no slot) came in time; ``None`` for
    a reservation, which holds a place for work not known yet."""
    cannot = f"cannot admit {completion.label}" if completion is not None else "cannot reserve room"
    if completion is not None and completion.due_at is not None:
        count, bound, name = len(host.delayed), config.max_delayed, "max_delayed"
        what, short = "delayed completions are waiting", "delayed"
    else:
        count, bound, name = len(host.admission.pending), config.max_pending, "max_pending"
        what, short = "completions are pending", "pending"
    if waited is None:
        message = (
            f"{cannot}: {count} {what}, {name}={bound}; retry "
            "later, or use 'await dispatcher.submit(...)' to wait for room"
        )
    else:
        message = f"{cannot}: no room within {waited:g} s ({count} {short}, {name}={bound})"
    return Overloaded(message, pending=count, max_pending=bound)
