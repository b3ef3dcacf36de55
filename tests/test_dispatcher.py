"""G4 admission, G5 drain, G8 context, G9 stats and the dispatcher's lifecycle."""

from __future__ import annotations

import gc
import math
import weakref

import anyio
import anyio.lowlevel
import pydantic
import pytest
import structlog
from structlog.typing import EventDict

import afterwork as aw

from .conftest import named
from .helpers import Ev, Gate, make_pipeline, wait_until


def blocking_pipeline(gate: Gate) -> aw.Pipeline[Ev]:
    pipeline = make_pipeline()
    pipeline.job(name="block")(gate.block)
    return pipeline


# -- G4 admission ---------------------------------------------------------------------------


async def test_submit_nowait_past_max_pending_raises_overloaded() -> None:
    """At max_pending unfinished completions, submit_nowait raises Overloaded and admits none."""
    gate = Gate()
    pipeline = blocking_pipeline(gate)
    async with aw.Dispatcher(max_threads=2, max_pending=3) as dispatcher:
        handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(3)]
        with pytest.raises(aw.Overloaded) as info:
            dispatcher.submit_nowait(pipeline, Ev(id=3))
        assert str(info.value) == (
            "cannot admit p:3: 3 completions are pending, max_pending=3; retry later, or use "
            "'await dispatcher.submit(...)' to wait for room"
        )
        assert (info.value.pending, info.value.max_pending) == (3, 3)
        assert dispatcher.stats().admitted == 3
        gate.open()
        reports = [await h.wait() for h in handles]
    assert all(r.ok for r in reports)


async def test_submit_waits_for_room_or_times_out() -> None:
    """submit waits for room; with a timeout and no room it raises Overloaded."""
    gate = Gate()
    pipeline = blocking_pipeline(gate)
    admitted: list[aw.Handle] = []
    async with aw.Dispatcher(max_threads=1, max_pending=1) as dispatcher:
        first = dispatcher.submit_nowait(pipeline, Ev(id=1))
        with pytest.raises(aw.Overloaded) as info:
            await dispatcher.submit(pipeline, Ev(id=2), timeout=0.01)
        assert str(info.value) == (
            "cannot admit p:2: no room within 0.01 s (1 pending, max_pending=1)"
        )

        async def waiting_submit() -> None:
            admitted.append(await dispatcher.submit(pipeline, Ev(id=3)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting_submit)
            await wait_until(lambda: gate.running == 1, "first completion running")
            assert admitted == []
            gate.open()
        report = await admitted[0].wait()
        assert (await first.wait()).ok
    assert report.ok
    assert dispatcher.stats().admitted == 2


async def test_submit_with_timeout_zero_admits_at_once_or_raises() -> None:
    """submit(timeout=0) admits when there is room and raises Overloaded, unwaiting, when not."""
    gate = Gate()
    pipeline = blocking_pipeline(gate)
    async with aw.Dispatcher(max_threads=1, max_pending=1) as dispatcher:
        handle = await dispatcher.submit(pipeline, Ev(id=1), timeout=0)
        with pytest.raises(aw.Overloaded) as info:
            await dispatcher.submit(pipeline, Ev(id=2), timeout=0)
        gate.open()
        assert (await handle.wait()).ok
    assert str(info.value) == "cannot admit p:2: no room within 0 s (1 pending, max_pending=1)"


async def test_all_admitted_work_completes_under_pressure() -> None:
    """Many producers racing for 5 slots: every admitted completion finishes, none is lost."""
    pipeline = make_pipeline()
    done: list[int] = []

    @pipeline.job
    async def record(event: Ev) -> None:
        await anyio.lowlevel.checkpoint()
        done.append(event.id)

    async with aw.Dispatcher(max_pending=5) as dispatcher:
        handles: list[aw.Handle] = []

        async def produce(start: int) -> None:
            for i in range(start, start + 50):
                handles.append(await dispatcher.submit(pipeline, Ev(id=i)))

        async with anyio.create_task_group() as tg:
            for start in range(0, 200, 50):
                tg.start_soon(produce, start)
        reports = [await h.wait() for h in handles]
    assert sorted(done) == list(range(200))
    assert len(reports) == 200
    assert dispatcher.stats().completed == 200


async def test_beyond_max_active_completions_wait_in_order_without_starting() -> None:
    """With max_active=2, later completions wait unstarted until a place frees, then all run."""
    gate = Gate()
    started: list[int] = []
    pipeline = make_pipeline()

    @pipeline.job
    def block(event: Ev) -> None:
        started.append(event.id)
        gate.block()

    async with aw.Dispatcher(max_threads=8, max_active=2) as dispatcher:
        handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(10)]
        await wait_until(lambda: gate.running == 2, "two completions running")
        stats = dispatcher.stats()
        gate.open()
        reports = [await h.wait() for h in handles]
    assert (stats.pending, stats.queued, stats.threads_busy) == (10, 8, 2)
    assert sorted(started[:2]) == [0, 1]  # the first two admitted, none of the queued
    assert sorted(started) == list(range(10))
    assert all(r.ok for r in reports)


async def test_a_drain_names_and_reports_queued_completions(events: list[EventDict]) -> None:
    """Completions still queued at the drain deadline are named and reported cancelled."""
    gate = Gate()
    pipeline = blocking_pipeline(gate)
    async with aw.Dispatcher(max_active=1, drain_timeout=0.01) as dispatcher:
        handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(3)]
        await wait_until(lambda: gate.running == 1, "one running")
        await dispatcher.aclose()
        reports = [await h.wait() for h in handles]
        gate.open()
    assert [r.outcomes[0].status for r in reports] == ["cancelled"] * 3
    [unfinished] = named(events, "dispatcher.unfinished")
    assert unfinished["jobs"] == ["p:0:block", "p:1:block", "p:2:block"]
    assert gate.entered == 1


async def test_a_finished_completion_keeps_no_reference_to_its_event() -> None:
    """After a completion finishes, its event is freed, failures and children included."""
    pipeline = make_pipeline()
    pipeline.job(name="sync")(lambda e: None)

    @pipeline.job
    async def failing(event: Ev) -> None:
        raise ValueError(event.id)

    @pipeline.job
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        ctx.spawn(lambda e: None, event, name="child")

    async with aw.Dispatcher() as dispatcher:
        event = Ev(id=1, text="x" * 10_000)
        ref = weakref.ref(event)
        handle = dispatcher.submit_nowait(pipeline, event)
        del event
        report = await handle.wait()
        gc.collect()
        assert ref() is None
    assert len(report.outcomes) == 4


async def test_on_report_sees_every_report_and_its_failures_are_contained(
    events: list[EventDict],
) -> None:
    """on_report gets each finished completion's Report; if it raises, that is logged only."""
    pipeline = make_pipeline()
    pipeline.job(name="j")(lambda e: None)
    seen: list[aw.Report] = []

    def on_report(report: aw.Report) -> None:
        seen.append(report)
        if report.key == "2":
            raise RuntimeError("observer broke")

    async with aw.Dispatcher(on_report=on_report) as dispatcher:
        reports = [await dispatcher.run(pipeline, Ev(id=i)) for i in (1, 2, 3)]
    assert seen == reports
    assert [r.replayed for r in seen] == [False] * 3
    [failure] = named(events, "dispatcher.on_report_failed")
    assert failure["key"] == "2"
    with pytest.raises(aw.InvalidOption) as info:
        aw.Dispatcher(on_report=42)  # type: ignore[arg-type]
    assert str(info.value) == (
        "on_report must be a function taking a Report, got 42; "
        "e.g. Dispatcher(on_report=lambda report: print(report.ok))"
    )


# -- G5 drain -------------------------------------------------------------------------------


async def test_aclose_refuses_new_work_at_once() -> None:
    """While draining, submit_nowait, submit and run raise DispatcherClosed; once closed,
    run_sync does too."""
    gate = Gate()
    pipeline = blocking_pipeline(gate)
    message = (
        "cannot accept p: the dispatcher is draining and admits no new work; submit before "
        "aclose(), or to a new Dispatcher"
    )
    async with aw.Dispatcher(max_threads=1) as dispatcher:
        handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.aclose)
            await wait_until(lambda: dispatcher.stats().state == "draining", "draining")
            with pytest.raises(aw.DispatcherClosed) as info:
                dispatcher.submit_nowait(pipeline, Ev(id=2))
            assert str(info.value) == message
            with pytest.raises(aw.DispatcherClosed):
                await dispatcher.submit(pipeline, Ev(id=3))
            with pytest.raises(aw.DispatcherClosed):
                await dispatcher.run(pipeline, Ev(id=4))
            gate.open()
            # Work finishing during the drain may still need a thread.
            assert await dispatcher.run_sync(divmod, 7, 2) == (3, 1)
        assert (await handle.wait()).ok
    assert dispatcher.stats().admitted == 1
    with pytest.raises(aw.DispatcherClosed) as closed:
        await dispatcher.run_sync(divmod, 1, 1)
    assert str(closed.value) == (
        "cannot accept divmod: the dispatcher is closed and admits no new work; submit before "
        "aclose(), or to a new Dispatcher"
    )


async def test_submit_waiting_for_room_is_refused_when_draining_starts() -> None:
    """A submit blocked on max_pending gets DispatcherClosed as soon as aclose begins."""
    gate = Gate()
    pipeline = blocking_pipeline(gate)
    errors: list[BaseException] = []
    async with aw.Dispatcher(max_threads=1, max_pending=1) as dispatcher:
        dispatcher.submit_nowait(pipeline, Ev(id=1))

        async def blocked_submit() -> None:
            try:
                await dispatcher.submit(pipeline, Ev(id=2))
            except aw.DispatcherClosed as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_submit)
            await wait_until(lambda: gate.running == 1, "first running")
            tg.start_soon(dispatcher.aclose)
            await wait_until(lambda: len(errors) == 1, "blocked submit refused")
            gate.open()
    assert dispatcher.stats().admitted == 1


async def test_drain_lets_work_finish_then_cancels_and_names_the_rest(
    events: list[EventDict],
) -> None:
    """Work finishing within drain_timeout succeeds; the rest is cancelled and named."""
    pipeline = make_pipeline("drain")
    finish_in_time = anyio.Event()

    @pipeline.job
    async def prompt(event: Ev) -> None:
        await finish_in_time.wait()

    @pipeline.job
    async def forever(event: Ev) -> None:
        if event.id == 2:
            await anyio.sleep_forever()

    async with aw.Dispatcher(drain_timeout=0.2) as dispatcher:
        handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in (1, 2)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.aclose)
            await wait_until(lambda: dispatcher.stats().state == "draining", "draining")
            finish_in_time.set()
    first, second = [await h.wait() for h in handles]
    assert first.ok
    assert second.outcome("prompt").status == "succeeded"
    assert second.outcome("forever").status == "cancelled"
    [unfinished] = named(events, "dispatcher.unfinished")
    assert unfinished["jobs"] == ["drain:2:forever"]
    assert unfinished["completions"] == 1
    assert [e["event"] for e in events if e["event"].startswith("dispatcher.")] == [
        "dispatcher.draining",
        "dispatcher.unfinished",
        "dispatcher.closed",
    ]
    assert dispatcher.stats().state == "closed"
    assert dispatcher.stats().cancelled == 1


async def test_drain_deadline_cancels_jobs_queued_for_a_thread(events: list[EventDict]) -> None:
    """Jobs still waiting for a thread at the deadline are cancelled and named too."""
    gate = Gate()
    pipeline = blocking_pipeline(gate)
    async with aw.Dispatcher(max_threads=1, drain_timeout=0.05) as dispatcher:
        handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(3)]
        await wait_until(lambda: gate.running == 1, "one running")
        await dispatcher.aclose()
        statuses = [(await h.wait()).outcomes[0].status for h in handles]
        stuck = dispatcher.stats().threads_stuck
        gate.open()
        await wait_until(lambda: dispatcher.stats().threads_stuck == 0, "the thread returns")
    assert statuses == ["cancelled"] * 3
    [unfinished] = named(events, "dispatcher.unfinished")
    assert unfinished["jobs"] == ["p:0:block", "p:1:block", "p:2:block"]
    assert gate.entered == 1
    assert stuck == 1  # the one thread that started runs on past the close, counted


async def test_aclose_is_idempotent_and_concurrent_calls_wait(events: list[EventDict]) -> None:
    """aclose twice, or from two tasks at once, drains once and returns for both."""
    release = anyio.Event()
    pipeline = make_pipeline()

    @pipeline.job
    async def job(event: Ev) -> None:
        await release.wait()

    async with aw.Dispatcher() as dispatcher:
        handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.aclose)
            tg.start_soon(dispatcher.aclose)
            await wait_until(lambda: dispatcher.stats().state == "draining", "draining")
            release.set()
        await dispatcher.aclose()
    assert (await handle.wait()).ok
    assert len(named(events, "dispatcher.closed")) == 1


async def test_lifecycle_misuse_has_its_own_messages() -> None:
    """Using a dispatcher before entering it, or entering it twice, says how to fix it."""
    pipeline = make_pipeline()
    dispatcher = aw.Dispatcher()
    with pytest.raises(aw.DispatcherNotOpen) as info:
        dispatcher.submit_nowait(pipeline, Ev(id=1))
    assert str(info.value) == (
        "this Dispatcher is not open yet; use 'async with Dispatcher(...) as dispatcher:' "
        "before submitting work"
    )
    async with dispatcher:
        pass
    with pytest.raises(aw.UsageError) as again:
        async with dispatcher:
            pass
    assert str(again.value) == (
        "this Dispatcher is closed and cannot be entered again; create a new Dispatcher for "
        "each 'async with'"
    )
    with pytest.raises(aw.DispatcherClosed) as closed:
        await dispatcher.submit(pipeline, Ev(id=1))
    assert str(closed.value) == (
        "cannot accept p: the dispatcher is closed and admits no new work; submit before "
        "aclose(), or to a new Dispatcher"
    )
    never_opened = aw.Dispatcher()
    await never_opened.aclose()
    assert never_opened.stats().state == "closed"


# -- G8 context -----------------------------------------------------------------------------


async def test_contextvars_bound_before_submit_reach_jobs_and_their_events(
    events: list[EventDict],
) -> None:
    """A request id bound before submit is seen by sync and async jobs and in job events."""
    seen: dict[str, object] = {}
    pipeline = make_pipeline()

    @pipeline.job
    def sync_job(event: Ev) -> None:
        seen[f"sync-{event.id}"] = structlog.contextvars.get_contextvars().get("request_id")

    @pipeline.job
    async def async_job(event: Ev, ctx: aw.JobContext) -> None:
        seen[f"async-{event.id}"] = structlog.contextvars.get_contextvars().get("request_id")
        ctx.log.info("custom.event")

    async with aw.Dispatcher() as dispatcher:
        handles = []
        for request in (1, 2):
            with structlog.contextvars.bound_contextvars(request_id=f"req-{request}"):
                handles.append(await dispatcher.submit(pipeline, Ev(id=request)))
        for h in handles:
            await h.wait()
    assert seen == {"sync-1": "req-1", "async-1": "req-1", "sync-2": "req-2", "async-2": "req-2"}
    for name in ("job.succeeded", "custom.event"):
        assert sorted((e["key"], e["request_id"]) for e in named(events, name)) == sorted(
            [("1", "req-1"), ("2", "req-2")] * (2 if name == "job.succeeded" else 1)
        )


# -- G9 stats -------------------------------------------------------------------------------


async def test_stats_are_a_frozen_snapshot_of_every_field() -> None:
    """stats() reports state, threads, pending and outcomes, and cannot be changed."""
    gate = Gate()
    pipeline = make_pipeline()
    pipeline.job(name="block")(gate.block)
    pipeline.job(name="skipped", when=lambda e: False)(lambda e: None)

    @pipeline.job
    async def fails(event: Ev) -> None:
        raise ValueError

    async with aw.Dispatcher(max_threads=3, max_pending=10) as dispatcher:
        handles = [dispatcher.submit_nowait(pipeline, Ev(id=i)) for i in range(5)]
        await wait_until(lambda: gate.running == 3, "3 running")
        during = dispatcher.stats()
        gate.open()
        for h in handles:
            await h.wait()
        after = dispatcher.stats()
    assert during.model_dump(exclude={"succeeded", "failed", "skipped"}) == {
        "state": aw.DispatcherState.OPEN,
        "max_threads": 3,
        "max_pending": 10,
        "max_delayed": 10_000,
        "threads_busy": 3,
        "threads_peak": 3,
        "threads_stuck": 0,
        "threads_journal": 0,
        "pending": 5,
        "queued": 0,
        "delayed": 0,
        "replaying": False,
        "running": 5,
        "admitted": 5,
        "completed": 0,
        "timed_out": 0,
        "cancelled": 0,
        "deferred": 0,
        "retried": 0,
        "journal_error": None,
    }
    assert after.model_dump(
        include={
            "threads_busy",
            "threads_peak",
            "pending",
            "completed",
            "succeeded",
            "failed",
            "skipped",
            "running",
        }
    ) == {
        "threads_busy": 0,
        "threads_peak": 3,
        "pending": 0,
        "running": 0,
        "completed": 5,
        "succeeded": 5,
        "failed": 5,
        "skipped": 5,
    }
    with pytest.raises(pydantic.ValidationError, match="Instance is frozen"):
        after.pending = 1  # type: ignore[misc]


# -- G10 bad input --------------------------------------------------------------------------


class Other(pydantic.BaseModel):
    id: int


async def test_a_wrong_event_type_or_invalid_data_is_refused_and_nothing_admitted() -> None:
    """A wrong model raises InvalidEvent naming the expected one; bad data ValidationError."""
    pipeline = make_pipeline()
    pipeline.job(name="j")(lambda e: None)
    async with aw.Dispatcher() as dispatcher:
        with pytest.raises(aw.InvalidEvent) as wrong:
            dispatcher.submit_nowait(pipeline, Other(id=1))  # type: ignore[misc]
        assert str(wrong.value) == (
            "pipeline 'p' takes Ev events (or a dict to validate into one), got Other"
        )
        with pytest.raises(pydantic.ValidationError) as invalid:
            await dispatcher.submit(pipeline, {"id": "not a number"})
        assert invalid.value.errors()[0]["loc"] == ("id",)
        assert "id\n  Input should be a valid integer" in str(invalid.value)
        report = await dispatcher.run(pipeline, {"id": 5})
        assert dispatcher.stats().admitted == 1
    assert report.key == "5"


async def test_a_key_function_returning_a_non_string_is_refused() -> None:
    """A key that is not a str or int raises InvalidEvent naming the pipeline and value."""
    pipeline = aw.Pipeline("k", event=Ev, key=lambda e: e.tags)
    async with aw.Dispatcher() as dispatcher:
        with pytest.raises(aw.InvalidEvent) as info:
            dispatcher.submit_nowait(pipeline, Ev(id=1, tags=["a"]))
        assert dispatcher.stats().admitted == 0
    assert str(info.value) == (
        "pipeline 'k': the key function returned ['a'] of type list; it must return a str "
        "(or an int)"
    )


SECONDS = "must be a finite number of seconds >= 0"


@pytest.mark.parametrize(
    ("kwargs", "problem", "fix"),
    [
        ({"max_threads": 0}, "max_threads must be an int >= 1, got 0", "max_threads=32"),
        ({"max_pending": -5}, "max_pending must be an int >= 1, got -5", "max_pending=1000"),
        ({"max_threads": 2.5}, "max_threads must be an int >= 1, got 2.5", "max_threads=32"),
        ({"max_threads": True}, "max_threads must be an int >= 1, got True", "max_threads=32"),
        ({"drain_timeout": -1}, f"drain_timeout {SECONDS}, got -1", "drain_timeout=30"),
        ({"drain_timeout": math.inf}, f"drain_timeout {SECONDS}, got inf", "drain_timeout=30"),
        ({"park_after": "5"}, f"park_after {SECONDS}, got '5'", "park_after=5.0"),
        ({"max_active": 0}, "max_active must be an int >= 1, got 0", "max_active=256"),
        ({"max_delayed": -1}, "max_delayed must be an int >= 0, got -1", "max_delayed=10000"),
        ({"lanes": {"llm": 0}}, "lanes['llm'] must be an int >= 1, got 0", "lanes={'llm': 6}"),
        ({"lanes": {"": 1}}, "a lane name must be a non-empty str, got ''", "lanes={'llm': 6}"),
        (
            {"lanes": [("llm", 6)]},
            "lanes must be a dict of lane sizes, got [('llm', 6)]",
            "lanes={'llm': 6}",
        ),
        (
            {"journal": 42},
            "journal must be a path or a SqliteJournal, got 42",
            "journal='var/afterwork.db'",
        ),
    ],
)
def test_invalid_settings_name_the_setting_and_value(
    kwargs: dict[str, object], problem: str, fix: str
) -> None:
    """Each invalid Dispatcher setting raises InvalidOption naming it, the value, and a fix
    that is valid Python."""
    with pytest.raises(aw.InvalidOption) as info:
        aw.Dispatcher(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == f"{problem}; e.g. Dispatcher({fix})"
    compile(f"Dispatcher({fix})", "<fix>", "eval")  # the fix is Python a user can paste


async def test_an_unknown_lane_is_refused_at_submit() -> None:
    """Submitting a pipeline whose job names a missing lane raises UnknownLane, admits none."""
    pipeline = make_pipeline()
    pipeline.job(name="j", lane="gpu")(lambda e: None)
    async with aw.Dispatcher(lanes={"llm": 2}) as dispatcher:
        with pytest.raises(aw.UnknownLane) as info:
            dispatcher.submit_nowait(pipeline, Ev(id=1))
        assert dispatcher.stats().admitted == 0
    assert str(info.value) == (
        "lane 'gpu' is not configured on this dispatcher (its lanes: llm); pass it with a "
        "size, e.g. Dispatcher(lanes={'gpu': 6})"
    )
