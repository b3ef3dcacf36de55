"""ASGI middleware of the service: a request id per request, and a bound on body size.

Both are plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``, so the request
handler runs in the task (and the contextvars context) that bound the request id: a job that
the request submits inherits the id, and its log events carry it.
"""

from __future__ import annotations

import uuid

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def too_large(size: int | str, limit: int) -> HTTPException:
    """The 413 for a body of ``size`` bytes over ``limit``."""
    return HTTPException(
        413,
        f"the request body is {size} bytes, more than the limit of {limit}; "
        "send a smaller conversation or raise AFTERWORK_MAX_BODY_BYTES",
    )


class RequestId:
    """Bind ``request_id`` (from ``X-Request-ID``, or a new one) and echo it in the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1").strip()
        request_id = given[:128] or uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class LimitBody:
    """Refuse request bodies over ``max_bytes``, by ``Content-Length`` or as they stream in.

    The 413 is raised as an ``HTTPException`` from ``receive``, which is how a body reader
    (FastAPI's included) lets it through to the app's handlers.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        declared = int(length) if length.isdigit() else None
        received = 0

        async def counted() -> Message:
            nonlocal received
            if declared is not None and declared > self.max_bytes:
                raise too_large(declared, self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(f"over {self.max_bytes}", self.max_bytes)
            return message

        await self.app(scope, counted, send)
