"""The scaleout benchmark's pipeline, run by real ``afterwork worker`` processes.

A completion has two blocking jobs, each sleeping ``sleep_s``: throughput is bounded by each
worker's thread budget, not by the CPU, so adding workers can scale it on a small machine.
Each job appends "start KEY JOB PID TIME" to the file named by ``SCALEOUT_RUNS`` as it starts
and "end KEY JOB PID TIME" as it returns, so the benchmark counts exactly how often each job
started, on which worker, and when it ended.

The benchmark runs ``afterwork worker --pipelines benchmarks._scaleout_jobs:gated_pipeline``
(``cwd`` and ``PYTHONPATH`` at the repository root): the same ``pipeline``, handed over only
once the file named by ``SCALEOUT_GATE`` exists. Waiting, the worker creates that name plus
".waiting": its imports (seconds on a busy machine) are done, and it joins the queue the
moment the benchmark creates the gate.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import structlog
from pydantic import BaseModel

import afterwork as aw

#: The environment variable naming the file the jobs record their starts and ends in.
RUNS_ENV = "SCALEOUT_RUNS"
#: The environment variable naming the file whose creation releases ``gated_pipeline``.
GATE_ENV = "SCALEOUT_GATE"
JOBS = ("job0", "job1")


class Burst(BaseModel):
    burst: str
    id: int
    sleep_s: float = 0.2


def key_of(event: Burst) -> str:
    return f"{event.burst}-{event.id}"


def mark(kind: str, ctx: aw.JobContext) -> None:
    """Append one line to the runs file. O_APPEND writes of one short line land whole, across
    threads and processes, and unbuffered, so a SIGKILLed worker's last starts are kept."""
    path = os.environ.get(RUNS_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{kind} {ctx.key} {ctx.job} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


def build() -> aw.Pipeline[Burst]:
    pipe = aw.Pipeline("scaleout", event=Burst, key=key_of)
    for name in JOBS:

        def job(event: Burst, ctx: aw.JobContext) -> None:
            mark("start", ctx)
            time.sleep(event.sleep_s)
            mark("end", ctx)

        pipe.job(name=name)(job)
    return pipe


pipeline = build()


def __getattr__(name: str) -> aw.Pipeline[Burst]:
    if name != "gated_pipeline":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    gate = os.environ[GATE_ENV]
    with open(f"{gate}.waiting", "w"):  # tells the benchmark this worker's imports are done
        pass
    # The worker loads its pipelines on its event loop before it connects, with nothing
    # else running yet: a plain sleep loop here delays only its joining the group.
    while not os.path.exists(gate):
        time.sleep(0.005)
    return pipeline


if RUNS_ENV in os.environ:
    # In a worker: drop the info events (one or more per job) before they are rendered, as
    # the other benchmarks do, so the workers spend their CPU on the dispatch; warnings (a
    # lost claim, say) still reach the worker's log file.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
