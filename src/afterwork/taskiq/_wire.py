"""What crosses Redis: the names of every key, the message of one completion, its result.

One message is one completion. It is a taskiq ``TaskiqMessage`` (so taskiq's own tools can
read it) whose task id is the completion's id, with the pipeline, the key, the event as the
journal's exact JSON (``_codec``) and the structlog context bound at submission. The result a
worker stores is the completion's ``Report``, as JSON, in taskiq's result backend.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from taskiq import TaskiqMessage

#: The task name of every afterwork message.
TASK = "afterwork.completion"
#: The consumer group every worker of a queue reads in.
GROUP = "afterwork"


@dataclass(frozen=True)
class Keys:
    """The Redis keys of one queue."""

    queue: str

    @property
    def stream(self) -> str:
        return self.queue

    @property
    def dead(self) -> str:
        """The dead-letter stream: messages delivered more often than ``max_recoveries``."""
        return f"{self.queue}:dead"

    @property
    def results(self) -> str:
        """The result backend's prefix."""
        return f"afterwork:{self.queue}:result"

    @property
    def unfinished(self) -> str:
        """A hash of ``"{pipeline}:{key}"`` -> completions submitted and not yet finished."""
        return f"afterwork:{self.queue}:unfinished"

    def jobs(self, completion_id: str) -> str:
        """A hash of job -> its outcome as JSON (``{"status": null}`` while it runs)."""
        return f"afterwork:{self.queue}:jobs:{completion_id}"


@dataclass(frozen=True)
class Completion:
    """One completion as a message carries it."""

    id: str
    pipeline: str
    key: str
    event: str
    context: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.pipeline}:{self.key}"

    def message(self) -> TaskiqMessage:
        return TaskiqMessage(
            task_id=self.id,
            task_name=TASK,
            labels={"pipeline": self.pipeline, "key": self.key},
            labels_types={},
            args=[],
            kwargs={
                "pipeline": self.pipeline,
                "key": self.key,
                "event": self.event,
                "context": self.context,
            },
        )


class Unreadable(ValueError):
    """A message that is not an afterwork completion."""


def parse(data: bytes) -> Completion:
    """The completion a stream entry's ``data`` field carries; ``Unreadable`` otherwise."""
    try:
        message = TaskiqMessage.model_validate_json(data)
    except ValueError as error:
        raise Unreadable(f"not a taskiq message: {error}") from None
    if message.task_name != TASK:
        raise Unreadable(f"task {message.task_name!r} is not {TASK!r}")
    kwargs = message.kwargs
    try:
        return Completion(
            id=message.task_id,
            pipeline=str(kwargs["pipeline"]),
            key=str(kwargs["key"]),
            event=str(kwargs["event"]),
            context=dict(kwargs.get("context") or {}),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise Unreadable(f"an afterwork message without {error}") from None


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))
