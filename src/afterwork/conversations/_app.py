"""The HTTP API of the conversation service.

- ``POST /v1/conversations/completed``: store the conversation and admit it (202), or with
  ``?wait=true`` process it and answer its report (200). 503 with ``Retry-After`` when the
  dispatcher is overloaded or draining, 413 when too large, 422 naming the bad fields.
- ``GET /v1/conversations/{id}/processing``: its jobs' outcomes, as persisted.
- ``GET /v1/stats``, ``GET /metrics`` (Prometheus), ``GET /healthz``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

import afterwork as aw
from afterwork.asgi import install_handlers

from . import _outcomes
from ._extractor import Extractor
from ._http import LimitBody, RequestId
from ._models import TOO_LARGE, ConversationCompleted
from ._service import Service, run_service
from ._settings import ServiceSettings


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _errors(error: RequestValidationError) -> list[dict[str, Any]]:
    # The input is left out: echoing a megabyte transcript back helps nobody.
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]


async def _invalid(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    errors = _errors(error)
    status = 413 if any(e["type"] == TOO_LARGE for e in errors) else 422
    return JSONResponse({"detail": errors}, status_code=status)


async def completed(request: Request, event: ConversationCompleted, wait: bool = False) -> Response:
    """Store the conversation and admit it for processing."""
    service = _service(request)
    # Stored before admission, so a client that retries after a 503 just stores it again.
    handle = await service.admit(event)
    status_url = f"/v1/conversations/{event.conversation.id}/processing"
    if wait:
        report = await handle.wait()
        # The dispatcher wakes those waiting on the handle only once on_report has saved
        # the report, so the processing endpoint already shows it.
        return JSONResponse(report.model_dump(mode="json"), status_code=200)
    return JSONResponse(
        {"key": handle.key, "status_url": status_url, "reprocess": event.reprocess},
        status_code=202,
        headers={"Location": status_url},
    )


async def processing(request: Request, conversation_id: str) -> Response:
    """The persisted job outcomes of one conversation."""
    service = _service(request)
    outcomes = await service.blocking(_outcomes.processing, service.store, conversation_id)
    if outcomes is None:
        return JSONResponse(
            {"detail": f"no conversation {conversation_id!r}; POST it to "
             "/v1/conversations/completed first"},
            status_code=404,
        )  # fmt: skip
    unfinished = service.dispatcher.unfinished(service.pipeline, conversation_id)
    now = datetime.now(UTC)
    waiting = [h.due_at for h in unfinished if h.due_at is not None and h.due_at > now]
    retry_at = None
    if len(waiting) < len(unfinished):
        state = "processing"
    elif waiting:
        state, retry_at = "deferred", min(waiting).isoformat()
    else:
        state = "finished" if outcomes else "not_processed"
    ok = state == "finished" and all(aw.JobStatus(o["status"]).is_ok for o in outcomes)
    return JSONResponse(
        {"id": conversation_id, "state": state, "ok": ok, "retry_at": retry_at,
         "outcomes": outcomes}
    )  # fmt: skip


async def stats(request: Request) -> Response:
    return JSONResponse(_service(request).dispatcher.stats().model_dump(mode="json"))


async def metrics(request: Request) -> Response:
    body = _service(request).metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def healthz(request: Request) -> Response:
    state = _service(request).dispatcher.stats().state
    ok = state is aw.DispatcherState.OPEN
    return JSONResponse({"status": "ok" if ok else state.value}, status_code=200 if ok else 503)


def create_app(settings: ServiceSettings, *, extractor: Extractor | None = None) -> FastAPI:
    """The service as an ASGI app; its lifespan opens the store and the dispatcher.

    ``extractor`` replaces the rule-based stand-in for a language model.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with run_service(app, settings, extractor):
            yield

    app = FastAPI(title="afterwork conversations", lifespan=lifespan)
    app.add_middleware(LimitBody, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestId)
    install_handlers(app, retry_after=settings.retry_after_s)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_api_route("/v1/conversations/completed", completed, methods=["POST"])
    app.add_api_route("/v1/conversations/{conversation_id}/processing", processing)
    app.add_api_route("/v1/stats", stats)
    app.add_api_route("/metrics", metrics)
    app.add_api_route("/healthz", healthz)
    return app
