"""The README quickstart, runnable: a pipeline of blocking and async jobs, run and submit."""

from __future__ import annotations

import time

import anyio
import structlog
from pydantic import BaseModel

import afterwork as aw


class Completed(BaseModel):
    id: str
    text: str


pipeline = aw.Pipeline("conversation.completed", event=Completed, key=lambda c: c.id)


@pipeline.job  # sync: runs in a worker thread, under the thread budget
def save_vector(conv: Completed) -> None:
    time.sleep(0.05)  # a blocking client call


@pipeline.job(timeout=2, retries=2)
async def extract_memories(conv: Completed, ctx: aw.JobContext) -> None:
    words = await ctx.run_sync(str.split, conv.text)  # borrows a thread only while it runs
    for word in words[:3]:
        ctx.spawn(time.sleep, 0.01, name=word)  # a child job on the same budget


@pipeline.job
def flaky_webhook(conv: Completed) -> None:
    raise ConnectionError("receiver down")  # reported, never raised to the caller


async def main() -> None:
    async with aw.Dispatcher(max_threads=4, max_pending=100) as dispatcher:
        report = await dispatcher.run(pipeline, Completed(id="c1", text="plan the trip"))
        print("run:", report.ok, [(o.job, o.status) for o in report.outcomes])
        handles = [
            dispatcher.submit_nowait(pipeline, {"id": f"c{i}", "text": "hello world"})
            for i in range(2, 20)
        ]
        reports = [await h.wait() for h in handles]
        print("submitted:", len(reports), "completions")
        print(dispatcher.stats())


if __name__ == "__main__":
    # The application, not the library, configures logging. Keep rendering cheap: a pretty
    # traceback drawn on the event loop thread stalls every job for as long as it takes.
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(40),  # errors only
    )
    anyio.run(main)
