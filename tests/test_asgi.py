"""afterwork.asgi: the lifespan, the dependency and the 503 handler, in a real app."""

from __future__ import annotations

import threading
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.requests import Request

import afterwork as aw
from afterwork import asgi
from afterwork.testing import base_url, serving


def make_app(retry_after: int = 1) -> FastAPI:
    app = FastAPI(lifespan=asgi.lifespan(lambda: aw.Dispatcher(max_threads=2, max_pending=1)))
    asgi.install_handlers(app, retry_after=retry_after)

    @app.get("/thread")
    async def thread(dispatcher: Annotated[aw.Dispatcher, Depends(asgi.get_dispatcher)]) -> Any:
        name = await dispatcher.run_sync(lambda: threading.current_thread().name)
        return {"ran_in": name, "state": dispatcher.stats().state.value}

    @app.get("/overloaded")
    async def overloaded() -> None:
        raise aw.Overloaded("no room for x", pending=1, max_pending=1)

    @app.get("/closed")
    async def closed() -> None:
        raise aw.DispatcherClosed("the dispatcher is draining")

    return app


async def test_the_lifespan_opens_and_drains_the_dispatcher() -> None:
    """Requests get the open dispatcher; after shutdown it is closed and unpublished."""
    app = make_app()
    async with serving(app) as server, httpx.AsyncClient(base_url=base_url(server)) as client:
        response = await client.get("/thread")
        dispatcher = asgi.get_dispatcher(Request({"type": "http", "app": app}))
    assert response.status_code == 200
    assert response.json()["state"] == "open"
    assert response.json()["ran_in"] != threading.main_thread().name
    assert dispatcher.stats().state is aw.DispatcherState.CLOSED
    assert not hasattr(app.state, asgi.STATE_ATTRIBUTE)


@pytest.mark.parametrize(
    ("path", "reason", "detail"),
    [
        ("/overloaded", "overloaded", "no room for x"),
        ("/closed", "draining", "the dispatcher is draining"),
    ],
)
async def test_refusals_become_503_with_retry_after(path: str, reason: str, detail: str) -> None:
    """Overloaded and DispatcherClosed answer 503, the reason, and Retry-After."""
    transport = httpx.ASGITransport(app=make_app(retry_after=7))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.get(path)
    assert (response.status_code, response.headers["Retry-After"]) == (503, "7")
    assert response.json() == {"detail": detail, "reason": reason}


def test_get_dispatcher_without_the_lifespan_says_how_to_fix_it() -> None:
    """An app that never opened a dispatcher gets an error naming the two ways to do so."""
    with pytest.raises(RuntimeError) as error:
        asgi.get_dispatcher(Request({"type": "http", "app": FastAPI()}))
    assert str(error.value) == (
        "this app has no open afterwork Dispatcher; create the app with "
        "lifespan=afterwork.asgi.lifespan(...), or open one with "
        "afterwork.asgi.open_dispatcher(app, dispatcher) in your own lifespan"
    )


def test_a_negative_retry_after_is_refused() -> None:
    """refusal_handler names the bad value."""
    with pytest.raises(ValueError) as error:
        asgi.refusal_handler(-1)
    assert str(error.value) == "retry_after must be an int of seconds >= 0, got -1"


def test_all_names_are_exported() -> None:
    """__all__ lists exactly the public functions this module defines."""
    defined = {
        name
        for name, value in vars(asgi).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == asgi.__name__
    }
    assert set(asgi.__all__) == defined


async def test_serving_hands_back_the_blocks_own_exception_and_closes_its_socket() -> None:
    """A block that raises gets its exception back as is (not in a group), after the server
    has shut down: the port no longer takes connections."""
    ports: list[int] = []
    failure: BaseException | None = None
    try:
        async with serving(make_app()) as server:
            ports.append(server.servers[0].sockets[0].getsockname()[1])
            raise RuntimeError("the test failed")
    except BaseException as error:
        failure = error
    assert type(failure) is RuntimeError
    assert str(failure) == "the test failed"
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", ports[0])
