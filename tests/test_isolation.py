"""G2 isolation under adversity: whatever a job raises, ``BaseException`` included, is that job's
failure. It is reported once (``job.failed`` and the Report), siblings and other completions run
on untouched, ``run()`` never raises it, and ``async with`` exits cleanly. A real Ctrl-C still
stops the process.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import selectors
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest
from structlog.typing import EventDict

import afterwork as aw
from afterwork.testing import Gate, wait_until

from .conftest import named
from .helpers import Ev, make_pipeline

T = TypeVar("T")

APP = Path(__file__).parent / "apps" / "ctrl_c.py"
BACKENDS = ["asyncio", "trio"]


class Meltdown(BaseException):
    """An application's own BaseException, which is not an Exception."""


class BadStr(Exception):
    """An exception whose message cannot be computed."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


#: What a job raises, and the error text its outcome must carry.
RAISED = [
    pytest.param(lambda: SystemExit(3), "SystemExit: 3", id="SystemExit"),
    pytest.param(lambda: GeneratorExit("closing"), "GeneratorExit: closing", id="GeneratorExit"),
    pytest.param(lambda: Meltdown("core breach"), "Meltdown: core breach", id="custom"),
    pytest.param(
        lambda: BaseExceptionGroup("g", [SystemExit(1)]),
        "BaseExceptionGroup: g (1 sub-exception)",
        id="BaseExceptionGroup",
    ),
    pytest.param(
        lambda: asyncio.CancelledError("my own"), "CancelledError: my own", id="CancelledError"
    ),
    pytest.param(
        lambda: KeyboardInterrupt("in the job"),
        "KeyboardInterrupt: in the job",
        id="KeyboardInterrupt",
    ),
]

#: Where it is raised: a job in a worker thread, on the loop, a thread an async job borrowed
#: with ctx.run_sync, or a spawned child (sync or async).
PLACES = ["sync job", "async job", "ctx.run_sync", "sync child", "async child"]


@pytest.fixture(autouse=True)
def collect_leftovers(events: list[EventDict]) -> Iterator[None]:
    """After each test, drop the exceptions its log events hold (and the frames behind them)
    and collect: a coroutine that a broken run left unawaited then warns, and fails, in the
    test that caused it rather than in a later one."""
    yield
    for event in events:
        event.pop("exc_info", None)
    gc.collect()


def run_on(backend: str, main: Callable[[], Awaitable[T]]) -> T:
    """``anyio.run(main)``. Whatever escapes it fails the test as an ``AssertionError`` with
    its traceback as text: a ``KeyboardInterrupt`` must not stop the whole pytest session, and
    no frame of the failed run is kept alive, so a coroutine it left unawaited warns (and
    fails) in this test when collected here, not in a later one."""
    try:
        result = anyio.run(main, backend=backend)
    except BaseException as error:
        escaped = "".join(traceback.format_exception(error))
    else:
        gc.collect()
        return result
    gc.collect()
    raise AssertionError(f"the run raised:\n{escaped}")


def raiser(make: Callable[[], BaseException], *, is_async: bool) -> Callable[[Ev], Any]:
    """A job body that raises ``make()``, after a checkpoint when async."""

    def boom(event: Ev) -> None:
        raise make()

    async def aboom(event: Ev) -> None:
        await anyio.lowlevel.checkpoint()
        raise make()

    return aboom if is_async else boom


def add_raiser(pipeline: aw.Pipeline[Ev], make: Callable[[], BaseException], where: str) -> str:
    """Register the raising job (or a parent that spawns it) and return its reported name."""
    body = raiser(make, is_async=where.startswith("async"))
    if where.endswith("job"):
        pipeline.job(name="boom")(body)
        return "boom"
    if where == "ctx.run_sync":

        @pipeline.job
        async def boom(event: Ev, ctx: aw.JobContext) -> None:
            await ctx.run_sync(body, event)

        return "boom"
    if where == "sync child":

        @pipeline.job
        def parent(event: Ev, ctx: aw.JobContext) -> None:
            ctx.spawn(body, event, name="boom")  # from the worker thread

    else:

        @pipeline.job(name="parent")
        async def async_parent(event: Ev, ctx: aw.JobContext) -> None:
            ctx.spawn(body, event, name="boom")

    return "parent/boom"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", PLACES)
@pytest.mark.parametrize(("make", "error"), RAISED)
def test_whatever_a_job_raises_is_its_own_failure(
    backend: str,
    where: str,
    make: Callable[[], BaseException],
    error: str,
    events: list[EventDict],
) -> None:
    """A BaseException from a job is its failure, logged once; blocked siblings, a concurrent
    completion, run() and the async with block all carry on untouched."""
    gate = Gate()
    failed_job = ""

    async def main() -> tuple[aw.Report, aw.Report, aw.Stats]:
        release = anyio.Event()
        awaiting = anyio.Event()
        pipeline = make_pipeline("iso")
        pipeline.job(name="blocked_thread")(gate.block)

        @pipeline.job
        async def blocked_await(event: Ev) -> None:
            awaiting.set()
            await release.wait()

        nonlocal failed_job
        failed_job = add_raiser(pipeline, make, where)
        other = make_pipeline("other")
        other.job(name="fine_sync")(lambda event: None)

        @other.job
        async def fine_async(event: Ev) -> None:
            await anyio.lowlevel.checkpoint()

        reports: dict[str, aw.Report] = {}

        async def run_iso(dispatcher: aw.Dispatcher) -> None:
            reports["iso"] = await dispatcher.run(pipeline, Ev(id=1))

        async with (
            aw.Dispatcher(max_threads=4) as dispatcher,
            anyio.create_task_group() as group,
        ):
            group.start_soon(run_iso, dispatcher)
            await wait_until(
                lambda: bool(named(events, "job.failed")) or "iso" in reports,
                "the job to fail",
            )
            await awaiting.wait()
            await wait_until(lambda: gate.running == 1, "the blocked thread to run")
            # A second completion, submitted while the first one's siblings still block.
            reports["other"] = await dispatcher.run(other, Ev(id=2))
            assert "iso" not in reports, "the siblings were not waited for"
            gate.open()
            release.set()
        return reports["iso"], reports["other"], dispatcher.stats()

    report, other_report, stats = run_on(backend, main)

    outcome = report.outcome(failed_job)
    assert (outcome.status, outcome.attempts, outcome.error) == ("failed", 1, error)
    siblings = {o.job: o.status for o in report.outcomes if o.job != failed_job}
    expected = {"blocked_thread": "succeeded", "blocked_await": "succeeded"}
    if failed_job == "parent/boom":
        expected["parent"] = "succeeded"
    assert siblings == expected
    assert not report.ok
    assert other_report.ok
    assert {o.job: o.status for o in other_report.outcomes} == {
        "fine_sync": "succeeded",
        "fine_async": "succeeded",
    }
    (failure,) = named(events, "job.failed")
    assert (failure["pipeline"], failure["key"], failure["job"]) == ("iso", "1", failed_job)
    assert failure["attempt"] == 1
    assert type(failure["exc_info"]) is type(make())
    assert not named(events, "dispatcher.crashed")
    assert not named(events, "dispatcher.unfinished")
    assert (stats.admitted, stats.completed) == (2, 2)
    assert (stats.failed, stats.succeeded) == (1, len(expected) + 2)
    assert (stats.cancelled, stats.timed_out, stats.retried) == (0, 0, 0)
    assert stats.state == "closed"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("make", "error"), RAISED)
def test_run_returns_a_report_when_every_job_raises_a_base_exception(
    backend: str, make: Callable[[], BaseException], error: str, events: list[EventDict]
) -> None:
    """run() returns the Report even when all of a completion's jobs raise a BaseException,
    and the dispatcher keeps admitting and running work afterwards."""
    pipeline = make_pipeline("all_bad")
    pipeline.job(name="sync_boom")(raiser(make, is_async=False))
    pipeline.job(name="async_boom")(raiser(make, is_async=True))
    good = make_pipeline("good")
    good.job(name="fine")(lambda event: None)

    async def main() -> tuple[list[aw.Report], aw.Report]:
        async with aw.Dispatcher(max_threads=2) as dispatcher:
            bad = [await dispatcher.run(pipeline, Ev(id=i)) for i in range(3)]
            after = await dispatcher.run(good, Ev(id=9))
        return bad, after

    bad, after = run_on(backend, main)
    for report in bad:
        assert sorted((o.job, o.status, o.error) for o in report.outcomes) == [
            ("async_boom", "failed", error),
            ("sync_boom", "failed", error),
        ]
    assert after.ok
    assert len(named(events, "job.failed")) == 6


@pytest.mark.parametrize("opt_in", [False, True], ids=["default", "retry_on=BaseException"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("make", "error"), RAISED)
def test_a_base_exception_is_retried_only_when_the_job_opts_in(
    make: Callable[[], BaseException],
    error: str,
    is_async: bool,
    opt_in: bool,
    events: list[EventDict],
) -> None:
    """A BaseException fails a job with retries at once (retry_on defaults to Exception),
    reported once; with retry_on=BaseException it is retried like any failed attempt."""
    attempts: list[int] = []

    def flaky(event: Ev, ctx: aw.JobContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise make()

    async def async_flaky(event: Ev, ctx: aw.JobContext) -> None:
        await anyio.lowlevel.checkpoint()
        flaky(event, ctx)

    pipeline = make_pipeline("retry")
    options: dict[str, Any] = {"retry_on": BaseException} if opt_in else {}
    pipeline.job(name="flaky", retries=2, backoff=0, **options)(async_flaky if is_async else flaky)

    async def main() -> aw.Report:
        async with aw.Dispatcher() as dispatcher:
            return await dispatcher.run(pipeline, Ev(id=1))

    outcome = run_on("asyncio", main).outcome("flaky")
    if opt_in:
        assert (outcome.status, outcome.attempts, outcome.error) == ("succeeded", 2, None)
        assert attempts == [1, 2]
        assert [e["error"] for e in named(events, "job.retrying")] == [error]
        assert not named(events, "job.failed")
    else:
        assert (outcome.status, outcome.attempts, outcome.error) == ("failed", 1, error)
        assert attempts == [1]
        assert not named(events, "job.retrying")
        assert len(named(events, "job.failed")) == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("make", "error"), RAISED)
def test_a_when_raising_a_base_exception_fails_only_its_job(
    backend: str, make: Callable[[], BaseException], error: str, events: list[EventDict]
) -> None:
    """A `when` predicate that raises a BaseException fails its job (whose body never runs);
    the sibling and the next completion run as usual."""
    ran: list[int] = []
    pipeline = make_pipeline("when")

    def predicate(event: Ev) -> bool:
        raise make()

    @pipeline.job(when=predicate)
    def guarded(event: Ev) -> None:
        ran.append(event.id)

    pipeline.job(name="sibling")(lambda event: ran.append(-event.id))

    async def main() -> list[aw.Report]:
        async with aw.Dispatcher() as dispatcher:
            return [await dispatcher.run(pipeline, Ev(id=i)) for i in (1, 2)]

    reports = run_on(backend, main)
    for report in reports:
        assert report.outcome("guarded").status == "failed"
        assert report.outcome("guarded").error == error
        assert report.outcome("sibling").status == "succeeded"
    assert sorted(ran) == [-2, -1]
    assert [e["job"] for e in named(events, "job.failed")] == ["guarded", "guarded"]


@pytest.mark.parametrize(
    ("make", "error"),
    [p for p in RAISED if p.id in ("SystemExit", "KeyboardInterrupt", "BaseExceptionGroup")],
)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_job_raising_a_base_exception_is_finished_in_the_journal(
    tmp_path: Path,
    make: Callable[[], BaseException],
    error: str,
    is_async: bool,
    events: list[EventDict],
) -> None:
    """With a journal, a completion whose job raises a BaseException finishes and leaves the
    journal; the next start replays nothing, so it cannot crash-loop the service."""
    path = tmp_path / "journal.db"
    runs: list[int] = []
    pipeline = make_pipeline("j")
    body = raiser(make, is_async=is_async)

    @pipeline.job
    async def records(event: Ev) -> None:
        runs.append(event.id)

    pipeline.job(name="boom")(body)

    async def main() -> tuple[aw.Report, aw.Stats]:
        async with aw.Dispatcher(journal=path, pipelines=[pipeline]) as dispatcher:
            report = await dispatcher.run(pipeline, Ev(id=1))
        async with aw.Dispatcher(journal=path, pipelines=[pipeline]) as again:
            await wait_until(lambda: not again.stats().replaying, "the replay to end")
            stats = again.stats()
        return report, stats

    report, restarted = run_on("asyncio", main)
    assert report.outcome("boom").status == "failed"
    assert report.outcome("boom").error == error
    assert report.outcome("records").status == "succeeded"
    assert aw.SqliteJournal(path).unfinished() == []
    assert aw.SqliteJournal(path).quarantined() == []
    assert runs == [1]
    assert (restarted.admitted, restarted.completed) == (0, 0)
    assert len(named(events, "job.failed")) == 1
    assert not named(events, "journal.write_failed")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("make", "error"), RAISED)
def test_a_job_answering_the_drain_with_a_base_exception_is_cancelled(
    backend: str, make: Callable[[], BaseException], error: str, events: list[EventDict]
) -> None:
    """A job that answers the drain deadline's cancellation by raising a BaseException is
    reported cancelled (not failed) and named in dispatcher.unfinished, and the async with
    block still exits cleanly."""

    async def main() -> tuple[aw.Report, aw.Stats]:
        started = anyio.Event()
        pipeline = make_pipeline("drain")

        @pipeline.job
        async def stubborn(event: Ev) -> None:
            started.set()
            try:
                await anyio.sleep_forever()
            except BaseException:
                raise make() from None

        async with aw.Dispatcher(drain_timeout=0) as dispatcher:
            handle = dispatcher.submit_nowait(pipeline, Ev(id=1))
            await started.wait()
        return await handle.wait(), dispatcher.stats()

    report, stats = run_on(backend, main)
    assert report.outcome("stubborn").status == "cancelled"
    assert (stats.cancelled, stats.failed) == (1, 0)
    (unfinished,) = named(events, "dispatcher.unfinished")
    assert unfinished["jobs"] == ["drain:1:stubborn"]
    assert not named(events, "job.failed")
    assert not named(events, "dispatcher.crashed")
    assert not named(events, "dispatcher.close_abandoned")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("make", "error"),
    [p for p in RAISED if p.id in ("SystemExit", "custom", "CancelledError", "KeyboardInterrupt")],
)
def test_an_on_report_raising_a_base_exception_is_logged_and_tears_nothing_down(
    backend: str,
    is_async: bool,
    make: Callable[[], BaseException],
    error: str,
    events: list[EventDict],
) -> None:
    """on_report raising a BaseException (user code, like a job) is logged as
    dispatcher.on_report_failed; the completion still resolves, a completion running beside
    it is not cancelled, later work runs, and the async with block exits cleanly."""

    def hook(report: aw.Report) -> None:
        if report.pipeline == "bad":
            raise make()

    async def async_hook(report: aw.Report) -> None:
        await anyio.lowlevel.checkpoint()
        hook(report)

    async def main() -> tuple[list[aw.Report], aw.Stats]:
        release = anyio.Event()
        waiting = make_pipeline("waiting")

        @waiting.job
        async def waits(event: Ev) -> None:
            await release.wait()

        bad = make_pipeline("bad")
        bad.job(name="fine")(lambda event: None)
        on_report = async_hook if is_async else hook
        async with aw.Dispatcher(on_report=on_report) as dispatcher:
            beside = dispatcher.submit_nowait(waiting, Ev(id=1))
            reports = [await dispatcher.run(bad, Ev(id=2))]
            release.set()
            reports.append(await beside.wait())
            reports.append(await dispatcher.run(bad, Ev(id=3)))
        return reports, dispatcher.stats()

    reports, stats = run_on(backend, main)
    assert [(r.pipeline, r.key, r.ok) for r in reports] == [
        ("bad", "2", True),
        ("waiting", "1", True),
        ("bad", "3", True),
    ]
    assert [(e["pipeline"], e["key"]) for e in named(events, "dispatcher.on_report_failed")] == [
        ("bad", "2"),
        ("bad", "3"),
    ]
    assert not named(events, "dispatcher.crashed")
    assert (stats.completed, stats.succeeded, stats.cancelled) == (3, 3, 0)


# -- a real Ctrl-C -------------------------------------------------------------------------


def read_until(proc: subprocess.Popen[bytes], marker: bytes, limit: float) -> bytes:
    """Read the app's stdout until ``marker``; fail if it ends or ``limit`` s pass first."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + limit
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while marker not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"no {marker!r} from the app within {limit} s: {seen!r}")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"the app ended before {marker!r}: {seen!r}")
            seen += chunk
    return seen


def start_app(backend: str, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(APP), "--backend", backend, "--mode", mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], limit: float) -> tuple[bytes, bytes]:
    """Wait for the app to end; kill it (by its pid) and fail if it does not within ``limit``."""
    try:
        return proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"the app was still running {limit} s later: {out!r} {err[-2000:]!r}"
        ) from None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_real_ctrl_c_still_stops_the_process(backend: str) -> None:
    """SIGINT stops a process whose dispatcher runs a job awaiting forever and a job blocked in
    a thread: the block drains and exits, and KeyboardInterrupt ends the process."""
    proc = start_app(backend, "interrupt")
    try:
        before = read_until(proc, b"ready\n", limit=30)
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc, limit=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, (out, err)
    assert b"KeyboardInterrupt" in err or proc.returncode == -signal.SIGINT, err[-2000:]
    assert (before + out).splitlines() == [b"ready", b"closed"], err[-2000:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_keyboard_interrupt_raised_by_a_job_does_not_stop_the_process(backend: str) -> None:
    """A KeyboardInterrupt raised by job code (thread, loop, child) is that job's failure: the
    process carries on, reports it, and exits normally."""
    proc = start_app(backend, "own")
    try:
        out, err = finish(proc, limit=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert out.decode().splitlines() == [
        "in_thread failed KeyboardInterrupt: from a worker thread",
        "on_loop failed KeyboardInterrupt: from the event loop",
        "parent succeeded None",
        "parent/child failed KeyboardInterrupt: from a child",
        "still running",
        "closed",
    ]


# -- error text that is hard to write --------------------------------------------------------


@pytest.mark.parametrize("journal", [False, True], ids=["no journal", "journal"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_unprintable_and_surrogate_errors_are_reported_and_journaled(
    tmp_path: Path, journal: bool, is_async: bool, events: list[EventDict]
) -> None:
    """A job whose exception's __str__ raises, or whose message holds a lone surrogate, is
    reported failed with escaped, writable text; the journal stores it without a failed
    write and lets the completion go."""
    path = tmp_path / "journal.db"
    pipeline = make_pipeline("text")
    surrogate = b"bad \xff byte".decode("utf-8", "surrogateescape")
    pipeline.job(name="unprintable")(raiser(lambda: BadStr("x"), is_async=is_async))
    pipeline.job(name="surrogate")(raiser(lambda: ValueError(surrogate), is_async=is_async))
    pipeline.job(name="surrogate_base")(raiser(lambda: Meltdown(surrogate), is_async=is_async))
    async with aw.Dispatcher(journal=path if journal else None) as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
        later = await dispatcher.run(pipeline, Ev(id=2))
        stats = dispatcher.stats()
    for r in (report, later):
        assert sorted((o.job, o.status, o.error) for o in r.outcomes) == [
            ("surrogate", "failed", "ValueError: bad \\udcff byte"),
            ("surrogate_base", "failed", "Meltdown: bad \\udcff byte"),
            ("unprintable", "failed", "BadStr: <unprintable BadStr>"),
        ]
        for outcome in r.outcomes:
            assert outcome.error is not None
            outcome.error.encode("utf-8")  # writable text: no lone surrogate left
    assert len(named(events, "job.failed")) == 6
    assert not named(events, "journal.write_failed")
    assert not named(events, "journal.failed")
    assert stats.journal_error is None
    if journal:
        assert aw.SqliteJournal(path).unfinished() == []


class EvilStr(Exception):
    """An exception whose __str__ raises a BaseException."""

    def __str__(self) -> str:
        raise SystemExit("from __str__")


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_an_exception_whose_str_raises_a_base_exception_is_reported_as_itself(
    is_async: bool, events: list[EventDict]
) -> None:
    """An exception whose __str__ raises a BaseException is still reported as that
    exception's failure, once, with a placeholder message; the block exits cleanly."""
    pipeline = make_pipeline("text")
    pipeline.job(name="evil")(raiser(EvilStr, is_async=is_async))
    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
    outcome = report.outcome("evil")
    assert (outcome.status, outcome.error) == ("failed", "EvilStr: <unprintable EvilStr>")
    (failure,) = named(events, "job.failed")
    assert isinstance(failure["exc_info"], EvilStr)


# -- a body that hands back an awaitable did not run -----------------------------------------


async def work(event: Ev, ran: list[int]) -> None:
    ran.append(event.id)


def sync_decorator(fn: Callable[[Ev], Awaitable[None]]) -> Callable[[Ev], Awaitable[None]]:
    """A decorator written for sync functions, put over an async one."""

    @functools.wraps(fn)
    def wrapper(event: Ev) -> Awaitable[None]:
        return fn(event)

    return wrapper


ASYNC_DEF_FIX = (
    "job 'lazy' returned coroutine instead of doing its work; declare 'lazy' with 'async def' "
    "(a sync function returning a coroutine, or a sync decorator over an async one, never "
    "runs its body)"
)


@pytest.mark.parametrize("form", ["lambda", "sync decorator", "sync child"])
async def test_a_sync_job_returning_a_coroutine_fails_without_a_warning(
    form: str, events: list[EventDict]
) -> None:
    """A sync job (or child) that returns a coroutine is failed with InvalidJob saying to
    declare it 'async def'; its body never ran, and no 'never awaited' warning is left."""
    ran: list[int] = []
    pipeline = make_pipeline()
    if form == "lambda":
        pipeline.job(name="lazy")(lambda event: work(event, ran))
    elif form == "sync decorator":

        @pipeline.job(name="lazy")
        @sync_decorator
        async def decorated(event: Ev) -> None:
            ran.append(event.id)

    else:

        @pipeline.job
        async def parent(event: Ev, ctx: aw.JobContext) -> None:
            ctx.spawn(lambda e: work(e, ran), event, name="lazy")

    job = "parent/lazy" if form == "sync child" else "lazy"
    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
    gc.collect()  # an unclosed coroutine would warn now, and warnings are errors here
    outcome = report.outcome(job)
    assert (outcome.status, outcome.attempts) == ("failed", 1)
    assert outcome.error == f"InvalidJob: {ASYNC_DEF_FIX}".replace("'lazy'", repr(job))
    assert ran == []
    (failure,) = named(events, "job.failed")
    assert isinstance(failure["exc_info"], aw.InvalidJob)


async def test_an_async_job_returning_a_coroutine_fails(events: list[EventDict]) -> None:
    """An async job that returns a coroutine instead of awaiting it is failed, not a success,
    and says to await it; the coroutine is closed, so nothing warns."""
    ran: list[int] = []
    pipeline = make_pipeline()

    @pipeline.job
    async def forgets(event: Ev) -> object:
        return work(event, ran)

    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
    gc.collect()
    assert report.outcome("forgets").status == "failed"
    assert report.outcome("forgets").error == (
        "InvalidJob: job 'forgets' returned coroutine instead of doing its work; "
        "await it inside the job ('return await ...')"
    )
    assert ran == []


async def test_a_when_returning_an_awaitable_fails_the_job(events: list[EventDict]) -> None:
    """A `when` that returns an awaitable fails its job (the body never runs) instead of
    counting as true or false; siblings run, and nothing warns."""
    ran: list[int] = []
    pipeline = make_pipeline()

    async def wanted(event: Ev) -> bool:
        ran.append(-event.id)
        return False

    @pipeline.job(when=lambda event: wanted(event))  # type: ignore[arg-type, return-value]
    def guarded(event: Ev) -> None:
        ran.append(event.id)

    pipeline.job(name="sibling")(lambda event: None)
    async with aw.Dispatcher() as dispatcher:
        report = await dispatcher.run(pipeline, Ev(id=1))
    gc.collect()
    assert report.outcome("guarded").status == "failed"
    assert report.outcome("guarded").error == (
        "InvalidJob: job 'guarded': its 'when' returned an awaitable, not a bool; 'when' must "
        "be a plain function of the event, e.g. when=lambda event: not event.reprocess"
    )
    assert report.outcome("sibling").status == "succeeded"
    assert ran == []
    assert len(named(events, "job.failed")) == 1
