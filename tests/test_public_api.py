"""The public face: everything public is re-exported from afterwork and listed in __all__."""

from __future__ import annotations

import pytest

import afterwork as aw


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ matches the names afterwork exports, each defined in a private module."""
    # Public modules, not names (imported by other tests, they appear as attributes).
    submodules = {"testing", "asgi", "cli", "conversations", "taskiq"}
    public = {name for name in vars(aw) if not name.startswith("_")} - submodules
    assert set(aw.__all__) == public - {"annotations"}
    for name in aw.__all__:
        module = getattr(aw, name).__module__
        assert module.startswith("afterwork._") or module == "typing", (name, module)


def test_exceptions_subclass_the_builtins_callers_catch() -> None:
    """Misuse is a RuntimeError, bad jobs a TypeError, duplicates a ValueError."""
    assert issubclass(aw.DispatcherClosed, RuntimeError)
    assert issubclass(aw.DispatcherNotOpen, RuntimeError)
    assert issubclass(aw.InvalidJob, TypeError)
    assert issubclass(aw.DuplicateJob, ValueError)
    assert issubclass(aw.UnknownLane, LookupError)
    for exc in (aw.Overloaded, aw.DispatcherClosed, aw.InvalidJob, aw.DuplicateJob):
        assert issubclass(exc, aw.AfterworkError)


def test_settings_read_afterwork_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings reads AFTERWORK_* variables and turns them into Dispatcher arguments."""
    monkeypatch.setenv("AFTERWORK_MAX_THREADS", "8")
    monkeypatch.setenv("AFTERWORK_LANES", '{"llm": 6}')
    settings = aw.Settings()
    assert settings.dispatcher_kwargs() == {
        "max_threads": 8,
        "max_pending": 1000,
        "max_active": 256,
        "max_delayed": 10_000,
        "park_after": 5.0,
        "drain_timeout": 30.0,
        "lanes": {"llm": 6},
    }
    aw.Dispatcher(**settings.dispatcher_kwargs())


def test_invalid_settings_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad AFTERWORK_MAX_THREADS fails naming the field and the value."""
    monkeypatch.setenv("AFTERWORK_MAX_THREADS", "0")
    with pytest.raises(ValueError) as info:
        aw.Settings()
    assert "max_threads\n  Input should be greater than or equal to 1" in str(info.value)
    assert "input_value='0'" in str(info.value)
