"""Bearer-token authentication for the service's API, checked before anything is read.

Every route under ``/v1`` (and ``/docs``, ``/openapi.json``, and ``/metrics`` when so
configured) needs ``Authorization: Bearer <token>``. The token is compared in constant time.
A missing or wrong token gets a 401 with ``WWW-Authenticate: Bearer`` before the request's
body is read. Without a configured token the service serves only a loopback address
(``ServiceSettings.check_exposure``), and lets every request through.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send


class BearerAuth:
    """Let a protected request through only with the right bearer token."""

    def __init__(self, app: ASGIApp, token: str | None, protects: Callable[[str], bool]) -> None:
        self.app = app
        self._token = token.encode() if token is not None else None
        self._protects = protects

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._token is None or scope["type"] != "http" or not self._protects(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = _bearer(dict(scope["headers"]).get(b"authorization", b""))
        if given is not None and hmac.compare_digest(given, self._token):
            await self.app(scope, receive, send)
            return
        await _unauthorized(send, wrong=given is not None)


def _bearer(header: bytes) -> bytes | None:
    scheme, _, credentials = header.partition(b" ")
    if scheme.lower() != b"bearer" or not credentials.strip():
        return None
    return credentials.strip()


async def _unauthorized(send: Send, *, wrong: bool) -> None:
    detail = (
        "the bearer token is not valid for this service"
        if wrong
        else "this route needs 'Authorization: Bearer <token>' (AFTERWORK_API_TOKEN)"
    )
    challenge = b'Bearer realm="afterwork"' + (b', error="invalid_token"' if wrong else b"")
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
