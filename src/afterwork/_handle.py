"""Handle: what admission hands back for one completion."""

from __future__ import annotations

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

    def done(self) -> bool:
        """True once every job of the completion has an outcome."""
        return self._completion.report is not None

    async def wait(self) -> Report:
        """Wait for the completion to finish and return its report. Never raises job errors."""
        await self._completion.done.wait()
        assert self._completion.report is not None
        return self._completion.report
