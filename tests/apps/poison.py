"""A service with a poison completion, run again and again by the poison test (G6, issue 9.5).

``--mode submit`` admits completions ``0 .. count-1`` of the ``poison`` pipeline; every run
(submit or replay) then waits until the journal holds nothing unfinished, and exits 0. The
job of key ``--poison`` kills the process with ``os._exit(1)``: on the first run once every
other job is in flight (each blocks 0.3-0.8 s in a thread), later at once. Each job appends
"start KEY" and "end KEY" to ``--runs``. Reports (``on_report``) and log events go to stdout
as JSON lines: ``{"report": {...}}`` and ``{"event": "journal.poisoned", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time

import anyio
import structlog
from pydantic import BaseModel

import afterwork as aw


class Work(BaseModel):
    id: int


def mark(path: str, line: str) -> None:
    # O_APPEND writes of one short line are atomic, and survive os._exit (no buffer).
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def build(args: argparse.Namespace) -> aw.Pipeline[Work]:
    pipeline = aw.Pipeline("poison", event=Work, key=lambda work: work.id)
    others = args.count - 1
    lock = threading.Lock()
    in_flight = 0
    all_in_flight = threading.Event()

    @pipeline.job
    def work(event: Work, ctx: aw.JobContext) -> None:
        nonlocal in_flight
        mark(args.runs, f"start {ctx.key}")
        if event.id == args.poison:
            if args.mode == "submit":  # die with every other completion in flight
                all_in_flight.wait(timeout=10)
            os._exit(1)
        with lock:
            in_flight += 1
            if in_flight == others:
                all_in_flight.set()
        time.sleep(random.uniform(0.3, 0.8))
        with lock:
            in_flight -= 1
        mark(args.runs, f"end {ctx.key}")

    return pipeline


def print_report(report: aw.Report) -> None:
    print(json.dumps({"report": report.model_dump(mode="json")}), flush=True)


async def main(args: argparse.Namespace) -> None:
    pipeline = build(args)
    journal = aw.SqliteJournal(args.journal, max_recoveries=3)
    async with aw.Dispatcher(journal=journal, pipelines=[pipeline], on_report=print_report) as d:
        if args.mode == "submit":
            for i in range(args.count):
                await d.submit(pipeline, Work(id=i))
        # The journal file is the source of truth here, and it has no event to wait on.
        while True:
            left = await anyio.to_thread.run_sync(journal.unfinished)
            if not (left or d.stats().pending):
                break
            await anyio.sleep(0.05)
    print(json.dumps({"finished": True}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--journal", required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--mode", choices=["submit", "replay"], required=True)
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--poison", type=int, default=3)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
    anyio.run(main, parser.parse_args())
