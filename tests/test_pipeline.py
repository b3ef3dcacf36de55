"""G10 at definition time: a pipeline refuses jobs it could not call, where they are declared."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import afterwork as aw

from .helpers import Ev, make_pipeline


def test_job_registers_bare_or_with_options_and_returns_the_function() -> None:
    """@pipeline.job and @pipeline.job(...) register jobs in order and leave them callable."""
    pipeline = make_pipeline()

    @pipeline.job
    def first(event: Ev) -> int:
        return event.id

    @pipeline.job(name="second", timeout=5, retries=2, lane="llm", when=lambda e: True)
    async def whatever(event: Ev, ctx: aw.JobContext) -> None:
        pass

    assert first(Ev(id=4)) == 4
    assert list(pipeline.jobs) == ["first", "second"]
    spec = pipeline.jobs["second"]
    assert (spec.is_async, spec.wants_ctx, spec.timeout, spec.retries, spec.lane) == (
        True,
        True,
        5,
        2,
        "llm",
    )
    assert pipeline.lanes == {"llm"}
    assert repr(pipeline) == "Pipeline('p', event=Ev, jobs=['first', 'second'])"


def test_a_job_name_registered_twice_is_refused() -> None:
    """Registering a second job under an existing name raises DuplicateJob with the fix."""
    pipeline = make_pipeline()
    pipeline.job(name="save")(lambda e: None)
    with pytest.raises(aw.DuplicateJob) as info:
        pipeline.job(name="save")(lambda e: None)
    assert str(info.value) == (
        "job 'save' is already registered in pipeline 'p'; give the second one another name "
        "with @pipeline.job(name=...)"
    )


def test_a_job_that_is_not_callable_is_refused() -> None:
    """A non-callable job raises InvalidJob naming the value and its type."""
    pipeline = make_pipeline()
    with pytest.raises(aw.InvalidJob) as info:
        pipeline.job(name="n")(42)  # type: ignore[type-var]
    assert str(info.value) == (
        "job 'n' must be a function (sync or async), got 42 of type int; pass the function "
        "itself, not the result of calling it"
    )
    assert isinstance(info.value, TypeError)


def test_a_ctx_parameter_that_cannot_be_passed_is_refused() -> None:
    """A function whose ctx parameter cannot take the context is refused at registration."""
    pipeline = make_pipeline()

    def ctx_first(ctx: aw.JobContext, event: Ev) -> None:
        pass

    def ctx_with_extra(event: Ev, ctx: aw.JobContext, extra: int) -> None:
        pass

    for fn in (ctx_first, ctx_with_extra):
        with pytest.raises(aw.InvalidJob) as info:
            pipeline.job(fn)
        assert str(info.value).startswith(f"job {fn.__name__!r} {fn.__name__}(")
        assert str(info.value).endswith(
            "declares a 'ctx' parameter that cannot be passed by keyword after 1 positional "
            "argument(s); make 'ctx' an ordinary parameter after the others, e.g. (event, ctx)"
        )


def test_a_job_that_cannot_take_the_event_is_refused() -> None:
    """A job taking no argument, or two without ctx, raises InvalidJob with its signature."""
    pipeline = make_pipeline()

    def no_args() -> None:
        pass

    def two_args(event: Ev, other: int) -> None:
        pass

    with pytest.raises(aw.InvalidJob) as info:
        pipeline.job(no_args)
    assert str(info.value) == (
        "job 'no_args' no_args() -> 'None' cannot be called with 1 positional argument(s); a "
        "job takes the event, and optionally 'ctx'"
    )
    with pytest.raises(aw.InvalidJob, match=r"^job 'two_args' two_args"):
        pipeline.job(two_args)


def test_keyword_only_ctx_and_optional_extras_are_accepted() -> None:
    """ctx may be keyword-only, and extra parameters with defaults are fine."""
    pipeline = make_pipeline()

    def kw_ctx(event: Ev, *, ctx: aw.JobContext, verbose: bool = False) -> None:
        pass

    pipeline.job(kw_ctx)
    assert pipeline.jobs["kw_ctx"].wants_ctx


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"timeout": 0},
            "job 'j': timeout must be a finite number of seconds > 0, got 0; e.g. "
            "@pipeline.job(name='j', timeout=30), or timeout=None",
        ),
        (
            {"timeout": True},
            "job 'j': timeout must be a finite number of seconds > 0, got True; e.g. "
            "@pipeline.job(name='j', timeout=30), or timeout=None",
        ),
        (
            {"timeout": "5"},
            "job 'j': timeout must be a finite number of seconds > 0, got '5'; e.g. "
            "@pipeline.job(name='j', timeout=30), or timeout=None",
        ),
        (
            {"retries": -1},
            "job 'j': retries must be an int >= 0, got -1; e.g. @pipeline.job(name='j', retries=2)",
        ),
        (
            {"backoff": float("nan")},
            "job 'j': backoff must be a finite number of seconds >= 0, got nan; e.g. "
            "@pipeline.job(name='j', backoff=0.5)",
        ),
        (
            {"backoff": True},
            "job 'j': backoff must be a finite number of seconds >= 0, got True; e.g. "
            "@pipeline.job(name='j', backoff=0.5)",
        ),
        (
            {"lane": ""},
            "job 'j': lane must be a non-empty str, got ''; e.g. @pipeline.job(name='j', "
            "lane='llm')",
        ),
    ],
)
def test_invalid_job_options_name_the_option(options: dict[str, Any], message: str) -> None:
    """Each invalid job option raises InvalidOption naming the job, option, value and fix."""
    pipeline = make_pipeline()
    with pytest.raises(aw.InvalidOption) as info:
        pipeline.job(name="j", **options)(lambda e: None)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "a non-empty str"),
        ("a/b", "a name without '/' (it separates a parent job from its children)"),
        ("x" * 201, "at most 200 characters long"),
        ("bad\ud800", "printable text (no control characters or lone surrogates)"),
        ("line\nbreak", "printable text (no control characters or lone surrogates)"),
    ],
)
def test_invalid_job_names_are_refused(name: str, problem: str) -> None:
    """A job name that is empty, holds '/', is too long or is not printable text is refused."""
    pipeline = make_pipeline()
    with pytest.raises(aw.InvalidOption) as info:
        pipeline.job(name=name)(lambda e: None)
    assert str(info.value) == (
        f"a job name must be {problem}, got {name!r}; pass @pipeline.job(name='save_vector'), "
        "a name without '/'"
    )


def test_pipeline_arguments_are_checked() -> None:
    """A pipeline needs a name, a pydantic event model and a callable key."""
    with pytest.raises(aw.InvalidOption) as name:
        aw.Pipeline("", event=Ev, key=lambda e: e.id)
    assert str(name.value) == (
        "a pipeline name must be a non-empty str, got ''; e.g. "
        "Pipeline('conversation.completed', event=..., key=...)"
    )
    with pytest.raises(aw.InvalidOption) as info:
        aw.Pipeline("x", event=dict, key=lambda e: e)  # type: ignore[type-var]
    assert str(info.value) == (
        "Pipeline 'x': event must be a pydantic BaseModel subclass, got <class 'dict'>; pass "
        "the model class, e.g. Pipeline('x', event=MyEvent, key=...)"
    )
    with pytest.raises(aw.InvalidJob, match=r"^Pipeline 'x' key must be a function"):
        aw.Pipeline("x", event=Ev, key="id")  # type: ignore[arg-type]


def _gen(event: Ev) -> Iterator[int]:
    yield event.id


async def _agen(event: Ev) -> AsyncIterator[int]:
    yield event.id


class _AsyncCallable:
    async def __call__(self, event: Ev) -> None:
        pass


@pytest.mark.parametrize(
    ("fn", "kind"),
    [(_gen, "a generator function"), (_agen, "an async generator function")],
)
def test_generator_jobs_are_refused_at_definition(fn: Callable[..., Any], kind: str) -> None:
    """A generator body would never run (calling it only makes a generator): refused."""
    pipeline = make_pipeline()
    with pytest.raises(aw.InvalidJob) as info:
        pipeline.job(fn)
    assert str(info.value) == (
        f"job {fn.__name__!r} {fn.__name__} is {kind}: calling it only creates a generator, "
        "so its body would never run; make it a plain 'def' or 'async def' that does the work "
        "(no 'yield')"
    )


def test_an_async_when_is_refused_and_async_callables_count_as_async() -> None:
    """`when` must be a plain function; an object with an async __call__ is an async job."""
    pipeline = make_pipeline()

    async def maybe(event: Ev) -> bool:
        return True

    with pytest.raises(aw.InvalidJob) as info:
        pipeline.job(name="j", when=maybe)(lambda e: None)  # type: ignore[arg-type]
    assert str(info.value) == (
        "job 'j': when=maybe is an async function, so calling it gives a coroutine, never a "
        "bool; 'when' must be a plain function of the event, e.g. when=lambda event: not "
        "event.reprocess"
    )
    pipeline.job(name="obj")(_AsyncCallable())
    assert pipeline.jobs["obj"].is_async
