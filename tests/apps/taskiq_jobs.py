"""Test pipelines for ``afterwork worker`` processes (the Redis scale-out's kill tests).

Run as ``afterwork worker --pipelines tests.apps.taskiq_jobs:pipeline`` with ``cwd`` and
``PYTHONPATH`` at the repository root. The ``work`` pipeline has four blocking jobs. Each job
appends "start KEY JOB PID TIME" to the file named by ``TASKIQ_JOBS_RUNS`` as it starts and
"end KEY JOB PID TIME" as it finishes, so a test can count how often each job started, on
which worker, and check that each one finished. The event says how a job behaves:

- ``sleep_s``: each job blocks that long (default: 50-200 ms, fixed per key and job);
- ``crash``: job0 kills its worker process at once (``os._exit(1)``): a poison message.

With ``TASKIQ_JOBS_JSON_LOGS=1`` the worker's log events go to stdout as JSON lines.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time

import structlog
from pydantic import BaseModel

import afterwork as aw

#: The environment variable naming the file the jobs record their starts and ends in.
RUNS_ENV = "TASKIQ_JOBS_RUNS"
#: Four jobs per completion.
JOBS = ("job0", "job1", "job2", "job3")


class Work(BaseModel):
    id: int
    sleep_s: float | None = None
    crash: bool = False


def mark(line: str) -> None:
    """Append one line to the runs file: O_APPEND writes of one short line are atomic across
    threads and processes, and survive ``os._exit`` and SIGKILL (no buffer)."""
    path = os.environ.get(RUNS_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


def build() -> aw.Pipeline[Work]:
    work = aw.Pipeline("work", event=Work, key=lambda w: w.id)
    for n, name in enumerate(JOBS):

        def job(event: Work, ctx: aw.JobContext, n: int = n) -> None:
            mark(f"start {ctx.key} {ctx.job}")
            if event.crash and n == 0:
                os._exit(1)
            seconds = event.sleep_s
            if seconds is None:
                seconds = random.Random(f"{event.id}-{n}").uniform(0.05, 0.2)
            time.sleep(seconds)
            mark(f"end {ctx.key} {ctx.job}")

        work.job(name=name)(job)
    return work


pipeline = build()

if os.environ.get("TASKIQ_JOBS_JSON_LOGS"):
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
