"""Pipelines: an event model, a key function, and the jobs that run for each event."""

from __future__ import annotations

import inspect
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel

from . import _options
from ._exceptions import DuplicateJob, InvalidEvent, InvalidJob, InvalidOption

E = TypeVar("E", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

#: The longest key an event may have: it is part of every idempotency key.
MAX_KEY_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One registered job and its options, as ``Pipeline.jobs`` shows them."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    wants_ctx: bool
    timeout: float | None
    retries: int
    backoff: float
    #: The exceptions retried with backoff (``RetryLater`` is always honoured).
    retry_on: tuple[type[BaseException], ...]
    lane: str | None
    when: Callable[[Any], bool] | None


def callable_name(fn: object) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _call_target(fn: object) -> object:
    # A callable object is judged by its __call__ method; functions and partials by themselves
    # (inspect's predicates already look through functools.partial).
    return fn if inspect.isroutine(fn) or not callable(fn) else type(fn).__call__


def is_async_callable(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(_call_target(fn))


def _check_not_generator(fn: object, what: str) -> None:
    target = _call_target(fn)
    for test, kind in (
        (inspect.isasyncgenfunction, "an async generator function"),
        (inspect.isgeneratorfunction, "a generator function"),
    ):
        if test(fn) or test(target):
            raise InvalidJob(
                f"{what} {callable_name(fn)} is {kind}: calling it only creates a generator, "
                "so its body would never run; make it a plain 'def' or 'async def' that "
                "does the work (no 'yield')"
            )


def check_callable(fn: object, *, what: str, n_args: int) -> bool:
    """Check that ``fn`` can be called with ``n_args`` positional arguments, plus ``ctx=``
    if it declares a ``ctx`` parameter. Return whether it wants ``ctx``."""
    if not callable(fn):
        raise InvalidJob(
            f"{what} must be a function (sync or async), got {fn!r} of type "
            f"{type(fn).__name__}; pass the function itself, not the result of calling it"
        )
    _check_not_generator(fn, what)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust the caller
        return False
    placeholders = [object()] * n_args
    wants_ctx = "ctx" in signature.parameters
    if wants_ctx:
        try:
            signature.bind(*placeholders, ctx=object())
        except TypeError:
            raise InvalidJob(
                f"{what} {callable_name(fn)}{signature} declares a 'ctx' parameter that "
                f"cannot be passed by keyword after {n_args} positional argument(s); make "
                "'ctx' an ordinary parameter after the others, e.g. (event, ctx)"
            ) from None
        return True
    try:
        signature.bind(*placeholders)
    except TypeError:
        raise InvalidJob(
            f"{what} {callable_name(fn)}{signature} cannot be called with {n_args} "
            "positional argument(s); a job takes the event, and optionally 'ctx'"
        ) from None
    return False


def _check_when(when: object, job: str) -> None:
    check_callable(when, what=f"job {job!r} when", n_args=1)
    if is_async_callable(when):
        raise InvalidJob(
            f"job {job!r}: when={callable_name(when)} is an async function, so calling it "
            "gives a coroutine, never a bool; 'when' must be a plain function of the event, "
            "e.g. when=lambda event: not event.reprocess"
        )


def job_spec(
    fn: Callable[..., Any],
    *,
    name: object,
    timeout: object,
    retries: object,
    backoff: object,
    lane: object,
    when: object,
    retry_on: object = (Exception,),
) -> JobSpec:
    """Check a job's function and options and return its spec; raise where they are wrong."""
    job_name = _options.name(
        "a job name", name, "pass @pipeline.job(name='save_vector'), a name without '/'"
    )
    fix = f"e.g. @pipeline.job(name={job_name!r}, "
    wants_ctx = check_callable(fn, what=f"job {job_name!r}", n_args=1)
    if when is not None:
        _check_when(when, job_name)
    return JobSpec(
        name=job_name,
        fn=fn,
        is_async=is_async_callable(fn),
        wants_ctx=wants_ctx,
        timeout=_options.optional_seconds(
            f"job {job_name!r}: timeout", timeout, fix + "timeout=30), or timeout=None"
        ),
        retries=_options.count(f"job {job_name!r}: retries", retries, 0, fix + "retries=2)"),
        backoff=_options.seconds(f"job {job_name!r}: backoff", backoff, fix + "backoff=0.5)"),
        retry_on=_retry_on(job_name, retry_on, fix),
        lane=None
        if lane is None
        else _options.name(f"job {job_name!r}: lane", lane, fix + "lane='llm')"),
        when=when,  # type: ignore[arg-type]
    )


def _retry_on(job: str, value: object, fix: str) -> tuple[type[BaseException], ...]:
    kinds = value if isinstance(value, tuple) else (value,)
    if not kinds or not all(isinstance(k, type) and issubclass(k, BaseException) for k in kinds):
        raise InvalidOption(
            f"job {job!r}: retry_on must be an exception class or a tuple of them, got "
            f"{value!r}; {fix}retry_on=(ConnectionError, TimeoutError))"
        )
    return kinds


def _key_problem(key: object) -> str | None:
    if isinstance(key, bool) or not isinstance(key, str | int):
        return f"{key!r} of type {type(key).__name__}; it must return a str (or an int)"
    text = str(key)
    if not text or len(text) > MAX_KEY_LENGTH:
        return f"{text!r}; a key must be 1 to {MAX_KEY_LENGTH} characters long"
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in text):
        return f"{text!r}; a key must be printable text (no control characters or surrogates)"
    return None


class Pipeline(Generic[E]):
    """The jobs that run for each event of one kind.

    ``event`` is the pydantic model of the events, and ``key`` maps an event to its stable
    key (a conversation id, say). The key names the completion in reports and log events,
    and makes each job's idempotency key ``"{pipeline}:{key}:{job}"``.
    """

    def __init__(self, name: str, *, event: type[E], key: Callable[[E], object]) -> None:
        self.name = _options.name(
            "a pipeline name", name, "e.g. Pipeline('conversation.completed', event=..., key=...)"
        )
        if not (isinstance(event, type) and issubclass(event, BaseModel)):
            raise InvalidOption(
                f"Pipeline {name!r}: event must be a pydantic BaseModel subclass, got "
                f"{event!r}; pass the model class, e.g. Pipeline({name!r}, event=MyEvent, key=...)"
            )
        check_callable(key, what=f"Pipeline {name!r} key", n_args=1)
        self.event = event
        self._key = key
        self._jobs: dict[str, JobSpec] = {}

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, event={self.event.__name__}, jobs={list(self._jobs)})"

    @property
    def jobs(self) -> Mapping[str, JobSpec]:
        """The registered jobs, by name, in registration order (a read-only copy)."""
        return dict(self._jobs)

    def spec(self, job: str) -> JobSpec | None:
        """The spec of the top-level job ``job``, without copying the mapping."""
        return self._jobs.get(job)

    @property
    def lanes(self) -> set[str]:
        return {job.lane for job in self._jobs.values() if job.lane is not None}

    @overload
    def job(self, fn: F, /) -> F: ...

    @overload
    def job(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 0.5,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        lane: str | None = None,
        when: Callable[[E], bool] | None = None,
    ) -> Callable[[F], F]: ...

    def job(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 0.5,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        lane: str | None = None,
        when: Callable[[E], bool] | None = None,
    ) -> F | Callable[[F], F]:
        """Register a job, as ``@pipeline.job`` or ``@pipeline.job(timeout=..., ...)``.

        ``retries`` failed or timed-out attempts are tried again after ``backoff * 2**n``
        seconds (at most 60) with jitter, or after what the job asked with ``RetryLater``.
        Only exceptions in ``retry_on`` (default: any ``Exception``; a timeout counts as
        one) are retried; others fail the job at once.
        ``when(event)`` returning False skips the job. The function is returned unchanged, so
        it stays callable and testable on its own.
        """

        def register(fn: F) -> F:
            spec = job_spec(
                fn,
                name=name if name is not None else callable_name(fn),
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                retry_on=retry_on,
                lane=lane,
                when=when,
            )
            if spec.name in self._jobs:
                raise DuplicateJob(
                    f"job {spec.name!r} is already registered in pipeline {self.name!r}; "
                    "give the second one another name with @pipeline.job(name=...)"
                )
            self._jobs[spec.name] = spec
            return fn

        return register if fn is None else register(fn)

    def coerce(self, event: E | Mapping[str, Any]) -> E:
        """Return ``event`` as this pipeline's model, validating a mapping into one."""
        if isinstance(event, self.event):
            return event
        if isinstance(event, Mapping):
            return self.event.model_validate(event)
        raise InvalidEvent(
            f"pipeline {self.name!r} takes {self.event.__name__} events (or a dict to "
            f"validate into one), got {type(event).__name__}"
        )

    def key_of(self, event: E) -> str:
        key = self._key(event)
        problem = _key_problem(key)
        if problem is not None:
            raise InvalidEvent(f"pipeline {self.name!r}: the key function returned {problem}")
        return str(key)
