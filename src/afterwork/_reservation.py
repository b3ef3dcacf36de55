"""A pending place taken before the work that will fill it, for "check room first" services.

A service that must write records of its own before admitting (claim an id, say) cannot
first write, then find there is no room, then undo its write: a refusal should cost nothing.
``Dispatcher.reserve()`` takes the place first::

    async with dispatcher.reserve(timeout=0) as room:   # Overloaded here: nothing written
        await claim(conversation)                       # the service's own write
        handle = await room.submit(pipeline, event)     # admitted into the place it holds

Leaving the block without ``submit`` (an error, a refusal of the service's own) gives the
place back. One reservation holds one place, for one submission.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from . import _intake
from ._exceptions import DispatcherClosed, UsageError

if TYPE_CHECKING:
    from ._completion import Completion
    from ._config import Config
    from ._handle import Handle
    from ._host import Host
    from ._pipeline import Pipeline

E = TypeVar("E", bound=BaseModel)
WHAT = "a reservation"


class Reservation:
    """One pending place, held from ``async with`` until ``submit`` fills it or the block
    ends. Made by ``Dispatcher.reserve``."""

    def __init__(
        self,
        open_host: Callable[[object], Host],
        config: Config,
        timeout: float | None,
        prepare: Callable[[Host, Pipeline[Any], Any, None], Completion],
    ) -> None:
        self._open_host = open_host
        self._config = config
        self._timeout = timeout
        self._prepare = prepare
        self._host: Host | None = None

    async def __aenter__(self) -> Reservation:
        if self._host is not None:
            raise UsageError("this reservation is already held; make one per submission")
        host = self._open_host(WHAT)
        _intake.check_loop(host, "reserve")
        room = host.admission
        if not (room.take_room_nowait() or await room.wait_for_room(self._timeout)):
            host.open_or_raise(WHAT)
            raise _intake.overloaded(host, self._config, None, self._timeout)
        try:
            host.open_or_raise(WHAT)
        except DispatcherClosed:
            room.give_back_room()
            raise
        self._host = host
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        host, self._host = self._host, None
        if host is not None:
            host.admission.give_back_room()

    async def submit(self, pipeline: Pipeline[E], event: E | Mapping[str, Any]) -> Handle:
        """Admit ``event`` into the reserved place; returns as ``Dispatcher.submit`` does.

        If the event is refused (it does not validate, say), the place stays held until the
        block ends, and goes back then.
        """
        host = self._host
        if host is None:
            raise UsageError(
                "this reservation holds no place (it was used, or not entered); use "
                "'async with dispatcher.reserve() as room:' and submit once inside it"
            )
        host.open_or_raise(pipeline)  # a drain that began meanwhile refuses it, as any submit
        completion = self._prepare(host, pipeline, event, None)
        self._host = None  # filled: the place now belongs to the completion
        return await _intake.enter(host, completion)
