"""Fixtures for the afterwork suite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.contextvars import clear_contextvars, merge_contextvars
from structlog.typing import EventDict


def _drop(_: Any, __: str, event_dict: EventDict) -> EventDict:
    raise structlog.DropEvent


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """The library only emits events; tests that look at them use ``events``."""
    structlog.configure(processors=[_drop], cache_logger_on_first_use=False)
    clear_contextvars()
    yield
    clear_contextvars()
    structlog.reset_defaults()


@pytest.fixture
def events() -> Iterator[list[EventDict]]:
    """Every structlog event emitted during the test, with bound contextvars merged in."""
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as captured:
        yield captured


def named(events: list[EventDict], name: str) -> list[EventDict]:
    return [e for e in events if e["event"] == name]
