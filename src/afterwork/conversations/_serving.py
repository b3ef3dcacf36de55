"""Run an ASGI app under uvicorn inside the current event loop, on a real socket.

The demo runs the service and its webhook receiver this way, and the end-to-end tests do too:
real HTTP on 127.0.0.1, a free port chosen by the OS, and a real lifespan (startup, drain).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from starlette.types import ASGIApp


class ServerFailed(RuntimeError):
    """The server stopped before it was ready (its lifespan startup failed, or the port)."""


def base_url(server: uvicorn.Server) -> str:
    """``http://host:port`` of a started server."""
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


@asynccontextmanager
async def serving(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, **config: Any
) -> AsyncIterator[uvicorn.Server]:
    """Serve ``app`` until the block ends; then shut it down as on SIGTERM, and wait."""
    options: dict[str, Any] = {"log_level": "warning", "access_log": False, **config}
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="on", **options))
    stopped = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when the lifespan startup fails; we report it
            pass
        finally:
            stopped.set()

    async with anyio.create_task_group() as group:
        group.start_soon(serve)
        while not server.started:
            if stopped.is_set():
                raise ServerFailed(
                    f"the server on {host}:{port} stopped before it was ready; "
                    "its log above says why"
                )
            await anyio.sleep(0.005)
        try:
            yield server
        finally:
            server.should_exit = True
