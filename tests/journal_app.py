"""A small service with a journal, run as a subprocess by the crash and SIGTERM tests.

``--mode submit`` admits ``--count`` completions of 7 blocking jobs (50-200 ms each) and
runs them; ``--mode replay`` only replays what the journal holds. Each job appends
"start key job" to ``--runs`` as it starts and "end key job" as it finishes, so the test can
count how often each job started and check that each one finished.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import time
from contextlib import closing

import anyio
import structlog
from pydantic import BaseModel

import afterwork as aw


class Work(BaseModel):
    id: int
    payload: str


def mark(path: str, line: str) -> None:
    # O_APPEND writes of one short line are atomic: concurrent threads never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def build(runs_path: str) -> aw.Pipeline[Work]:
    pipeline = aw.Pipeline("crash", event=Work, key=lambda w: w.id)
    for n in range(7):

        def job(work: Work, ctx: aw.JobContext, n: int = n) -> None:
            mark(runs_path, f"start {ctx.key} {ctx.job}")
            time.sleep(random.Random(f"{work.id}-{n}").uniform(0.05, 0.2))
            mark(runs_path, f"end {ctx.key} {ctx.job}")

        pipeline.job(name=f"job{n}")(job)
    return pipeline


def unfinished(journal: str) -> int:
    with closing(sqlite3.connect(journal)) as conn:
        return int(conn.execute("SELECT count(*) FROM completions").fetchone()[0])


async def main(args: argparse.Namespace) -> None:
    pipeline = build(args.runs)
    dispatcher = aw.Dispatcher(
        max_threads=32,
        max_pending=1000,
        drain_timeout=args.drain_timeout,
        journal=args.journal,
        pipelines=[pipeline],
    )
    async with dispatcher, anyio.create_task_group() as tg:

        async def on_sigterm() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    await dispatcher.aclose()
                    tg.cancel_scope.cancel()

        tg.start_soon(on_sigterm)
        if args.mode == "submit":
            for i in range(args.count):
                await dispatcher.submit(pipeline, Work(id=i, payload="x" * 100))
            print("admitted", flush=True)
        # The journal file is the source of truth here, and it has no event to wait on.
        while dispatcher.stats().pending or unfinished(args.journal):  # noqa: ASYNC110
            await anyio.sleep(0.05)
        print("finished", flush=True)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--journal", required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--mode", choices=["submit", "replay"], required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    anyio.run(main, parser.parse_args())
