"""A dispatcher's options, checked once where they are given (G10).

Each bad value is refused with ``InvalidOption`` naming the option, the value received and a
fix that is valid Python. The checked options are kept in a frozen ``Config``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import _options
from ._exceptions import InvalidOption
from ._journal import SqliteJournal
from ._models import Report


@dataclass(frozen=True)
class Config:
    """The checked options of one dispatcher."""

    max_threads: int
    max_pending: int
    max_active: int
    max_delayed: int
    park_after: float
    drain_timeout: float
    lanes: Mapping[str, int]
    journal: SqliteJournal | None
    on_report: Callable[[Report], object]


def check(
    *,
    max_threads: object,
    max_pending: object,
    max_active: object,
    max_delayed: object,
    park_after: object,
    drain_timeout: object,
    lanes: object,
    journal: object,
    on_report: object,
) -> Config:
    if not callable(on_report):
        raise InvalidOption(
            f"on_report must be a function taking a Report, got {on_report!r}; "
            "e.g. Dispatcher(on_report=lambda report: print(report.ok))"
        )
    return Config(
        max_threads=_count("max_threads", max_threads, 1, 32),
        max_pending=_count("max_pending", max_pending, 1, 1000),
        max_active=_count("max_active", max_active, 1, 256),
        max_delayed=_count("max_delayed", max_delayed, 0, 10_000),
        park_after=_seconds("park_after", park_after, "5.0"),
        drain_timeout=_seconds("drain_timeout", drain_timeout, "30"),
        lanes=_lanes(lanes),
        journal=_journal(journal),
        on_report=on_report,
    )


def call_seconds(option: str, value: object, example: str) -> float:
    """A per-call number of seconds (``submit(timeout=)``, ``submit(delay=)``)."""
    fix = f"e.g. dispatcher.submit(pipeline, event, {option}={example})"
    return _options.seconds(f"submit {option}", value, fix)


def _count(option: str, value: object, minimum: int, example: int) -> int:
    return _options.count(option, value, minimum, f"e.g. Dispatcher({option}={example})")


def _seconds(option: str, value: object, example: str) -> float:
    return _options.seconds(option, value, f"e.g. Dispatcher({option}={example})")


def _lanes(lanes: object) -> dict[str, int]:
    if lanes is None:
        return {}
    fix = "e.g. Dispatcher(lanes={'llm': 6})"
    if not isinstance(lanes, Mapping):
        raise InvalidOption(f"lanes must be a dict of lane sizes, got {lanes!r}; {fix}")
    checked = {}
    for name, size in lanes.items():
        lane = _options.name("a lane name", name, fix)
        checked[lane] = _options.count(
            f"lanes[{lane!r}]", size, 1, f"e.g. Dispatcher(lanes={{{lane!r}: 6}})"
        )
    return checked


def _journal(journal: object) -> SqliteJournal | None:
    if journal is None or isinstance(journal, SqliteJournal):
        return journal
    if isinstance(journal, str | os.PathLike):
        return SqliteJournal(journal)
    raise InvalidOption(
        f"journal must be a path or a SqliteJournal, got {journal!r}; "
        "e.g. Dispatcher(journal='var/afterwork.db')"
    )
