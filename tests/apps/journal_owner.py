"""Owns a journal, as another process would, until told to stop.

``--journal PATH --count N`` admits N completions of the ``held`` pipeline whose job never
ends, prints ``ready PID`` once every job has started (so each row is marked running on
disk), then waits for a line on stdin and drains with ``drain_timeout=0`` (the work stays in
the journal). The test may SIGKILL it instead: the journal then holds N running rows.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable

import anyio
import structlog
from pydantic import BaseModel

import afterwork as aw


class Held(BaseModel):
    id: int
    note: str


def build(job: Callable[[Held, aw.JobContext], Awaitable[None]]) -> aw.Pipeline[Held]:
    """The pipeline both this app and the test register: one job named ``hold``."""
    pipeline = aw.Pipeline("held", event=Held, key=lambda held: held.id)
    pipeline.job(name="hold")(job)
    return pipeline


async def main(args: argparse.Namespace) -> None:
    started = 0
    all_started = anyio.Event()

    async def hold(event: Held, ctx: aw.JobContext) -> None:
        nonlocal started
        started += 1
        if started == args.count:
            all_started.set()
        await anyio.sleep_forever()

    pipeline = build(hold)
    async with aw.Dispatcher(journal=args.journal, drain_timeout=0, pipelines=[pipeline]) as d:
        for i in range(args.count):
            await d.submit(pipeline, Held(id=i, note=f"left by {os.getpid()}"))
        await all_started.wait()
        print(f"ready {os.getpid()}", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    print("stopped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--journal", required=True)
    parser.add_argument("--count", type=int, default=3)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    anyio.run(main, parser.parse_args())
