"""A small service for the Ctrl-C tests of G2, run as a subprocess.

``--mode interrupt``: a dispatcher runs a job that awaits forever, a job that blocks in a
worker thread on a ``threading.Event`` (with a timeout, so the thread ends on its own), and a
job that keeps the event loop busy (so the signal most likely arrives while a job's own code
runs); once all run, it prints "ready" and waits for the test's SIGINT. A real Ctrl-C must stop
it.

``--mode own``: jobs raise ``KeyboardInterrupt`` themselves (in a worker thread, on the event
loop, and in a spawned child); each is that job's failure, so the app prints every outcome,
then "still running", and exits 0.

Either mode prints "closed" once its ``async with`` block has exited. The library's log events
go to stderr, so stdout holds only these lines.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import anyio
import anyio.lowlevel
import structlog
from pydantic import BaseModel

import afterwork as aw

#: How long the blocked thread waits before it gives up on its own.
THREAD_WAIT_S = 8.0


class Ev(BaseModel):
    id: int


def say(line: str) -> None:
    print(line, flush=True)


async def interrupt() -> None:
    """Run three jobs that never end on their own, and wait for a Ctrl-C."""
    pipeline = aw.Pipeline("ctrl_c", event=Ev, key=lambda e: e.id)
    awaiting = anyio.Event()
    busy = anyio.Event()
    in_thread = threading.Event()

    @pipeline.job
    async def awaits_forever(event: Ev) -> None:
        awaiting.set()
        await anyio.sleep_forever()

    @pipeline.job
    def blocks_in_thread(event: Ev) -> None:
        in_thread.set()
        threading.Event().wait(timeout=THREAD_WAIT_S)

    @pipeline.job
    async def busy_on_loop(event: Ev) -> None:
        busy.set()
        while True:
            sum(range(10_000))
            await anyio.lowlevel.checkpoint()

    try:
        async with aw.Dispatcher(drain_timeout=1) as dispatcher:
            dispatcher.submit_nowait(pipeline, Ev(id=1))
            await awaiting.wait()
            await busy.wait()
            while not in_thread.is_set():  # noqa: ASYNC110 - a thread sets it; nothing to await
                await anyio.sleep(0.01)
            say("ready")
            await anyio.sleep_forever()
    finally:
        say("closed")


async def own() -> None:
    """Jobs raise KeyboardInterrupt themselves: failures, and the process carries on."""
    pipeline = aw.Pipeline("own", event=Ev, key=lambda e: e.id)

    @pipeline.job
    def in_thread(event: Ev) -> None:
        raise KeyboardInterrupt("from a worker thread")

    @pipeline.job
    async def on_loop(event: Ev) -> None:
        await anyio.lowlevel.checkpoint()
        raise KeyboardInterrupt("from the event loop")

    async def child(event: Ev) -> None:
        raise KeyboardInterrupt("from a child")

    @pipeline.job
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        ctx.spawn(child, event)

    try:
        async with aw.Dispatcher() as dispatcher:
            report = await dispatcher.run(pipeline, Ev(id=1))
            for outcome in sorted(report.outcomes, key=lambda o: o.job):
                say(f"{outcome.job} {outcome.status.value} {outcome.error}")
            say("still running")
    finally:
        say("closed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["asyncio", "trio"], required=True)
    parser.add_argument("--mode", choices=["interrupt", "own"], required=True)
    args = parser.parse_args()
    # A Ctrl-C reaches Python as KeyboardInterrupt, even when this app was started from a
    # shell or harness that ignores SIGINT in its children (as non-interactive shells do).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    anyio.run(interrupt if args.mode == "interrupt" else own, backend=args.backend)


if __name__ == "__main__":
    main()
