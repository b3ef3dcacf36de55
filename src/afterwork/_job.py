"""One job (or child) of a completion, run to its outcome: ``when``, attempts under their lane
and timeout, retries with backoff, parking, and the outcome recorded once.

Isolation (G2): whatever a job raises is that job's failure, ``BaseException`` included
(``SystemExit``, ``GeneratorExit``, a ``KeyboardInterrupt`` or ``CancelledError`` of its own,
a ``BaseExceptionGroup``). Only the dispatcher's own cancellation goes through, and it is told
apart by asking whether a scope around the job has been cancelled, not by the exception's
class, which a job's own code can raise too. A real Ctrl-C never lands here: ``asyncio.run``
turns it into cancelling the main task, and on trio these tasks are protected from
``KeyboardInterrupt`` (see ``_host``), so trio delivers it to the main task instead.
"""

from __future__ import annotations

import functools
import inspect
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
from structlog.typing import FilteringBoundLogger

from ._budget import Lease
from ._context import JobContext
from ._exceptions import InvalidJob, JobTimeout, RetryLater
from ._models import JobOutcome, JobStatus
from ._pipeline import JobSpec

if TYPE_CHECKING:
    from ._completion import Completion

#: Backoff never grows past this, however many retries a job asks for.
MAX_BACKOFF_S = 60.0


def backoff_delay(spec: JobSpec, failed_attempt: int) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random."""
    # The exponent is capped before it is computed: 2.0 ** 1024 would overflow a float.
    step = min(MAX_BACKOFF_S, spec.backoff * 2.0 ** min(failed_attempt - 1, 64))
    return step / 2 + random.uniform(0, step / 2)


def error_text(error: BaseException) -> str:
    """``"ExcType: message"``, always writable text: a lone surrogate in a message (bytes
    decoded with ``surrogateescape``, say) is escaped, or the journal could not store it."""
    try:
        message = str(error)
    except BaseException:  # a __str__ that raises (even SystemExit) is still reported as is
        message = f"<unprintable {type(error).__name__}>"
    text = f"{type(error).__name__}: {message}"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cancelled_by_dispatcher() -> bool:
    """True when a scope around the current task has been cancelled (a drain deadline, the
    dispatcher closing): the one exception a job may not swallow."""
    return anyio.current_effective_deadline() <= anyio.current_time()


async def run_job(
    completion: Completion, spec: JobSpec, args: tuple[object, ...], attempts_before: int
) -> None:
    """Run ``spec`` to its outcome and record it on ``completion``; never raise but for the
    dispatcher's own cancellation."""
    log = completion.runtime.log.bind(
        pipeline=completion.pipeline.name, job=spec.name, key=completion.key
    )
    job = _Job(completion, spec, args, log, attempts_before)
    try:
        await job.run()
    except BaseException as error:
        if not cancelled_by_dispatcher():
            job.fail(error)  # `when` raised, or the lane is unknown
            return
        job.record(JobStatus.CANCELLED, None)
        if isinstance(error, anyio.get_cancelled_exc_class()):
            raise
        # The job swallowed the cancellation and raised something else: the outcome says
        # cancelled, and the scope delivers the cancellation again at the next checkpoint.


class _Job:
    """The state of one job while it runs: its attempts and its clock."""

    def __init__(
        self,
        completion: Completion,
        spec: JobSpec,
        args: tuple[object, ...],
        log: FilteringBoundLogger,
        attempts_before: int,
    ) -> None:
        self.completion = completion
        self.spec = spec
        self.args = args
        self.log = log
        self.attempt = attempts_before
        self.started = anyio.current_time()

    @property
    def duration(self) -> float:
        return anyio.current_time() - self.started

    async def run(self) -> None:
        if self.spec.when is not None and not _wanted(self.spec, self.args[0]):
            self.attempt = 0
            self.record(JobStatus.SKIPPED, None)
            self.log.info("job.skipped", attempt=0)
            return
        while True:
            self.attempt += 1
            try:
                await self.attempt_once()
            except BaseException as error:
                if cancelled_by_dispatcher():
                    raise
                if await self.retry_or_park(error):
                    continue
                return
            self.record(JobStatus.SUCCEEDED, None)
            self.log.debug("job.succeeded", attempt=self.attempt, duration_s=self.rounded)
            return

    @property
    def rounded(self) -> float:
        return round(self.duration, 6)

    async def attempt_once(self) -> None:
        runtime, spec = self.completion.runtime, self.spec
        lease = await runtime.lanes.lease(spec.lane) if spec.lane is not None else None
        ctx = (
            JobContext(
                self.completion, spec.name, self.attempt, self.log.bind(attempt=self.attempt), lease
            )
            if spec.wants_ctx
            else None
        )
        runtime.counters.running += 1
        try:
            call: Callable[..., Any] = (
                spec.fn if ctx is None else functools.partial(spec.fn, ctx=ctx)
            )
            result = await self._call(call, lease)
            _check_result(spec, result)
        finally:
            runtime.counters.running -= 1
            if ctx is not None:
                ctx.close()  # a thread that outlived the attempt can start nothing more
            if lease is not None:
                lease.drop()

    async def _call(self, call: Callable[..., Any], lease: Lease | None) -> object:
        spec = self.spec
        if not spec.is_async:
            label = f"{self.completion.pipeline.name}:{self.completion.key}:{spec.name}"
            return await self.completion.runtime.budget.run_sync(
                call, *self.args, timeout=spec.timeout, lease=lease, label=label
            )
        limit = spec.timeout if spec.timeout is not None else float("inf")
        with anyio.move_on_after(limit) as scope:
            result = await call(*self.args)
        # A job that swallowed its timeout's cancellation and returned was cut short too.
        if scope.cancel_called:
            raise JobTimeout(f"{spec.name} ran past its timeout of {spec.timeout:g} s")
        return result

    async def retry_or_park(self, error: BaseException) -> bool:
        """After a failed attempt: True to try again now; False once the outcome is recorded
        (failed, timed out, or deferred to run again later)."""
        wait = _retry_wait(self.spec, self.attempt, error)
        if wait is None:
            self.fail(error)
            return False
        runtime = self.completion.runtime
        retry_at = datetime.now(UTC) + timedelta(seconds=wait)  # wait <= MAX_WAIT_S: no overflow
        if runtime.delayed.may_park(wait):
            self.record(JobStatus.DEFERRED, error_text(error), retry_at=retry_at)
            self.log.info(
                "job.deferred",
                attempt=self.attempt,
                error=error_text(error),
                delay_s=round(wait, 3),
                retry_at=retry_at.isoformat(),
            )
            return False
        runtime.counters.retried += 1
        self.log.warning(
            "job.retrying", attempt=self.attempt, error=error_text(error), delay_s=round(wait, 3)
        )
        await anyio.sleep(wait)
        return True

    def fail(self, error: BaseException) -> None:
        if isinstance(error, JobTimeout):
            self.record(JobStatus.TIMED_OUT, error_text(error))
            self.log.warning(
                "job.timed_out",
                attempt=self.attempt,
                duration_s=self.rounded,
                timeout_s=self.spec.timeout,
            )
            return
        self.record(JobStatus.FAILED, error_text(error))
        try:
            self.log.error(
                "job.failed", attempt=self.attempt, duration_s=self.rounded, exc_info=error
            )
        except Exception:  # a renderer choking on the job's exception: log it plainly
            self.log.error("job.failed", attempt=self.attempt, error=error_text(error))

    def record(
        self, status: JobStatus, error: str | None, *, retry_at: datetime | None = None
    ) -> None:
        self.completion.record(
            JobOutcome(
                job=self.spec.name,
                status=status,
                attempts=self.attempt,
                duration_s=self.rounded,
                error=error,
                retry_at=retry_at,
            )
        )


def _retry_wait(spec: JobSpec, attempt: int, error: BaseException) -> float | None:
    """Seconds to wait before the next attempt, or None when no retry is left."""
    if attempt > spec.retries:
        return None
    if isinstance(error, RetryLater):
        return error.seconds
    if not isinstance(error, spec.retry_on):
        return None
    return backoff_delay(spec, attempt)


def _wanted(spec: JobSpec, event: object) -> bool:
    assert spec.when is not None
    answer: object = spec.when(event)
    if inspect.isawaitable(answer):
        _discard(answer)
        raise InvalidJob(
            f"job {spec.name!r}: its 'when' returned an awaitable, not a bool; 'when' must "
            "be a plain function of the event, e.g. when=lambda event: not event.reprocess"
        )
    return bool(answer)


def _check_result(spec: JobSpec, result: object) -> None:
    """A body that hands back an awaitable did not run: never report that as a success."""
    if not inspect.isawaitable(result):
        return
    _discard(result)
    fix = (
        "await it inside the job ('return await ...')"
        if spec.is_async
        else f"declare {spec.name!r} with 'async def' (a sync function returning a coroutine, "
        "or a sync decorator over an async one, never runs its body)"
    )
    raise InvalidJob(
        f"job {spec.name!r} returned {type(result).__name__} instead of doing its work; {fix}"
    )


def _discard(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)
    if inspect.iscoroutine(awaitable) and close is not None:
        close()  # never awaited on purpose: close it so it does not warn
