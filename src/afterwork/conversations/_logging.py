"""Logging for the service and the demo. The library only emits events; this configures them.

JSON lines when the output is not a terminal (for log collectors), a readable console format
when it is. ``merge_contextvars`` comes first, so what a request binds (its ``request_id``)
appears in the events of the jobs it started. Standard-library records (uvicorn's) go through
the same renderer, so one stream holds one format.

Nothing personal or secret is written: tracebacks carry no local variables (a job's locals
hold the transcript), and every URL loses its credentials and query string (``_redact``).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import Processor

from ._redact import redact_event


def configure_logging(
    *, json: bool | None = None, stream: TextIO | None = None, level: int = logging.INFO
) -> None:
    """Send structlog events to ``stream`` (stderr), as JSON unless it is a terminal."""
    out = sys.stderr if stream is None else stream
    as_json = not out.isatty() if json is None else json
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    no_locals = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    renderer: list[Processor] = (
        [
            structlog.processors.ExceptionRenderer(no_locals),
            redact_event,
            structlog.processors.JSONRenderer(),
        ]
        if as_json
        else [
            redact_event,
            structlog.dev.ConsoleRenderer(
                exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
            ),
        ]
    )
    structlog.configure(
        processors=shared + renderer,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
