"""The HTTP API of the conversation service.

- ``POST /v1/conversations/completed``: check room, claim the conversation for its uid, admit
  it (202), or with ``?wait=true`` process it and answer its report (200). 401 without the
  token, 409 when another uid owns the id, 413 when too large, 415 when not JSON, 422 naming
  the bad fields, 503 with ``Retry-After`` when overloaded or draining. A refusal writes
  nothing.
- ``GET /v1/conversations/{id}/processing``: its state and its jobs' outcomes.
- ``GET /v1/stats``, ``GET /metrics`` (Prometheus), ``GET /healthz``, ``GET /readyz``.

The OpenAPI document lists every status each route answers, with its content type.
"""

from __future__ import annotations

import email.message
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Scope

import afterwork as aw

from . import _outcomes
from ._auth import BearerAuth
from ._backend import BrokerUnavailable, QueueStats
from ._extractor import Extractor
from ._http import AccessLog, LimitBody, Observer, RequestId
from ._jobs import build_pipeline
from ._metrics import CONTENT_TYPE, Metrics
from ._models import ID_PATTERN, TOO_LARGE, ConversationCompleted
from ._service import OwnershipConflict, PipelineFactory, Service, run_service
from ._settings import ServiceSettings

COMPLETED = "/v1/conversations/completed"


class Problem(BaseModel):
    """What a refused request gets back."""

    detail: str = Field(description="What was wrong, and how to fix it.")
    reason: str | None = Field(
        default=None,
        description="For a 503: overloaded, draining or broker_unavailable.",
    )


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """A 422 (or, for a conversation over a size bound, 413) naming each bad field."""

    detail: list[FieldProblem]


class Admitted(BaseModel):
    """A 202: the conversation is admitted; its processing is at ``status_url``."""

    key: str
    status_url: str
    reprocess: bool


class Outcome(BaseModel):
    job: str
    status: aw.JobStatus
    attempts: int
    duration_s: float
    error: str | None
    retry_at: str | None


class Processing(BaseModel):
    """Where a conversation's processing stands."""

    id: str
    state: Literal["processing", "deferred", "finished", "not_processed"]
    ok: bool = Field(description="True only once processing finished and every job is ok.")
    retry_at: str | None = Field(description="For a deferred conversation: when it resumes.")
    outcomes: list[Outcome]


class Readiness(BaseModel):
    ready: bool
    reasons: list[str]


class Health(BaseModel):
    status: str


def _problem(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Problem} for status in statuses}


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
CLOSES = {"Connection": {"description": "close", "required": True, "schema": {"type": "string"}}}
REFUSED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No or a wrong bearer token."},
    422: {
        "model": ValidationProblem,
        "description": "A field is missing or invalid, or the body is not UTF-8 JSON.",
    },
}
ADMISSION: dict[int | str, dict[str, Any]] = {
    **REFUSED,
    200: {"model": aw.Report, "description": "With ?wait=true: the completion's report."},
    202: {"model": Admitted, "description": "Admitted: the jobs run in the background."},
    409: {"model": Problem, "description": "Another uid owns this conversation id."},
    408: {
        "model": Problem,
        "description": "The body did not arrive in time; the connection closes.",
        "headers": CLOSES,
    },
    413: {
        "model": Problem | ValidationProblem,
        "description": "The body (a text detail; the connection closes) or the transcript "
        "(a list of the fields) is too large.",
    },
    415: {"model": Problem, "description": "The body is not JSON."},
    503: {
        "model": Problem,
        "description": "Overloaded, draining, or (with a broker) Redis unreachable.",
        "headers": RETRY_AFTER,
    },
}
#: Documents the bearer scheme; the check itself is BearerAuth, before the body is read.
bearer = HTTPBearer(auto_error=False, description="AFTERWORK_API_TOKEN")


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def _json_body(request: Request) -> None:
    """415 unless the body is declared JSON: checked before the body is validated. Async,
    so FastAPI runs it on the loop, not in a thread of its pool."""
    declared = request.headers.get("content-type", "")
    parsed = email.message.Message()
    parsed["content-type"] = declared
    subtype = parsed.get_content_subtype()
    if parsed.get_content_maintype() != "application" or not (
        subtype == "json" or subtype.endswith("+json")
    ):
        raise HTTPException(
            415,
            f"the body must be JSON, sent with 'Content-Type: application/json'; got "
            f"{declared[:100]!r}",
        )


def _errors(error: RequestValidationError) -> list[dict[str, Any]]:
    # The input is left out: echoing a megabyte transcript (or a secret) back helps nobody.
    return [
        {"loc": [str(p) if not isinstance(p, int) else p for p in e["loc"]], "msg": e["msg"],
         "type": e["type"]}
        for e in error.errors()
    ]  # fmt: skip


async def _invalid(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    errors = _errors(error)
    status = 413 if any(e["type"] == TOO_LARGE for e in errors) else 422
    return JSONResponse({"detail": errors}, status_code=status)


async def _unreadable(request: Request, error: Exception) -> Response:
    """FastAPI answers a body that ``json.loads`` cannot take (not UTF-8, an integer past
    Python's 4,300 digits) with a bare 400; it gets the 422 of any other malformed JSON,
    saying what is wrong. Every other HTTP error keeps FastAPI's own answer."""
    assert isinstance(error, HTTPException)
    cause = error.__cause__
    if error.status_code != 400 or not isinstance(cause, ValueError):
        return await http_exception_handler(request, error)
    if isinstance(cause, UnicodeDecodeError):
        message = "the body is not UTF-8; send the JSON encoded as UTF-8"
    elif "digits" in str(cause):
        message = "the body holds a number of more than 4300 digits; send numbers that fit"
    else:
        message = f"the body is not JSON that can be read ({cause}); send UTF-8 JSON"
    problem = {"loc": ["body"], "msg": message, "type": "json_invalid"}
    return JSONResponse({"detail": [problem]}, status_code=422)


async def _conflict(request: Request, error: Exception) -> Response:
    return JSONResponse({"detail": str(error)}, status_code=409)


async def _unusable(request: Request, error: Exception) -> Response:
    """An event the journal could not keep exactly (a lone surrogate, say): the client's."""
    return JSONResponse(
        {"detail": [{"loc": ["body"], "msg": str(error), "type": "value_error"}]},
        status_code=422,
    )


def _refusal(retry_after: int) -> Any:
    async def refuse(request: Request, error: Exception) -> Response:
        if isinstance(error, aw.Overloaded):
            reason = "overloaded"
        elif isinstance(error, BrokerUnavailable):
            reason = "broker_unavailable"
        else:
            reason = "draining"
        metrics: Metrics = request.app.state.metrics
        metrics.refused(reason)
        return JSONResponse(
            {"detail": str(error), "reason": reason},
            status_code=503,
            headers={"Retry-After": str(retry_after)},
        )

    return refuse


async def completed(
    request: Request,
    event: ConversationCompleted,
    wait: Annotated[bool, Query(description="Answer with the report once processed.")] = False,
) -> Response:
    """Claim the conversation for its uid and admit it for processing."""
    service = _service(request)
    handle = await service.admit(event)
    cid = event.conversation.id
    status_url = f"/v1/conversations/{cid}/processing"
    if not wait:
        body = Admitted(key=handle.key, status_url=status_url, reprocess=event.reprocess)
        return JSONResponse(body.model_dump(), status_code=202, headers={"Location": status_url})
    # The handle wakes only once on_report has saved the report, so status_url shows it.
    report = await handle.wait()
    if any(o.status is aw.JobStatus.CANCELLED for o in report.outcomes):
        service.metrics.refused("draining")
        return JSONResponse(
            {"detail": f"the service is shutting down and processing of {cid!r} was cut off; "
             "it resumes after the restart, and its progress is at " + status_url,
             "reason": "draining"},
            status_code=503,
            headers={"Retry-After": str(service.settings.retry_after_s)},
        )  # fmt: skip
    return JSONResponse(report.model_dump(mode="json"), status_code=200)


async def processing(
    request: Request,
    conversation_id: Annotated[str, Path(pattern=ID_PATTERN)],
) -> Response:
    """Where the conversation's processing stands, with its jobs' outcomes."""
    service = _service(request)
    outcomes = await service.blocking(_outcomes.processing, service.store, conversation_id)
    if outcomes is None:
        return JSONResponse(
            {"detail": f"no conversation {conversation_id!r}; POST it to {COMPLETED} first"},
            status_code=404,
        )
    now = datetime.now(UTC)
    unfinished = await service.backend.waiting(conversation_id)
    waiting = [due for due in unfinished if due is not None and due > now]
    retry_at = None
    state: Literal["processing", "deferred", "finished", "not_processed"]
    if len(waiting) < len(unfinished):
        state = "processing"
    elif waiting:
        state, retry_at = "deferred", min(waiting).isoformat()
    else:
        state = "finished" if outcomes else "not_processed"
    ok = state == "finished" and all(aw.JobStatus(o["status"]).is_ok for o in outcomes)
    body = {"id": conversation_id, "state": state, "ok": ok, "retry_at": retry_at,
            "outcomes": outcomes}  # fmt: skip
    return JSONResponse(body)


async def stats(request: Request) -> Response:
    """The dispatcher's stats now; with a broker, the workers' queue."""
    return JSONResponse((await _service(request).backend.stats()).model_dump(mode="json"))


async def metrics(request: Request) -> Response:
    """Prometheus metrics, in the text exposition format."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)


async def healthz(request: Request) -> Response:
    """200 while the service runs and admits work; 503 once it drains."""
    service: Service | None = getattr(request.app.state, "service", None)
    state = service.backend.state() if service is not None else aw.DispatcherState.NEW.value
    ok = state == aw.DispatcherState.OPEN.value
    return JSONResponse({"status": "ok" if ok else state}, status_code=200 if ok else 503)


async def readyz(request: Request) -> Response:
    """200 when a POST would be admitted now: open, replay done, room, journal healthy."""
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        reasons = ["the service is not running"]
    else:
        reasons = await service.backend.not_ready()
    headers = {"Retry-After": str(service.settings.retry_after_s)} if service and reasons else {}
    body = {"ready": not reasons, "reasons": reasons}
    return JSONResponse(body, status_code=503 if reasons else 200, headers=headers)


class ServiceApp(FastAPI):
    """FastAPI, with the request id, the access log and the token check around everything
    (Starlette's own error handling included), so a 500 has its id and its log line too."""

    def build_middleware_stack(self) -> ASGIApp:
        settings: ServiceSettings = self.state.settings
        token = settings.api_token.get_secret_value() if settings.api_token else None
        protected = BearerAuth(super().build_middleware_stack(), token, _protects(settings))
        return RequestId(AccessLog(protected, _observer))


def _observer(scope: Scope) -> Observer | None:
    app = scope.get("app")
    metrics: Metrics | None = getattr(getattr(app, "state", None), "metrics", None)
    return metrics.request if metrics is not None else None


def _protects(settings: ServiceSettings) -> Any:
    open_paths = {"/healthz", "/readyz"} | (set() if settings.metrics_token else {"/metrics"})

    def protects(path: str) -> bool:
        return path not in open_paths

    return protects


def create_app(
    settings: ServiceSettings,
    *,
    extractor: Extractor | None = None,
    jobs: PipelineFactory = build_pipeline,
) -> FastAPI:
    """The service as an ASGI app; its lifespan opens the store and the dispatcher.

    ``extractor`` replaces the rule-based stand-in for a language model; ``jobs`` builds the
    pipeline from the services (the seven jobs; a benchmark swaps in no-ops).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with run_service(app, settings, extractor, jobs):
            yield

    docs = settings.docs
    app = ServiceApp(
        title="afterwork conversations",
        version=aw.__version__,
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.add_middleware(
        LimitBody, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_s
    )
    app.add_exception_handler(aw.Overloaded, _refusal(settings.retry_after_s))
    app.add_exception_handler(aw.DispatcherClosed, _refusal(settings.retry_after_s))
    app.add_exception_handler(BrokerUnavailable, _refusal(settings.retry_after_s))
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _unreadable)
    app.add_exception_handler(OwnershipConflict, _conflict)
    app.add_exception_handler(aw.InvalidEvent, _unusable)
    secured = [Security(bearer)] if settings.api_token is not None else []
    app.add_api_route(
        COMPLETED, completed, methods=["POST"], responses=ADMISSION, status_code=202,
        dependencies=[*secured, Depends(_json_body)], response_model=None,
    )  # fmt: skip
    app.add_api_route(
        "/v1/conversations/{conversation_id}/processing", processing, dependencies=secured,
        responses={200: {"model": Processing}, 404: {"model": Problem}, **REFUSED},
        response_model=None,
    )  # fmt: skip
    app.add_api_route(
        "/v1/stats", stats, dependencies=secured, response_model=None,
        responses={200: {"model": aw.Stats | QueueStats}, 401: REFUSED[401]},
    )  # fmt: skip
    metrics_doc: dict[int | str, dict[str, Any]] = {
        200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
              "description": "Prometheus text exposition."}
    }  # fmt: skip
    if settings.metrics_token:
        metrics_doc[401] = REFUSED[401]
    app.add_api_route(
        "/metrics", metrics, response_class=Response, responses=metrics_doc, response_model=None,
        dependencies=secured if settings.metrics_token else [],
    )  # fmt: skip
    for path, endpoint, model in (("/healthz", healthz, Health), ("/readyz", readyz, Readiness)):
        app.add_api_route(
            path, endpoint, response_model=None,
            responses={200: {"model": model}, 503: {"model": model, "headers": RETRY_AFTER}},
        )  # fmt: skip
    return app
