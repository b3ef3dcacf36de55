"""G10 at definition time: a pipeline refuses jobs it could not call, where they are declared."""

from __future__ import annotations

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
        ({"timeout": 0}, "job 'j': timeout must be a positive number of seconds or None, got 0"),
        ({"retries": -1}, "job 'j': retries must be an int >= 0, got -1"),
        ({"backoff": float("nan")}, "job 'j': backoff must be seconds >= 0, got nan"),
    ],
)
def test_invalid_job_options_name_the_option(options: dict[str, Any], message: str) -> None:
    """Each invalid job option raises ValueError naming the job, the option and the value."""
    pipeline = make_pipeline()
    with pytest.raises(ValueError) as info:
        pipeline.job(name="j", **options)(lambda e: None)
    assert str(info.value) == message


def test_pipeline_arguments_are_checked() -> None:
    """A pipeline needs a name, a pydantic event model and a callable key."""
    with pytest.raises(ValueError, match=r"^Pipeline name must be a non-empty string, got ''$"):
        aw.Pipeline("", event=Ev, key=lambda e: e.id)
    with pytest.raises(TypeError) as info:
        aw.Pipeline("x", event=dict, key=lambda e: e)  # type: ignore[type-var]
    assert str(info.value) == (
        "Pipeline 'x': event must be a pydantic BaseModel subclass, got <class 'dict'>"
    )
    with pytest.raises(aw.InvalidJob, match=r"^Pipeline 'x' key must be a function"):
        aw.Pipeline("x", event=Ev, key="id")  # type: ignore[arg-type]
