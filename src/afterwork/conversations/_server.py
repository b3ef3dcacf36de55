"""Running the service under uvicorn: slow clients cut off, and a shutdown that fits.

- **Header deadline.** uvicorn waits as long as a client likes for a request's headers, so a
  client trickling a byte every few seconds holds a connection forever. ``DeadlineH11`` gives
  every request until ``header_timeout_s`` for its headers, counted from the connection for
  the first and from its first byte for each one after on keep-alive, then answers 408 and
  closes. The body has its own
  deadline (``_http.LimitBody``).
- **Shutdown within ``drain_timeout`` + 2 s.** On SIGTERM uvicorn first waits for open
  requests, and only then runs the lifespan's shutdown, which drains the dispatcher: two
  waits, one after the other. ``ServiceServer`` starts the drain the moment the shutdown
  begins, beside uvicorn's wait, so a request waiting for its report (``?wait=true``) gets
  it, or a 503 with ``Retry-After`` at the drain deadline, and both waits end together.
- **Exit even with a hung thread.** See ``afterwork._process.exit_now``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from ._settings import ServiceSettings

logger = structlog.get_logger("afterwork.conversations")

#: Beyond drain_timeout, what uvicorn may take to see the last responses out.
SHUTDOWN_MARGIN_S = 1.0


class DeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's headers."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers arrived in full
            self._disarm()

    def data_received(self, data: bytes) -> None:
        # The first bytes of the next request on a kept-alive connection start its deadline.
        # Not earlier: an idle connection between requests is uvicorn's keep-alive timeout's
        # business, and it closes quietly, where a 408 would answer a request never sent.
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            assert self._deadline is not None
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        body = (
            f"the request's headers did not arrive within {self.header_timeout:g} s "
            "(AFTERWORK_HEADER_TIMEOUT_S)\n"
        ).encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.transport.close()


def protocol(settings: ServiceSettings) -> type[H11Protocol]:
    """The h11 protocol class with this service's header deadline."""
    return type("ServiceH11", (DeadlineH11,), {"header_timeout": settings.header_timeout_s})


class ServiceServer(uvicorn.Server):
    """A uvicorn server that begins the dispatcher's drain as soon as it starts shutting down."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.service_app = app

    async def shutdown(self, sockets: Any = None) -> None:
        service = getattr(self.service_app.state, "service", None)
        if service is not None:
            service.backend.close()  # refuse new work now; the drain runs meanwhile
        await super().shutdown(sockets)


def config(app: FastAPI, settings: ServiceSettings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the service."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol(settings),
        # Open requests get the drain's time, not a second one after it.
        "timeout_graceful_shutdown": max(1, int(settings.drain_timeout + SHUTDOWN_MARGIN_S)),
        "log_config": None,  # uvicorn's records go to the handler configure_logging set up
        "access_log": False,  # the service logs http.request itself, without headers
        **overrides,
    }
    return uvicorn.Config(app, **options)
