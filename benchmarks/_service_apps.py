"""The servers the service benchmark loads: ``python -m benchmarks._service_apps SETUP --port P
--db PATH [--max-pending M]``.

- ``shipped`` and ``no_journal`` are ``afterwork serve`` itself (``afterwork.cli.main``, in
  this process so its pid is the server's), with ``AFTERWORK_MAX_PENDING`` raised to ``M``
  so every POST of a run is admitted and none is refused for room.
- ``noop`` is the same service (``create_app``, ``ServiceServer``, ``_server.config``, the
  same logging) with the seven jobs replaced by async no-ops registered under the same names,
  pipeline and event model: what the service costs with no work behind it.
- ``minimal_insert`` and ``minimal`` are what a user would write without afterwork: FastAPI,
  the same ``ConversationCompleted`` model, a 202, and for ``minimal_insert`` one SQLite
  ``INSERT`` of the conversation per request, in a plain ``def`` route (FastAPI runs it on its
  thread pool) over a connection per thread, kept for the process's life, with the store's own
  pragmas (WAL, ``synchronous=NORMAL``, autocommit). Both run on uvicorn's h11 protocol, as the
  service does, so the HTTP layer is the same on every side.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse

import afterwork as aw
from afterwork.conversations import ConversationCompleted

SETUPS = ("shipped", "no_journal", "noop", "minimal_insert", "minimal")
COMPLETED = "/v1/conversations/completed"


def serve_shipped(port: int, db: Path, max_pending: int, *, journal: bool) -> int:
    """``afterwork serve --port P --db PATH [--no-journal]``, as a user would run it."""
    from afterwork.cli import main

    os.environ["AFTERWORK_MAX_PENDING"] = str(max_pending)
    argv = ["serve", "--port", str(port), "--db", str(db)]
    return main([*argv, "--no-journal"] if not journal else argv)


def serve_noop(port: int, db: Path, max_pending: int) -> int:
    """The service exactly as ``afterwork serve`` builds it, but with no-op jobs."""
    from afterwork.conversations import configure_logging, create_app, load_settings
    from afterwork.conversations._server import ServiceServer, config

    os.environ["AFTERWORK_MAX_PENDING"] = str(max_pending)
    settings = load_settings(port=port, db=db)
    configure_logging(level=logging.getLevelNamesMapping()[settings.log_level.upper()])
    app = create_app(settings, jobs=noop_jobs)
    server = ServiceServer(config(app, settings), app)
    server.run()
    return 0 if server.started else 1


async def noop(event: ConversationCompleted) -> None:
    pass


def noop_jobs(services: object) -> aw.Pipeline[ConversationCompleted]:
    """The pipeline factory of the ``noop`` setup: the seven job names, each a no-op."""
    from afterwork.conversations import JOBS, PIPELINE
    from afterwork.conversations._jobs import conversation_key

    pipeline = aw.Pipeline(PIPELINE, event=ConversationCompleted, key=conversation_key)
    for name in JOBS:
        pipeline.job(name=name)(noop)
    return pipeline


def minimal_app(db: Path | None) -> FastAPI:
    """FastAPI with the service's model, answering 202; with ``db``, one insert per request."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    def admitted(event: ConversationCompleted) -> JSONResponse:
        cid = event.conversation.id
        url = f"/v1/conversations/{cid}/processing"
        body = {"key": cid, "status_url": url, "reprocess": event.reprocess}
        return JSONResponse(body, status_code=202, headers={"Location": url})

    if db is None:

        @app.post(COMPLETED, status_code=202)
        async def completed(event: ConversationCompleted) -> JSONResponse:
            return admitted(event)

    else:
        connect = per_thread_connection(db)

        @app.post(COMPLETED, status_code=202)
        def completed_insert(event: ConversationCompleted) -> JSONResponse:
            conversation = event.conversation
            connect().execute(
                "INSERT INTO conversations (id, uid, created_at, body) VALUES (?, ?, ?, ?)",
                (conversation.id, conversation.uid, conversation.created_at.isoformat(),
                 conversation.model_dump_json()),
            )  # fmt: skip
            return admitted(event)

    @app.get("/readyz")
    async def readyz() -> dict[str, object]:
        return {"ready": True, "reasons": []}

    return app


def per_thread_connection(db: Path) -> Callable[[], sqlite3.Connection]:
    """A function giving each thread its own connection, opened on first use and kept."""
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS conversations "
            "(id TEXT PRIMARY KEY, uid TEXT NOT NULL, created_at TEXT NOT NULL, body TEXT)"
        )
    conn.close()
    local = threading.local()

    def connect() -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(db, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA synchronous=NORMAL")
            local.conn = conn
        return conn

    return connect


def serve_minimal(port: int, db: Path | None) -> int:
    import uvicorn

    uvicorn.run(
        minimal_app(db),
        host="127.0.0.1",
        port=port,
        http="h11",
        log_config=None,
        access_log=False,
    )
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._service_apps")
    parser.add_argument("setup", choices=SETUPS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--max-pending", type=int, default=10_000)
    args = parser.parse_args(argv)
    if args.setup in ("shipped", "no_journal"):
        journal = args.setup == "shipped"
        return serve_shipped(args.port, args.db, args.max_pending, journal=journal)
    if args.setup == "noop":
        return serve_noop(args.port, args.db, args.max_pending)
    logging.basicConfig(level=logging.WARNING)
    return serve_minimal(args.port, args.db if args.setup == "minimal_insert" else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
