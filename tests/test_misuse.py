"""G10 misuse: every mistake fails where it is made, inside afterwork's exception tree, with a
fix that is valid Python; the wrong loop or thread, late spawns and bad child names included.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

import afterwork as aw
from afterwork import _exceptions
from afterwork.testing import Gate, wait_until

from .helpers import Ev, make_pipeline

# -- the exception tree -----------------------------------------------------------------------

#: Each public exception and the builtin it also subclasses (None: AfterworkError alone).
TREE: dict[str, type[Exception] | None] = {
    "AfterworkError": None,
    "Overloaded": None,
    "DispatcherClosed": RuntimeError,
    "DispatcherNotOpen": RuntimeError,
    "UsageError": RuntimeError,
    "InvalidOption": ValueError,
    "InvalidJob": TypeError,
    "InvalidEvent": ValueError,
    "DuplicateJob": ValueError,
    "UnknownLane": LookupError,
    "JournalError": None,
    "RetryLater": None,
}


def documented_tree() -> dict[str, str]:
    """The hierarchy drawn in ``afterwork._exceptions``' docstring: name -> builtin or ''."""
    assert _exceptions.__doc__ is not None
    return dict(re.findall(r"[├└]── (\w+)(?: \((\w+)\))?", _exceptions.__doc__))


def test_every_public_exception_sits_in_the_documented_tree() -> None:
    """Each exception in afterwork.__all__ is an AfterworkError and exactly the builtin the
    documented tree gives it; the tree, the code and this test agree."""
    exported = {
        name: value
        for name in aw.__all__
        if isinstance(value := getattr(aw, name), type) and issubclass(value, BaseException)
    }
    documented = documented_tree()
    assert set(exported) == set(TREE)
    assert set(documented) == set(TREE) | {"JobTimeout"}  # JobTimeout is internal
    for name, cls in exported.items():
        builtin = TREE[name]
        assert documented[name] == (builtin.__name__ if builtin is not None else ""), name
        if name == "AfterworkError":
            assert cls.__bases__ == (Exception,)
            continue
        assert issubclass(cls, aw.AfterworkError), name
        expected = (aw.AfterworkError,) if builtin is None else (aw.AfterworkError, builtin)
        assert cls.__bases__ == expected, name
    assert _exceptions.JobTimeout.__bases__ == (aw.AfterworkError, TimeoutError)
    assert documented["JobTimeout"] == "TimeoutError"


async def test_lifecycle_and_registration_misuse_raise_the_fitting_subclass() -> None:
    """Re-entering a dispatcher is a UsageError (RuntimeError); register(42) an InvalidOption
    (ValueError); a second pipeline of one name a DuplicateJob (ValueError)."""
    first, second = make_pipeline("orders"), make_pipeline("orders")
    dispatcher = aw.Dispatcher(pipelines=[first])
    dispatcher.register(first)  # the same pipeline again is fine
    with pytest.raises(aw.InvalidOption) as bad:
        dispatcher.register(42)  # type: ignore[arg-type]
    assert (
        str(bad.value)
        == "register() takes Pipeline objects, got 42; e.g. dispatcher.register(pipeline)"
    )
    assert isinstance(bad.value, ValueError)
    with pytest.raises(aw.DuplicateJob) as duplicate:
        dispatcher.register(second)
    assert str(duplicate.value) == (
        "another pipeline named 'orders' is already registered; pipeline names must be unique "
        "within a dispatcher"
    )
    assert isinstance(duplicate.value, ValueError)
    with pytest.raises(aw.DuplicateJob):
        aw.Dispatcher(pipelines=[first, second])
    with pytest.raises(aw.InvalidOption):
        aw.Dispatcher(pipelines=[first, "orders"])  # type: ignore[list-item]

    async with dispatcher:
        with pytest.raises(aw.UsageError) as nested:
            async with dispatcher:
                pass
        assert str(nested.value) == (
            "this Dispatcher is open and cannot be entered again; create a new Dispatcher for "
            "each 'async with'"
        )
        assert isinstance(nested.value, RuntimeError)
        assert dispatcher.state is aw.DispatcherState.OPEN  # the failed entry changed nothing
        report = await dispatcher.run(first, Ev(id=1))
    assert report.ok
    with pytest.raises(aw.UsageError) as closed:
        await dispatcher.__aenter__()
    assert isinstance(closed.value, RuntimeError)


# -- fix hints --------------------------------------------------------------------------------


def hints_in(message: str) -> list[str]:
    """Every fix hint: the text after each 'e.g. ', up to ', or' or the end."""
    return [part.split(", or")[0] for part in message.split("e.g. ")[1:]]


def assert_valid_python(hint: str) -> None:
    """The hint compiles as a Python expression: a decorator is '@' and an expression, a
    'raise' hint raises an expression, and 'name=value' is a keyword argument."""
    expression = hint
    if hint.startswith("@"):
        expression = hint[1:]
    elif hint.startswith("raise "):
        expression = hint.removeprefix("raise ")
    elif re.match(r"^\w+=", hint):
        expression = f"f({hint})"
    try:
        compile(expression, "<fix hint>", "eval")
    except SyntaxError as error:
        raise AssertionError(f"fix hint {hint!r} is not valid Python: {error}") from None


def check_fix_works(hint: str) -> None:
    """A hint that builds something (a Dispatcher, a job, a RetryLater, a journal, a
    registration) must build it without error once pasted."""
    pipeline = make_pipeline("hint")
    namespace: dict[str, Any] = {
        "Dispatcher": aw.Dispatcher,
        "RetryLater": aw.RetryLater,
        "SqliteJournal": aw.SqliteJournal,
        "path": "var/afterwork.db",
        "pipeline": pipeline,
        "dispatcher": aw.Dispatcher(),
    }
    builds = ("Dispatcher(", "@pipeline.job(", "raise RetryLater(", "SqliteJournal(")
    if hint.startswith(builds) or hint == "dispatcher.register(pipeline)":
        made = eval(hint.lstrip("@").removeprefix("raise "), namespace)
        if hint.startswith("@"):
            made(lambda event: None)
            assert list(pipeline.jobs), hint


def raising(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except Exception as error:
        return error
    raise AssertionError("expected an error")


async def async_job(event: Ev) -> None:
    pass


async def async_when(event: Ev) -> bool:
    return True


def ctx_first(ctx: aw.JobContext, event: Ev) -> None:
    pass


BAD_SECONDS: list[Any] = [math.nan, math.inf, -1, True, "5"]


def register_job(name: str, options: dict[str, Any]) -> None:
    make_pipeline().job(name=name, **options)(async_job)


def sync_misuse() -> list[BaseException]:
    """One error per misuse that needs no event loop."""
    errors: list[BaseException] = []
    bad_dispatchers: list[dict[str, Any]] = [
        {"max_threads": 0},
        {"max_threads": True},
        {"max_threads": 2.5},
        {"max_threads": "5"},
        {"max_pending": 0},
        {"max_active": 0},
        {"max_delayed": -1},
        *({"park_after": v} for v in BAD_SECONDS),
        *({"drain_timeout": v} for v in BAD_SECONDS),
        {"lanes": [("llm", 6)]},
        {"lanes": {"": 1}},
        {"lanes": {"a/b": 1}},
        {"lanes": {5: 1}},
        {"lanes": {"llm": 0}},
        {"lanes": {"llm": True}},
        {"lanes": {"it's": 0}},
        {"journal": 42},
        {"on_report": 42},
    ]
    calls: list[Callable[[], object]] = [
        functools.partial(aw.Dispatcher, **kwargs) for kwargs in bad_dispatchers
    ]
    for kwargs in ({"retention_s": -1}, {"retention_s": math.nan}, {"max_recoveries": 0}):
        calls.append(functools.partial(aw.SqliteJournal, "j.db", **kwargs))
    bad_jobs: list[dict[str, Any]] = [
        *({"timeout": v} for v in [*BAD_SECONDS, 0]),
        {"retries": -1},
        {"retries": True},
        {"retries": 1.5},
        *({"backoff": v} for v in BAD_SECONDS),
        {"lane": ""},
        {"lane": "a/b"},
        {"lane": 5},
    ]
    for name in ("j", "it's"):
        calls.extend(functools.partial(register_job, name, options) for options in bad_jobs)
    calls.append(functools.partial(register_job, "w", {"when": async_when}))
    calls.append(functools.partial(make_pipeline().job, ctx_first))
    calls.append(functools.partial(aw.Pipeline, "", event=Ev, key=str))
    calls.append(functools.partial(aw.Pipeline, "x", event=dict, key=str))  # type: ignore[type-var]
    calls.extend(functools.partial(aw.RetryLater, seconds) for seconds in BAD_SECONDS)
    calls.append(functools.partial(aw.Dispatcher().register, 42))  # type: ignore[arg-type]
    errors.extend(raising(call) for call in calls)
    return errors


def test_every_fix_hint_for_options_is_valid_python_that_works() -> None:
    """Bad dispatcher, journal, job and pipeline options and bad RetryLater seconds each raise
    InvalidOption or InvalidJob whose 'e.g.' hint is valid Python, and builds when pasted."""
    errors = sync_misuse()
    broken: list[str] = []
    for error in errors:
        assert isinstance(error, aw.InvalidOption | aw.InvalidJob), repr(error)
        message = str(error)
        assert "e.g. " in message, message
        for hint in hints_in(message):
            try:
                assert_valid_python(hint)
                check_fix_works(hint)
            except Exception as problem:
                broken.append(f"{message}\n  -> {problem!r}")
    assert broken == []
    quoted = 'lanes["it\'s"] must be an int >= 1, got 0; e.g. Dispatcher(lanes={"it\'s": 6})'
    assert quoted in [str(e) for e in errors]


async def test_every_fix_hint_at_submit_is_valid_python_and_nothing_is_admitted() -> None:
    """A bad submit timeout or delay (nan, inf, -1, True, '5'), a non-pipeline and an unknown
    lane are refused with a hint that is valid Python; the submit hints work when pasted."""
    pipeline = make_pipeline()
    pipeline.job(name="j")(async_job)
    gpu, quoted = make_pipeline("gpu"), make_pipeline("quoted")
    gpu.job(name="j", lane="gpu")(async_job)
    quoted.job(name="j", lane="it's")(async_job)
    errors: list[BaseException] = []
    async with aw.Dispatcher(lanes={"llm": 2}) as dispatcher:
        calls: list[Callable[[], Awaitable[object]]] = []
        for value in BAD_SECONDS:
            calls.append(functools.partial(dispatcher.submit, pipeline, Ev(id=1), timeout=value))
            calls.append(functools.partial(dispatcher.submit, pipeline, Ev(id=1), delay=value))
            calls.append(functools.partial(dispatcher.run, pipeline, Ev(id=1), timeout=value))
        calls.append(functools.partial(dispatcher.submit, 42, Ev(id=1)))  # type: ignore[arg-type]
        calls.append(functools.partial(dispatcher.submit, gpu, Ev(id=1)))
        calls.append(functools.partial(dispatcher.submit, quoted, Ev(id=1)))
        for call in calls:
            with pytest.raises(aw.AfterworkError) as info:
                await call()
            errors.append(info.value)
        for value in BAD_SECONDS:
            with pytest.raises(aw.InvalidOption) as nowait:
                dispatcher.submit_nowait(pipeline, Ev(id=1), delay=value)
            errors.append(nowait.value)
        assert dispatcher.stats().admitted == 0
        assert dispatcher.stats().delayed == 0

        hints: set[str] = set()
        for error in errors:
            assert "e.g. " in str(error), str(error)
            hints.update(hints_in(str(error)))
        for hint in sorted(hints):
            assert_valid_python(hint)
            if hint.startswith("dispatcher.submit("):
                # Pasted as written, with the names it uses: it admits the event.
                namespace = {"dispatcher": dispatcher, "pipeline": pipeline, "event": Ev(id=7)}
                handle = await eval(hint, namespace)
                assert isinstance(handle, aw.Handle)
            check_fix_works(hint)
        # The three submit hints: plain, with timeout=0 and with delay=30.
        assert dispatcher.stats().admitted == 3

    assert {type(e) for e in errors} == {aw.InvalidOption, aw.UnknownLane}
    assert any('e.g. Dispatcher(lanes={"it\'s": 6})' in str(e) for e in errors)


async def test_a_nan_timeout_and_a_negative_delay_have_exact_messages() -> None:
    """submit(timeout=nan) and submit(delay=-1) raise InvalidOption naming the option, the value
    and the fix, before anything is admitted."""
    pipeline = make_pipeline()
    pipeline.job(name="j")(async_job)
    async with aw.Dispatcher() as dispatcher:
        with pytest.raises(aw.InvalidOption) as timeout:
            await dispatcher.submit(pipeline, Ev(id=1), timeout=math.nan)
        with pytest.raises(aw.InvalidOption) as delay:
            await dispatcher.submit(pipeline, Ev(id=1), delay=-1)
        with pytest.raises(aw.InvalidOption) as nowait:
            dispatcher.submit_nowait(pipeline, Ev(id=1), delay=-1)
        assert dispatcher.stats().admitted == 0
        assert dispatcher.unfinished(pipeline, "1") == []
    assert str(timeout.value) == (
        "submit timeout must be a finite number of seconds >= 0, got nan; "
        "e.g. dispatcher.submit(pipeline, event, timeout=0)"
    )
    assert str(delay.value) == (
        "submit delay must be a finite number of seconds >= 0, got -1; "
        "e.g. dispatcher.submit(pipeline, event, delay=30)"
    )
    assert str(nowait.value) == str(delay.value)
    assert isinstance(timeout.value, ValueError)


# -- the wrong loop, the wrong thread ---------------------------------------------------------


def outside(action: str) -> str:
    return (
        f"{action} was called outside the event loop this Dispatcher runs on (another loop, or "
        "a thread that is not the loop's); a Dispatcher lives on the loop that entered it: from "
        "a worker thread use anyio.from_thread.run(...), or give each event loop a Dispatcher "
        "of its own"
    )


class DispatcherInAnotherLoop:
    """A dispatcher opened by an event loop that runs in a thread of its own, until released;
    then that loop runs one completion of its own and closes the dispatcher."""

    def __init__(self, pipeline: aw.Pipeline[Ev], backend: str = "asyncio") -> None:
        self.pipeline = pipeline
        self.backend = backend
        self.opened = threading.Event()
        self.release = threading.Event()
        self.dispatcher: aw.Dispatcher | None = None
        self.report: aw.Report | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="other-loop", daemon=True)

    def _run(self) -> None:
        try:
            anyio.run(self._main, backend=self.backend)
        except BaseException as error:  # handed to the test
            self.error = error
        finally:
            self.opened.set()

    async def _main(self) -> None:
        async with aw.Dispatcher() as dispatcher:
            self.dispatcher = dispatcher
            self.opened.set()
            await anyio.to_thread.run_sync(self.release.wait, 30.0)
            self.report = await dispatcher.run(self.pipeline, Ev(id=99))


async def test_a_dispatcher_refuses_calls_from_another_event_loop() -> None:
    """submit, submit_nowait, run, run_sync and aclose from another loop raise UsageError naming
    the rule; nothing is admitted, the dispatcher stays open, and its own loop closes it."""
    ran: list[int] = []
    pipeline = make_pipeline()
    pipeline.job(name="j")(lambda event: ran.append(event.id))
    other = DispatcherInAnotherLoop(pipeline)
    other.thread.start()
    try:
        assert await anyio.to_thread.run_sync(other.opened.wait, 30.0)
        dispatcher = other.dispatcher
        assert dispatcher is not None, other.error
        calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("submit", lambda: dispatcher.submit(pipeline, Ev(id=1))),
            ("submit", lambda: dispatcher.submit(pipeline, Ev(id=2), timeout=0)),
            ("submit", lambda: dispatcher.submit(pipeline, Ev(id=3), delay=1)),
            ("submit", lambda: dispatcher.run(pipeline, Ev(id=4))),
            ("run_sync", lambda: dispatcher.run_sync(divmod, 7, 2)),
            ("aclose", dispatcher.aclose),
        ]
        for action, call in calls:
            with pytest.raises(aw.UsageError) as info:
                await call()
            assert str(info.value) == outside(action)
        with pytest.raises(aw.UsageError) as nowait:
            dispatcher.submit_nowait(pipeline, Ev(id=5))
        assert str(nowait.value) == outside("submit")
        assert isinstance(nowait.value, RuntimeError)
        assert dispatcher.state is aw.DispatcherState.OPEN  # aclose from elsewhere did nothing
        assert dispatcher.stats().admitted == 0
        assert dispatcher.stats().delayed == 0
    finally:
        other.release.set()
        await anyio.to_thread.run_sync(other.thread.join, 30.0)
    assert not other.thread.is_alive()
    assert other.error is None
    assert other.report is not None
    assert other.report.ok
    assert ran == [99]
    assert dispatcher.stats().state is aw.DispatcherState.CLOSED
    assert dispatcher.stats().admitted == 1


async def test_a_dispatcher_refuses_calls_from_threads_of_its_own_loop() -> None:
    """submit_nowait from a worker thread of the dispatcher's loop, or from a sync job's own
    thread, raises UsageError and admits nothing; anyio.from_thread, as the message says, works."""
    ran: list[int] = []
    from_job: list[str] = []
    handles: list[aw.Handle] = []
    opened: list[aw.Dispatcher] = []
    pipeline = make_pipeline()

    @pipeline.job
    def job(event: Ev) -> None:
        ran.append(event.id)
        if event.id == 10:
            try:
                opened[0].submit_nowait(pipeline, Ev(id=11))
            except aw.UsageError as error:
                from_job.append(str(error))
            handles.append(anyio.from_thread.run_sync(opened[0].submit_nowait, pipeline, Ev(id=12)))

    def from_worker(dispatcher: aw.Dispatcher) -> str:
        with pytest.raises(aw.UsageError) as info:
            dispatcher.submit_nowait(pipeline, Ev(id=1))
        return str(info.value)

    async with aw.Dispatcher() as dispatcher:
        opened.append(dispatcher)
        assert await anyio.to_thread.run_sync(from_worker, dispatcher) == outside("submit")
        assert dispatcher.stats().admitted == 0
        assert dispatcher.unfinished(pipeline, "1") == []
        handle = await anyio.to_thread.run_sync(
            lambda: anyio.from_thread.run_sync(dispatcher.submit_nowait, pipeline, Ev(id=2))
        )
        assert (await handle.wait()).ok

        assert (await dispatcher.run(pipeline, Ev(id=10))).ok
        assert from_job == [outside("submit")]
        assert (await handles[0].wait()).ok
        assert dispatcher.stats().admitted == 3
    assert sorted(ran) == [2, 10, 12]


def test_a_trio_dispatcher_refuses_calls_from_other_threads_and_loops() -> None:
    """On trio, submit_nowait from a worker thread, and aclose or submit from an asyncio loop
    in that thread, raise UsageError; nothing is admitted and the dispatcher works on."""
    pipeline = make_pipeline()
    pipeline.job(name="j")(async_job)

    async def main() -> tuple[list[tuple[str, str]], aw.DispatcherState, int, aw.Report]:
        async with aw.Dispatcher() as dispatcher:

            def from_worker() -> list[tuple[str, str]]:
                refused: list[tuple[str, str]] = []
                calls: list[tuple[str, Callable[[], object]]] = [
                    ("submit", lambda: dispatcher.submit_nowait(pipeline, Ev(id=1))),
                    ("aclose", lambda: anyio.run(dispatcher.aclose)),
                    ("submit", lambda: anyio.run(dispatcher.submit, pipeline, Ev(id=2))),
                ]
                for action, call in calls:
                    try:
                        call()
                    except aw.UsageError as error:
                        refused.append((action, str(error)))
                return refused

            refused = await anyio.to_thread.run_sync(from_worker)
            state, admitted = dispatcher.state, dispatcher.stats().admitted
            report = await dispatcher.run(pipeline, Ev(id=3))
        return refused, state, admitted, report

    refused, state, admitted, report = anyio.run(main, backend="trio")
    assert refused == [(action, outside(action)) for action in ("submit", "aclose", "submit")]
    assert (state, admitted) == (aw.DispatcherState.OPEN, 0)
    assert report.ok


# -- JobContext from threads and after its attempt --------------------------------------------


async def test_ctx_spawn_works_from_a_helper_thread_a_job_started() -> None:
    """A helper thread started by a sync job, or by an async job, can spawn children."""
    ran: list[str] = []
    errors: list[BaseException] = []
    pipeline = make_pipeline()

    def child(who: str) -> None:
        ran.append(who)

    def spawn_from_helper(ctx: aw.JobContext, who: str) -> threading.Thread:
        def helper() -> None:
            try:
                ctx.spawn(child, who, name="from-helper")
            except BaseException as error:  # handed to the test
                errors.append(error)

        thread = threading.Thread(target=helper)
        thread.start()
        return thread

    @pipeline.job
    def sync_parent(event: Ev, ctx: aw.JobContext) -> None:
        spawn_from_helper(ctx, "sync").join(30)

    @pipeline.job
    async def async_parent(event: Ev, ctx: aw.JobContext) -> None:
        await anyio.to_thread.run_sync(spawn_from_helper(ctx, "async").join, 30.0)

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
    assert errors == []
    assert report.ok
    assert sorted(o.job for o in report.outcomes) == [
        "async_parent",
        "async_parent/from-helper",
        "sync_parent",
        "sync_parent/from-helper",
    ]
    assert sorted(ran) == ["async", "sync"]


async def test_a_context_whose_attempt_ended_starts_nothing() -> None:
    """ctx.spawn and ctx.run_sync on a context kept after its job returned raise UsageError,
    while the completion still runs and after it finished; nothing is started."""
    kept: list[aw.JobContext] = []
    calls: list[int] = []
    hold = anyio.Event()
    pipeline = make_pipeline()

    def child(n: int) -> None:
        calls.append(n)

    @pipeline.job
    async def quick(event: Ev, ctx: aw.JobContext) -> None:
        kept.append(ctx)

    @pipeline.job
    async def slow(event: Ev) -> None:
        await hold.wait()

    ended = (
        "job 'quick' of p:1 called {} after its attempt 1 ended (it returned, failed or ran past "
        "its timeout); nothing was started: a job may start work only while it runs"
    )
    async with aw.Dispatcher() as dispatcher:
        handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
        await wait_until(lambda: bool(kept) and not kept[0].is_open, "quick's attempt to end")
        ctx = kept[0]
        with pytest.raises(aw.UsageError) as spawn:
            ctx.spawn(child, 1, name="late")
        assert str(spawn.value) == ended.format("spawn")
        with pytest.raises(aw.UsageError) as run_sync:
            await ctx.run_sync(child, 2)
        assert str(run_sync.value) == ended.format("run_sync")
        assert not handle.done()
        hold.set()
        report = await handle.wait()

        with pytest.raises(aw.UsageError) as finished:
            ctx.spawn(child, 3, name="later")
        assert str(finished.value) == (
            "job 'quick' of p:1 spawned a child after the completion finished; the child was "
            "not started"
        )
        with pytest.raises(aw.UsageError) as run_after:
            await ctx.run_sync(child, 4)
        assert str(run_after.value) == ended.format("run_sync")
        assert dispatcher.stats().threads_busy == 0
    assert calls == []
    assert sorted(o.job for o in report.outcomes) == ["quick", "slow"]
    assert report.ok


async def test_a_timed_out_jobs_thread_cannot_spawn() -> None:
    """A sync job whose thread outlives its timeout gets UsageError from ctx.spawn and the
    child never runs, whether its completion is still running or has finished."""
    gate = Gate()
    late: list[BaseException] = []
    ran: list[int] = []
    hold = anyio.Event()
    pipeline = make_pipeline()

    def child(n: int) -> None:
        ran.append(n)

    @pipeline.job(timeout=0.2)
    def slow(event: Ev, ctx: aw.JobContext) -> None:
        gate.block()
        try:
            ctx.spawn(child, event.id, name="late")
        except BaseException as error:  # handed to the test
            late.append(error)

    @pipeline.job
    async def holds_the_completion_open(event: Ev) -> None:
        await hold.wait()

    async with aw.Dispatcher() as dispatcher:
        handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
        await wait_until(lambda: dispatcher.stats().timed_out == 1, "slow to time out")
        gate.open()
        await wait_until(lambda: bool(late), "the late spawn")
        hold.set()
        report = await handle.wait()
    [error] = late
    assert isinstance(error, aw.UsageError)
    assert str(error) == (
        "job 'slow' of p:1 called spawn after its attempt 1 ended (it returned, failed or ran "
        "past its timeout); nothing was started: a job may start work only while it runs"
    )
    assert ran == []
    assert {o.job: o.status for o in report.outcomes} == {
        "slow": "timed_out",
        "holds_the_completion_open": "succeeded",
    }


# -- spawning ---------------------------------------------------------------------------------


async def test_one_job_spawns_sixteen_thousand_children() -> None:
    """A parent spawning 16,000 children (each spawn O(1)) completes; every child runs once."""
    count = 16_000
    ran: list[int] = []
    pipeline = make_pipeline()

    async def child(n: int) -> None:
        ran.append(n)

    @pipeline.job
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        for n in range(count):
            ctx.spawn(child, n, name=f"c{n}")

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
    assert report.ok
    assert len(report.outcomes) == count + 1
    assert sorted(ran) == list(range(count))


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a/b", "a name without '/' (it separates a parent job from its children)"),
        ("", "a non-empty str"),
    ],
)
async def test_a_child_name_with_a_slash_or_empty_fails_the_parent(name: str, problem: str) -> None:
    """ctx.spawn(..., name='a/b' or '') raises InvalidOption (a ValueError); the child never
    starts and the parent fails with that message."""
    caught: list[BaseException] = []
    ran: list[int] = []
    pipeline = make_pipeline()

    def child(n: int) -> None:
        ran.append(n)

    @pipeline.job
    async def parent(event: Ev, ctx: aw.JobContext) -> None:
        try:
            ctx.spawn(child, 1, name=name)
        except BaseException as error:
            caught.append(error)
            raise

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
    message = (
        f"a child name of job 'parent' must be {problem}, got {name!r}; pass "
        "ctx.spawn(fn, *args, name='persona-1'), a name without '/'"
    )
    [error] = caught
    assert isinstance(error, aw.InvalidOption)
    assert isinstance(error, ValueError)
    assert str(error) == message
    [outcome] = report.outcomes
    assert (outcome.job, outcome.status, outcome.error) == (
        "parent",
        "failed",
        f"InvalidOption: {message}",
    )
    assert ran == []
