"""A plain script whose job's thread hangs past its timeout, then exits the documented way.

It runs one completion whose blocking job waits forever (past its 0.5 s timeout), closes the
dispatcher, and returns from ``anyio.run``. A worker thread that never returns would then
keep the interpreter from exiting (anyio's worker threads are not daemon threads), so, as
the ``dispatcher.threads_abandoned`` event's hint says, the script flushes its output and
calls ``os._exit`` when that event named abandoned threads. Printed to stdout, one a line:
the job's status, the abandoned jobs, and that it exits.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import anyio
import structlog
from pydantic import BaseModel
from structlog.typing import EventDict

import afterwork as aw

abandoned: list[str] = []


class Ev(BaseModel):
    id: int


def remember(_: Any, __: str, event_dict: EventDict) -> EventDict:
    if event_dict.get("event") == "dispatcher.threads_abandoned":
        abandoned.extend(event_dict.get("jobs", []))
    return event_dict


def hang(event: Ev) -> None:
    threading.Event().wait()  # never returns


async def main() -> None:
    pipeline = aw.Pipeline("p", event=Ev, key=lambda e: e.id)
    pipeline.job(name="hang", timeout=0.5)(hang)
    async with aw.Dispatcher(drain_timeout=1) as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
        print(f"report: hang {report.outcome('hang').status.value}", flush=True)


if __name__ == "__main__":
    structlog.configure(
        processors=[remember, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    anyio.run(main)
    if abandoned:
        print(f"threads_abandoned: {', '.join(abandoned)}", flush=True)
        print("exiting with os._exit", flush=True)
        sys.stderr.flush()
        os._exit(0)
    print("no threads_abandoned event: returning from the script", flush=True)
