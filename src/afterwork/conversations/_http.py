"""ASGI middleware of the service: the request id, the access log, and bounds on the body.

All plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, so the request handler runs in
the task (and the contextvars context) that bound the request id: a job that the request
submits inherits the id, and its log events carry it.

``RequestId`` and ``AccessLog`` wrap the whole application, Starlette's error handling
included (``ServiceApp``), so even a 500 carries ``X-Request-ID`` and has its log line.
Neither ever logs a header, a body or a local variable.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import anyio
import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = structlog.get_logger("afterwork.conversations")

#: A request id a client may choose: it is echoed in a header and written to logs.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

#: Called with (route template, method, status, seconds) once each response is sent.
Observer = Callable[[str, str, int, float], None]


def too_large(size: int | str, limit: int) -> HTTPException:
    """The 413 for a body of ``size`` bytes over ``limit``."""
    return HTTPException(
        413,
        f"the request body is {size} bytes, more than the limit of {limit}; "
        "send a smaller conversation or raise AFTERWORK_MAX_BODY_BYTES",
        # The rest of the body is never read, so the connection cannot carry another request.
        headers={"Connection": "close"},
    )


class RequestId:
    """Bind ``request_id`` (a valid ``X-Request-ID``, or a new one) and echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else os.urandom(16).hex()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class AccessLog:
    """One ``http.request`` event per request (route, method, status, duration), and the
    observer (the request-duration histogram). An exception after the response began is
    logged here once, without the request's headers."""

    def __init__(self, app: ASGIApp, observe: Callable[[Scope], Observer | None]) -> None:
        self.app = app
        self._observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        sent = False

        async def record(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status, sent = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, record)
        except Exception:
            # Starlette has answered with a 500 already; said once here, without headers.
            logger.exception("http.error", method=scope["method"], route=_route(scope))
            if not sent:
                raise
        finally:
            seconds = time.perf_counter() - started
            route = _route(scope)
            logger.info(
                "http.request",
                method=scope["method"],
                route=route,
                status=status,
                duration_s=round(seconds, 6),
            )
            observer = self._observe(scope)
            if observer is not None:
                observer(route, scope["method"], status, seconds)


def _route(scope: Scope) -> str:
    """The route's template (``/v1/conversations/{conversation_id}/processing``), never the
    raw path: ids stay out of metric labels."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class LimitBody:
    """Refuse request bodies over ``max_bytes`` (413), or that take longer than ``timeout``
    seconds to arrive (408): a client trickling a body cannot hold a connection open.

    Both are raised as ``HTTPException`` from ``receive``, which is how a body reader
    (FastAPI's included) lets them through to the app's handlers.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        declared = int(length) if length.isdigit() else None
        received = 0
        deadline: float | None = None

        async def counted() -> Message:
            nonlocal received, deadline
            if declared is not None and declared > self.max_bytes:
                raise too_large(declared, self.max_bytes)
            if deadline is None:
                deadline = anyio.current_time() + self.timeout
            with anyio.move_on_after(deadline - anyio.current_time()):
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_bytes:
                        raise too_large(f"over {self.max_bytes}", self.max_bytes)
                return message
            raise HTTPException(
                408,
                f"the request body did not arrive within {self.timeout:g} s; send it at "
                "once (AFTERWORK_BODY_TIMEOUT_S)",
                # The rest of the body may still come; the connection cannot carry another
                # request after it, so it closes.
                headers={"Connection": "close"},
            )

        await self.app(scope, counted, send)
