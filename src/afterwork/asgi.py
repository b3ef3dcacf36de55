"""afterwork in a FastAPI or Starlette app: a lifespan, a dependency and a 503 handler.

::

    from typing import Annotated
    from fastapi import Depends, FastAPI
    import afterwork as aw
    from afterwork import asgi

    app = FastAPI(lifespan=asgi.lifespan(lambda: aw.Dispatcher(max_threads=32)))
    asgi.install_handlers(app)
    Dispatcher = Annotated[aw.Dispatcher, Depends(asgi.get_dispatcher)]

    @app.post("/things", status_code=202)
    async def create(thing: Thing, dispatcher: Dispatcher) -> None:
        dispatcher.submit_nowait(pipeline, thing)   # Overloaded/DispatcherClosed -> 503
        # With a journal, use 'await dispatcher.submit(pipeline, thing, timeout=0)': it
        # refuses at once just the same, and returns only once the admission is on disk.

The dispatcher opens with the app and drains when the app shuts down (on SIGTERM under
uvicorn), within its ``drain_timeout``. Refused work becomes a ``503 Service Unavailable``
with a ``Retry-After`` header, so clients back off instead of piling on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._dispatcher import Dispatcher
from ._exceptions import DispatcherClosed, Overloaded

__all__ = [
    "get_dispatcher",
    "install_handlers",
    "lifespan",
    "open_dispatcher",
    "refusal_handler",
]

#: The attribute of ``app.state`` that holds the open dispatcher.
STATE_ATTRIBUTE = "afterwork_dispatcher"


@asynccontextmanager
async def open_dispatcher(app: Starlette, dispatcher: Dispatcher) -> AsyncIterator[Dispatcher]:
    """Open ``dispatcher`` for ``app``'s lifetime: enter it, publish it, drain it on exit.

    Use it inside a lifespan of your own when the app opens other things too.
    """
    # The dispatcher stays published while it drains, so a request still in flight gets a
    # clean 503 (DispatcherClosed) rather than a 500 from get_dispatcher.
    try:
        async with dispatcher:
            setattr(app.state, STATE_ATTRIBUTE, dispatcher)
            yield dispatcher
    finally:
        if getattr(app.state, STATE_ATTRIBUTE, None) is dispatcher:
            delattr(app.state, STATE_ATTRIBUTE)


def lifespan(
    factory: Callable[[], Dispatcher],
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """A lifespan that opens ``factory()`` when the app starts and drains it when it stops."""

    @asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[None]:
        async with open_dispatcher(app, factory()):
            yield

    return run


def get_dispatcher(request: Request) -> Dispatcher:
    """The app's dispatcher, for ``Depends(get_dispatcher)``."""
    dispatcher = getattr(request.app.state, STATE_ATTRIBUTE, None)
    if not isinstance(dispatcher, Dispatcher):
        raise RuntimeError(
            "this app has no open afterwork Dispatcher; create the app with "
            "lifespan=afterwork.asgi.lifespan(...), or open one with "
            "afterwork.asgi.open_dispatcher(app, dispatcher) in your own lifespan"
        )
    return dispatcher


def refusal_handler(retry_after: int = 1) -> Callable[[Request, Exception], Response]:
    """An exception handler turning ``Overloaded`` and ``DispatcherClosed`` into a 503.

    The body says why (``overloaded`` or ``draining``), and ``Retry-After`` says when to try
    again: ``retry_after`` seconds.
    """
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
        raise ValueError(f"retry_after must be an int of seconds >= 0, got {retry_after!r}")

    def handle(request: Request, error: Exception) -> Response:
        reason = "overloaded" if isinstance(error, Overloaded) else "draining"
        return JSONResponse(
            {"detail": str(error), "reason": reason},
            status_code=503,
            headers={"Retry-After": str(retry_after)},
        )

    return handle


def install_handlers(app: Starlette, *, retry_after: int = 1) -> None:
    """Answer ``Overloaded`` and ``DispatcherClosed`` with 503 and ``Retry-After``."""
    handler = refusal_handler(retry_after)
    app.add_exception_handler(Overloaded, handler)
    app.add_exception_handler(DispatcherClosed, handler)
