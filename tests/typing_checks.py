"""Static checks of afterwork's public types, run by mypy (``make typecheck``), never by pytest.

Each function below is only type-checked, never called. A call mypy must accept is written
plainly; a call it must reject carries ``# type: ignore[<code>]``: mypy runs with
``warn_unused_ignores`` (strict), so if afterwork's types ever let such a call through, the
ignore becomes unused and ``make typecheck`` fails (G10, issue 8 item 16).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import assert_type

import pydantic

import afterwork as aw

from .helpers import Ev


class WrongModel(pydantic.BaseModel):
    id: int


def _add(a: int, b: str) -> str:
    return b * a


def _with_ctx(a: int, ctx: aw.JobContext) -> None:
    pass


def pipeline_is_generic_over_its_event() -> None:
    pipeline = aw.Pipeline("p", event=Ev, key=lambda e: e.id)
    assert_type(pipeline, aw.Pipeline[Ev])
    aw.Pipeline("p", event=Ev, key=lambda e: e.missing)  # type: ignore[attr-defined]


def pipeline_jobs_are_public_job_specs(pipeline: aw.Pipeline[Ev]) -> None:
    assert_type(pipeline.jobs, Mapping[str, aw.JobSpec])
    spec: aw.JobSpec = pipeline.jobs["j"]
    assert_type(spec.timeout, float | None)


async def submit_checks_the_event_type(
    dispatcher: aw.Dispatcher, pipeline: aw.Pipeline[Ev]
) -> None:
    assert_type(await dispatcher.submit(pipeline, {"id": 1}), aw.Handle)
    assert_type(await dispatcher.submit(pipeline, Ev(id=1)), aw.Handle)
    assert_type(dispatcher.submit_nowait(pipeline, Ev(id=1)), aw.Handle)
    assert_type(await dispatcher.run(pipeline, Ev(id=1)), aw.Report)
    await dispatcher.submit(pipeline, 42)  # type: ignore[arg-type]
    dispatcher.submit_nowait(pipeline, 42)  # type: ignore[arg-type]
    await dispatcher.run(pipeline, 42)  # type: ignore[arg-type]
    dispatcher.submit_nowait(pipeline, WrongModel(id=1))  # type: ignore[misc]
    await dispatcher.submit(pipeline, WrongModel(id=1))  # type: ignore[misc]


async def dispatcher_run_sync_checks_its_arguments(dispatcher: aw.Dispatcher) -> None:
    assert_type(await dispatcher.run_sync(divmod, 7, 2), tuple[int, int])
    assert_type(await dispatcher.run_sync(_add, 2, "x"), str)
    await dispatcher.run_sync(divmod, "a")  # type: ignore[arg-type]
    await dispatcher.run_sync(_add, "x", 2)  # type: ignore[arg-type]
    await dispatcher.run_sync(_add, 2)  # type: ignore[arg-type]


async def ctx_run_sync_checks_its_arguments(ctx: aw.JobContext) -> None:
    assert_type(await ctx.run_sync(divmod, 7, 2), tuple[int, int])
    assert_type(await ctx.run_sync(_add, 2, "x"), str)
    await ctx.run_sync(divmod, "a")  # type: ignore[arg-type]
    await ctx.run_sync(_add, "x", 2)  # type: ignore[arg-type]


def ctx_spawn_checks_its_arguments(ctx: aw.JobContext) -> None:
    ctx.spawn(_add, 1, "x")
    ctx.spawn(_add, 1, "x", name="child")
    ctx.spawn(_with_ctx, 1)
    ctx.spawn(_add, "x", 1)  # type: ignore[arg-type, call-arg]
    ctx.spawn(_add, 1)  # type: ignore[arg-type]
    ctx.spawn(_add, 1, "x", 2)  # type: ignore[arg-type, call-arg]
    ctx.spawn(_with_ctx, "x")  # type: ignore[arg-type]
    ctx.spawn(_with_ctx, 1, 2)  # type: ignore[arg-type, call-arg]
