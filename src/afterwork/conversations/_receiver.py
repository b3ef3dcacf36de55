"""A local webhook receiver for the demo and the tests, with endpoints that misbehave.

``POST /hooks/{mode}/{uid}`` answers by ``mode``, counting attempts per ``Idempotency-Key``:

- ``ok``: 200;
- ``flaky``: 500 on the first attempt of a key, then 200 (a retry delivers it);
- ``throttle``: 429 with ``Retry-After`` on the first attempt, then 200;
- ``down``: always 500 (retries run out: a dead letter);
- ``reject``: always 400 (no retry: a dead letter after one attempt).

``POST /tasks/{uid}`` is a task integration that accepts every batch of action items.
"""

from __future__ import annotations

from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

MODES = ("ok", "flaky", "throttle", "down", "reject")


class Receiver:
    """The receiver's app and what it saw."""

    def __init__(self, retry_after_s: int = 1) -> None:
        self.retry_after_s = retry_after_s
        self.attempts: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self.missing_key = 0
        self.task_items = 0
        self.app = FastAPI(title="webhook receiver")
        self.app.add_api_route("/hooks/{mode}/{uid}", self.hook, methods=["POST"])
        self.app.add_api_route("/tasks/{uid}", self.tasks, methods=["POST"])

    async def hook(self, request: Request, mode: str, uid: str) -> Response:
        if mode not in MODES:
            return JSONResponse({"detail": f"unknown mode {mode!r}; use one of {MODES}"}, 404)
        key = request.headers.get("Idempotency-Key")
        if key is None:
            self.missing_key += 1
            return JSONResponse({"detail": "Idempotency-Key header is required"}, 400)
        await request.json()
        self.attempts[key] += 1
        first = self.attempts[key] == 1
        if mode == "down" or (mode == "flaky" and first):
            return JSONResponse({"detail": "upstream unavailable"}, 500)
        if mode == "throttle" and first:
            headers = {"Retry-After": str(self.retry_after_s)}
            return JSONResponse({"detail": "slow down"}, 429, headers=headers)
        if mode == "reject":
            return JSONResponse({"detail": "unknown event type"}, 400)
        self.delivered[key] += 1
        return JSONResponse({"received": key})

    async def tasks(self, request: Request, uid: str) -> Response:
        body = await request.json()
        self.task_items += len(body["items"])
        return JSONResponse({"synced": len(body["items"])})

    @property
    def duplicates(self) -> int:
        """Keys delivered more than once: an idempotency key that did not hold."""
        return sum(1 for count in self.delivered.values() if count > 1)
