"""Pipelines: an event model, a key function, and the jobs that run for each event."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel

from ._exceptions import DuplicateJob, InvalidJob

E = TypeVar("E", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One registered job and its options."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    wants_ctx: bool
    timeout: float | None
    retries: int
    backoff: float
    lane: str | None
    when: Callable[[Any], bool] | None


def callable_name(fn: object) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def is_async_callable(fn: Callable[..., Any]) -> bool:
    # A callable object whose __call__ is a coroutine function counts as async too.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - we want the __call__ method itself
    )


def check_callable(fn: object, *, what: str, n_args: int) -> bool:
    """Check that ``fn`` can be called with ``n_args`` positional arguments, plus ``ctx=``
    if it declares a ``ctx`` parameter. Return whether it wants ``ctx``."""
    if not callable(fn):
        raise InvalidJob(
            f"{what} must be a function (sync or async), got {fn!r} of type "
            f"{type(fn).__name__}; pass the function itself, not the result of calling it"
        )
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


def _check_options(name: str, timeout: float | None, retries: int, backoff: float) -> None:
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(
            f"job {name!r}: timeout must be a positive number of seconds or None, got {timeout!r}"
        )
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"job {name!r}: retries must be an int >= 0, got {retries!r}")
    if not (backoff >= 0 and math.isfinite(backoff)):
        raise ValueError(f"job {name!r}: backoff must be seconds >= 0, got {backoff!r}")


class Pipeline(Generic[E]):
    """The jobs that run for each event of one kind.

    ``event`` is the pydantic model of the events, and ``key`` maps an event to its stable
    key (a conversation id, say). The key names the completion in reports and log events,
    and makes each job's idempotency key ``"{pipeline}:{key}:{job}"``.
    """

    def __init__(self, name: str, *, event: type[E], key: Callable[[E], object]) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Pipeline name must be a non-empty string, got {name!r}")
        if not (isinstance(event, type) and issubclass(event, BaseModel)):
            raise TypeError(
                f"Pipeline {name!r}: event must be a pydantic BaseModel subclass, got {event!r}"
            )
        check_callable(key, what=f"Pipeline {name!r} key", n_args=1)
        self.name = name
        self.event = event
        self._key = key
        self._jobs: dict[str, JobSpec] = {}

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, event={self.event.__name__}, jobs={list(self._jobs)})"

    @property
    def jobs(self) -> Mapping[str, JobSpec]:
        """The registered jobs, by name, in registration order."""
        return dict(self._jobs)

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
        lane: str | None = None,
        when: Callable[[E], bool] | None = None,
    ) -> F | Callable[[F], F]:
        """Register a job, as ``@pipeline.job`` or ``@pipeline.job(timeout=..., ...)``.

        ``retries`` failed or timed-out attempts are tried again after ``backoff * 2**n``
        seconds with jitter. ``when(event)`` returning False skips the job. The function is
        returned unchanged, so it stays callable and testable on its own.
        """

        def register(fn: F) -> F:
            job_name = name if name is not None else callable_name(fn)
            wants_ctx = check_callable(fn, what=f"job {job_name!r}", n_args=1)
            _check_options(job_name, timeout, retries, backoff)
            if when is not None:
                check_callable(when, what=f"job {job_name!r} when", n_args=1)
            if job_name in self._jobs:
                raise DuplicateJob(
                    f"job {job_name!r} is already registered in pipeline {self.name!r}; "
                    "give the second one another name with @pipeline.job(name=...)"
                )
            self._jobs[job_name] = JobSpec(
                name=job_name,
                fn=fn,
                is_async=is_async_callable(fn),
                wants_ctx=wants_ctx,
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                lane=lane,
                when=when,
            )
            return fn

        return register if fn is None else register(fn)

    def coerce(self, event: object) -> E:
        """Return ``event`` as this pipeline's model, validating a mapping into one."""
        if isinstance(event, self.event):
            return event
        if isinstance(event, Mapping):
            return self.event.model_validate(event)
        raise TypeError(
            f"pipeline {self.name!r} takes {self.event.__name__} events (or a dict to "
            f"validate into one), got {type(event).__name__}"
        )

    def key_of(self, event: E) -> str:
        key = self._key(event)
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise TypeError(
                f"pipeline {self.name!r}: the key function returned {key!r} of type "
                f"{type(key).__name__}; it must return a str (or an int)"
            )
        return str(key)
