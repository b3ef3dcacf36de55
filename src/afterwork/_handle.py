"""Handle: what admission hands back for one completion."""

from __future__ import annotations

from datetime import datetime

from ._completion import Completion
from ._models import Report


class Handle:
    """An admitted completion. ``await handle.wait()`` returns its Report."""

    __slots__ = ("_completion",)

    def __init__(self, completion: Completion) -> None:
        self._completion = completion

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<Handle {self.pipeline}:{self.key} {state}>"

    @property
    def pipeline(self) -> str:
        return self._completion.pipeline.name

    @property
    def key(self) -> str:
        return self._completion.key

    @property
    def due_at(self) -> datetime | None:
        """For delayed work or a parked job's follow-up: when it starts (UTC), else None."""
        return self._completion.due_at

    @property
    def followup(self) -> bool:
        """True for the follow-up of a parked job."""
        return self._completion.plan.followup

    def done(self) -> bool:
        """True once the completion has finished and its report was handed on."""
        return self._completion.done.is_set()

    async def wait(self) -> Report:
        """Wait for the completion to finish and return its report. Never raises job errors."""
        await self._completion.done.wait()
        assert self._completion.report is not None
        return self._completion.report
