"""G4 bounded memory and admission under misuse: nothing keeps a finished event alive, and
every refusal gives back the room it took (or never takes any), so ``max_pending`` stays exact.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pydantic
import pytest

import afterwork as aw
from afterwork.testing import Gate, wait_until

from .helpers import Ev, make_pipeline

MAX_PENDING = 3
REFUSALS = 3 * MAX_PENDING


class Holding:
    """A pipeline whose completions stay pending until ``release()``: room held on purpose."""

    def __init__(self, name: str = "hold") -> None:
        self.pipeline = make_pipeline(name)
        self.released = anyio.Event()
        self.ran: list[int] = []

        @self.pipeline.job
        async def hold(event: Ev) -> None:
            self.ran.append(event.id)
            await self.released.wait()

    def release(self) -> None:
        self.released.set()


async def assert_room_is_exact(dispatcher: aw.Dispatcher, name: str = "room-check") -> None:
    """Exactly ``max_pending`` more completions are admitted, then ``Overloaded``: no room was
    lost, and none was given back twice. Call it with nothing pending."""
    assert dispatcher.stats().pending == 0
    holding = Holding(name)
    handles = [
        dispatcher.submit_nowait(holding.pipeline, Ev(id=i)) for i in range(dispatcher.max_pending)
    ]
    with pytest.raises(aw.Overloaded):
        dispatcher.submit_nowait(holding.pipeline, Ev(id=dispatcher.max_pending))
    holding.release()
    for handle in handles:
        assert (await handle.wait()).ok


def free_room(dispatcher: aw.Dispatcher) -> int:
    """How much room a dispatcher has free. Once it is closed no submit can show it, so this
    asks its admission books directly (white-box), taking the room and giving it back."""
    host: Any = dispatcher._host
    admission = host.admission
    taken = 0
    while admission.take_room_nowait():
        taken += 1
    for _ in range(taken):
        admission.give_back_room()
    return taken


# -- item 10: a timed-out call keeps nothing ------------------------------------------------


@pytest.mark.parametrize("kind", ["sync job", "async job's ctx.run_sync"])
async def test_a_timed_out_call_does_not_keep_its_event_alive(kind: str) -> None:
    """Once a timed-out blocking call's completion finished and its thread returned, the event
    is garbage, without anyone calling stats() to prune it."""
    gate = Gate()
    pipeline = make_pipeline()
    if kind == "sync job":
        pipeline.job(name="slow", timeout=0.2)(gate.block)
    else:

        @pipeline.job(name="slow", timeout=0.2)
        async def slow(event: Ev, ctx: aw.JobContext) -> None:
            await ctx.run_sync(gate.block, event)

    async with aw.Dispatcher(max_threads=1) as dispatcher:
        event = Ev(id=1, text="x" * 10_000)
        ref = weakref.ref(event)
        handle = dispatcher.submit_nowait(pipeline, event)
        del event
        report = await handle.wait()
        assert report.outcome("slow").status == "timed_out"
        gate.open()
        # With one thread, this call starts only once the timed-out thread has returned and
        # its token is back: the budget has let go of that call by then.
        assert await dispatcher.run_sync(divmod, 7, 2) == (3, 1)
        gc.collect()
        assert ref() is None
        assert handle.done()  # held all along: a handle keeps nothing of its event either


# -- item 11: a finished handle keeps nothing of its event ----------------------------------


async def test_finished_handles_keep_nothing_of_their_events_with_a_journal(
    tmp_path: Path,
) -> None:
    """With a journal, 20 finished handles of events carrying 1 MB each hold well under 20 MB
    (traced memory grows < 5 MB), and every event is garbage."""
    pipeline = make_pipeline("big")
    pipeline.job(name="j")(lambda event: None)
    handles: list[aw.Handle] = []
    refs: list[weakref.ref[Ev]] = []
    async with aw.Dispatcher(journal=tmp_path / "j.db") as dispatcher:
        await (await dispatcher.submit(pipeline, Ev(id=0, text="warm up"))).wait()
        tracemalloc.start()
        try:
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for i in range(1, 21):
                event = Ev(id=i, text=str(i % 10) * 1_000_000)
                refs.append(weakref.ref(event))
                handles.append(await dispatcher.submit(pipeline, event))
                del event
            reports = [await handle.wait() for handle in handles]
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert all(report.ok for report in reports)
        assert all(handle.done() for handle in handles)
        assert grown < 5_000_000, f"20 finished handles hold {grown / 1e6:.1f} MB"
        assert [ref() for ref in refs] == [None] * 20


# -- the room comes back on every refusal path -----------------------------------------------


class Loose(pydantic.BaseModel):
    """An event a journal cannot always keep exactly."""

    id: int
    text: str = ""
    data: Any = None


class Opaque:
    """A value no JSON can hold."""


class Arbitrary(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    id: int
    thing: Opaque | None = None


class OtherModel(pydantic.BaseModel):
    id: int


def refused_before_room(
    dispatcher: aw.Dispatcher, journaled: bool
) -> list[tuple[type[BaseException], Callable[[], object]]]:
    """Calls refused by their checks, each before it may take any room."""
    good = make_pipeline("good")
    good.job(name="j")(lambda event: None)
    bad_key = aw.Pipeline("bad-key", event=Ev, key=lambda e: e.tags)
    bad_key.job(name="j")(lambda event: None)
    gpu = make_pipeline("gpu")
    gpu.job(name="j", lane="gpu")(lambda event: None)
    calls: list[tuple[type[BaseException], Callable[[], object]]] = [
        (aw.InvalidEvent, lambda: dispatcher.submit_nowait(good, OtherModel(id=1))),  # type: ignore[misc]
        (aw.InvalidEvent, lambda: dispatcher.submit_nowait(bad_key, Ev(id=1, tags=["a"]))),
        (pydantic.ValidationError, lambda: dispatcher.submit_nowait(good, {"id": "one"})),
        (aw.UnknownLane, lambda: dispatcher.submit_nowait(gpu, Ev(id=1))),
        (aw.InvalidOption, lambda: dispatcher.submit_nowait(good, Ev(id=1), delay=-1)),
        (aw.InvalidEvent, lambda: dispatcher.submit(good, OtherModel(id=1))),  # type: ignore[misc]
        (pydantic.ValidationError, lambda: dispatcher.submit(good, {"id": "one"})),
        (aw.UnknownLane, lambda: dispatcher.submit(gpu, Ev(id=1))),
        (aw.InvalidOption, lambda: dispatcher.submit(good, Ev(id=1), timeout=-1)),
    ]
    if journaled:
        loose = aw.Pipeline("loose", event=Loose, key=lambda e: e.id)
        loose.job(name="j")(lambda event: None)
        arbitrary = aw.Pipeline("arbitrary", event=Arbitrary, key=lambda e: e.id)
        arbitrary.job(name="j")(lambda event: None)
        calls += [
            (aw.InvalidEvent, lambda: dispatcher.submit_nowait(loose, Loose(id=1, text="\ud800"))),
            (aw.InvalidEvent, lambda: dispatcher.submit(loose, Loose(id=1, data={1, 2}))),
            (aw.InvalidEvent, lambda: dispatcher.submit_nowait(loose, Loose(id=1, data=1e999))),
            (
                aw.InvalidEvent,
                lambda: dispatcher.submit(arbitrary, Arbitrary(id=1, thing=Opaque())),
            ),
        ]
    return calls


async def settle(call: Callable[[], object]) -> None:
    """Call ``call``, awaiting what it returns if it is a coroutine (``submit``)."""
    result = call()
    if isinstance(result, Awaitable):
        await result


@pytest.mark.parametrize("journaled", [False, True], ids=["memory", "journal"])
async def test_events_refused_by_their_checks_take_no_room(tmp_path: Path, journaled: bool) -> None:
    """Wrong models, bad keys, invalid data, unknown lanes, bad options and (with a journal)
    events it cannot keep exactly are refused 3 * max_pending times each: room stays exact."""
    journal = tmp_path / "j.db" if journaled else None
    async with aw.Dispatcher(max_pending=MAX_PENDING, lanes={"llm": 1}, journal=journal) as d:
        for expected, call in refused_before_room(d, journaled):
            for _ in range(REFUSALS):
                with pytest.raises(expected):
                    await settle(call)
        assert d.stats().admitted == 0
        assert d.stats().pending == 0
        await assert_room_is_exact(d)


async def test_an_event_the_journal_cannot_keep_is_refused_naming_the_field(
    tmp_path: Path,
) -> None:
    """With a journal, a lone surrogate, an arbitrary-type value and a set in an Any field are
    each refused with InvalidEvent naming the field, and nothing is admitted."""
    loose = aw.Pipeline("loose", event=Loose, key=lambda e: e.id)
    loose.job(name="j")(lambda event: None)
    arbitrary = aw.Pipeline("arbitrary", event=Arbitrary, key=lambda e: e.id)
    arbitrary.job(name="j")(lambda event: None)
    fix = "or run this pipeline without a journal"
    async with aw.Dispatcher(max_pending=1, journal=tmp_path / "j.db") as dispatcher:
        with pytest.raises(aw.InvalidEvent) as surrogate:
            dispatcher.submit_nowait(loose, Loose(id=1, text="a\ud800"))
        with pytest.raises(aw.InvalidEvent) as opaque:
            await dispatcher.submit(arbitrary, Arbitrary(id=2, thing=Opaque()))
        with pytest.raises(aw.InvalidEvent) as a_set:
            await dispatcher.submit(loose, Loose(id=3, data={1, 2}))
        assert dispatcher.stats().admitted == 0
        report = await dispatcher.run(loose, Loose(id=4, text="fine"))
    assert report.ok
    assert str(surrogate.value).startswith("field Loose.text cannot be written as JSON (")
    assert str(opaque.value).startswith("field Arbitrary.thing cannot be written as JSON (")
    for error in (surrogate.value, opaque.value):
        assert str(error).endswith(
            "); give it a value JSON can hold (text without lone surrogates, a pydantic-typed "
            f"value), {fix}"
        )
    assert str(a_set.value) == (
        "field Loose.data (set becomes list) changes in its JSON round trip (it would not be "
        "the same after a restart); give it a type that JSON keeps exactly (e.g. list[str], not "
        f"Any with a set; finite floats), {fix}"
    )


async def test_submits_that_time_out_give_the_room_back() -> None:
    """With max_pending held, 3 * max_pending submits time out (timeout=0 and > 0) and
    submit_nowait is refused as often; once the holders finish, room is exact."""
    holding = Holding()
    async with aw.Dispatcher(max_pending=MAX_PENDING) as dispatcher:
        held = [dispatcher.submit_nowait(holding.pipeline, Ev(id=i)) for i in range(MAX_PENDING)]
        for n in range(REFUSALS):
            with pytest.raises(aw.Overloaded) as waited:
                await dispatcher.submit(holding.pipeline, Ev(id=100 + n), timeout=0.01 * (n % 2))
            with pytest.raises(aw.Overloaded):
                dispatcher.submit_nowait(holding.pipeline, Ev(id=200 + n))
        assert str(waited.value) == (
            "cannot admit hold:108: no room within 0 s (3 pending, max_pending=3)"
        )
        assert dispatcher.stats().admitted == MAX_PENDING
        holding.release()
        for handle in held:
            assert (await handle.wait()).ok
        await assert_room_is_exact(dispatcher)
    assert sorted(holding.ran) == list(range(MAX_PENDING))


async def test_submits_cancelled_while_waiting_for_room_give_it_back() -> None:
    """3 * max_pending submits waiting for room (and for a max_delayed slot) are cancelled
    with a CancelScope: none is admitted, and room and slots stay exact."""
    holding = Holding()
    admitted: list[aw.Handle] = []
    scopes: list[anyio.CancelScope] = []

    async def cancelled_submit(dispatcher: aw.Dispatcher, n: int, delay: float | None) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            admitted.append(await dispatcher.submit(holding.pipeline, Ev(id=n), delay=delay))

    async with aw.Dispatcher(max_pending=MAX_PENDING, max_delayed=MAX_PENDING) as dispatcher:
        held = [dispatcher.submit_nowait(holding.pipeline, Ev(id=i)) for i in range(MAX_PENDING)]
        later = [
            dispatcher.submit_nowait(holding.pipeline, Ev(id=10 + i), delay=3600)
            for i in range(MAX_PENDING)
        ]
        async with anyio.create_task_group() as group:
            for n in range(REFUSALS):
                group.start_soon(cancelled_submit, dispatcher, 100 + n, None)
                group.start_soon(cancelled_submit, dispatcher, 200 + n, 3600)
            await anyio.wait_all_tasks_blocked()
            assert len(scopes) == 2 * REFUSALS
            for scope in scopes:
                scope.cancel()
        assert admitted == []
        assert all(scope.cancelled_caught for scope in scopes)
        stats = dispatcher.stats()
        assert (stats.admitted, stats.pending, stats.delayed) == (2 * MAX_PENDING, 3, 3)
        holding.release()
        for handle in held:
            assert (await handle.wait()).ok
        await assert_room_is_exact(dispatcher)
        assert dispatcher.stats().delayed == MAX_PENDING
        with pytest.raises(aw.Overloaded):
            dispatcher.submit_nowait(holding.pipeline, Ev(id=99), delay=3600)
    # The delayed ones never started; their slots all came back at the close.
    assert [(await handle.wait()).outcomes[0].status for handle in later] == ["cancelled"] * 3
    assert dispatcher.stats().delayed == 0


async def cancelled_as_room_comes(dispatcher: aw.Dispatcher, name: str) -> list[aw.Handle]:
    """One waiting submit, cancelled in the moment a finishing completion hands it the room;
    returns its handle if it was admitted all the same."""
    holding = Holding(name)
    got: list[aw.Handle] = []
    first = dispatcher.submit_nowait(holding.pipeline, Ev(id=1))
    scope = anyio.CancelScope()

    async def waiter() -> None:
        with scope:
            got.append(await dispatcher.submit(holding.pipeline, Ev(id=2)))

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        holding.release()
        # This task wakes as the first completion resolves, before the waiter it then hands
        # the room to resumes: cancel the waiter right then.
        await first.wait()
        scope.cancel()
    return got


async def test_a_submit_cancelled_as_room_is_handed_to_it_leaves_room_exact() -> None:
    """A waiting submit cancelled in the same moment a finishing completion hands it the room
    either is admitted (and runs) or gives the room back: room stays exact either way."""
    async with aw.Dispatcher(max_pending=1) as dispatcher:
        admitted = 0
        for round_ in range(REFUSALS):
            got = await cancelled_as_room_comes(dispatcher, f"hold{round_}")
            for handle in got:
                assert (await handle.wait()).ok
            admitted += 1 + len(got)
            assert dispatcher.stats().admitted == admitted + round_  # + the room checks
            await assert_room_is_exact(dispatcher, f"check{round_}")


async def test_submits_refused_by_a_drain_give_their_room_back() -> None:
    """3 * max_pending submits waiting for room, and as many waiting for a delayed slot, get
    DispatcherClosed when the drain begins (even as room frees); after the close all room and
    every slot are free."""
    holding = Holding()
    outcomes: list[object] = []

    async def waiting_submit(dispatcher: aw.Dispatcher, n: int, delay: float | None) -> None:
        try:
            outcomes.append(await dispatcher.submit(holding.pipeline, Ev(id=n), delay=delay))
        except aw.DispatcherClosed as error:
            outcomes.append(error)

    async with aw.Dispatcher(max_pending=MAX_PENDING, max_delayed=MAX_PENDING) as dispatcher:
        held = [dispatcher.submit_nowait(holding.pipeline, Ev(id=i)) for i in range(MAX_PENDING)]
        for i in range(MAX_PENDING):
            dispatcher.submit_nowait(holding.pipeline, Ev(id=10 + i), delay=3600)
        async with anyio.create_task_group() as group:
            for n in range(REFUSALS):
                group.start_soon(waiting_submit, dispatcher, 100 + n, None)
                group.start_soon(waiting_submit, dispatcher, 200 + n, 3600)
            await anyio.wait_all_tasks_blocked()
            # Room frees and the drain begins in one moment: a waiter handed room must give it
            # back, the others get none.
            holding.release()
            await held[0].wait()
            await dispatcher.aclose()
    refused = [o for o in outcomes if isinstance(o, aw.DispatcherClosed)]
    late = [o for o in outcomes if isinstance(o, aw.Handle)]
    assert len(refused) + len(late) == 2 * REFUSALS
    assert len(refused) >= REFUSALS  # no slot ever freed for the delayed ones before the drain
    for handle in late:
        assert (await handle.wait()).ok
    assert str(refused[0]) == (
        "cannot accept hold: the dispatcher is draining and admits no new work; submit before "
        "aclose(), or to a new Dispatcher"
    )
    assert dispatcher.stats().delayed == 0
    assert dispatcher.stats().pending == 0
    assert free_room(dispatcher) == MAX_PENDING


async def test_a_submit_waiting_for_a_delayed_slot_is_refused_when_the_drain_begins() -> None:
    """Like one waiting for room, a submit(delay=...) waiting for a max_delayed slot gets
    DispatcherClosed as soon as aclose begins, not only once the drain is over."""
    gate = Gate(limit=50)  # open long after the refusal should have come
    pipeline = make_pipeline()
    pipeline.job(name="block")(gate.block)
    refused: list[aw.DispatcherClosed] = []

    async def waiting_submit(dispatcher: aw.Dispatcher) -> None:
        try:
            await dispatcher.submit(pipeline, Ev(id=3), delay=3600)
        except aw.DispatcherClosed as error:
            refused.append(error)

    async with aw.Dispatcher(max_delayed=1, drain_timeout=60) as dispatcher:
        dispatcher.submit_nowait(pipeline, Ev(id=1))  # keeps the drain going until the gate opens
        dispatcher.submit_nowait(pipeline, Ev(id=2), delay=3600)
        async with anyio.create_task_group() as group:
            group.start_soon(waiting_submit, dispatcher)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(dispatcher.aclose)
            try:
                await wait_until(
                    lambda: bool(refused), "the delayed submit to be refused", limit=20
                )
            finally:
                gate.open()
    assert len(refused) == 1
    assert dispatcher.stats().admitted == 2


# -- a caller cancelled once admitted ---------------------------------------------------------


@pytest.mark.parametrize("journaled", [True, False], ids=["journal", "memory"])
async def test_a_caller_cancelled_right_after_admission_gets_its_handle(
    tmp_path: Path, journaled: bool
) -> None:
    """A job cancels its submitter's scope as soon as it runs (while or after the admission is
    written): submit still returns the handle, the completion finishes once, and the journal
    is left empty."""
    path = tmp_path / "j.db"
    ran: list[int] = []
    scopes: list[anyio.CancelScope] = []
    got: list[aw.Handle] = []
    pipeline = make_pipeline("once")

    @pipeline.job
    async def job(event: Ev) -> None:
        scopes[0].cancel()
        ran.append(event.id)

    async with aw.Dispatcher(journal=path if journaled else None) as dispatcher:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            got.append(await dispatcher.submit(pipeline, Ev(id=1)))
            await anyio.sleep_forever()
        assert scope.cancelled_caught
        [handle] = got
        report = await handle.wait()
    assert report.ok
    assert ran == [1]
    if journaled:
        assert aw.SqliteJournal(path).unfinished() == []


@pytest.mark.parametrize("journaled", [True, False], ids=["journal", "memory"])
async def test_a_caller_cancelled_before_submit_is_consistent(
    tmp_path: Path, journaled: bool
) -> None:
    """A submit made in an already-cancelled scope either admits and returns the handle (the
    work runs once) or raises before admitting anything: never admitted-yet-raised."""
    path = tmp_path / "j.db"
    ran: list[int] = []
    got: list[aw.Handle] = []
    pipeline = make_pipeline("once")

    @pipeline.job
    async def job(event: Ev) -> None:
        ran.append(event.id)

    async with aw.Dispatcher(journal=path if journaled else None) as dispatcher:
        with anyio.CancelScope() as scope:
            scope.cancel()
            got.append(await dispatcher.submit(pipeline, Ev(id=1)))
            await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught
        for handle in got:
            assert (await handle.wait()).ok
        admitted = dispatcher.stats().admitted
    assert (admitted, ran) == ((1, [1]) if got else (0, []))
    if journaled:
        assert aw.SqliteJournal(path).unfinished() == []
