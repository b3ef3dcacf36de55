"""Checks for the options users pass: one message shape for every bad value.

Each message names the option, the value received and a fix that is valid Python, so the
mistake is mended where it was made (G10).
"""

from __future__ import annotations

import math
import unicodedata

from ._exceptions import InvalidOption

#: The longest job, child or pipeline name: it is part of every idempotency key.
MAX_NAME_LENGTH = 200


def count(option: str, value: object, minimum: int, example: str) -> int:
    """An int of at least ``minimum`` (not a bool); ``example`` is the fix to show."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidOption(f"{option} must be an int >= {minimum}, got {value!r}; {example}")
    return value


def seconds(option: str, value: object, example: str, *, positive: bool = False) -> float:
    """A finite number of seconds, >= 0 (or > 0 with ``positive``); never a bool."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise InvalidOption(
            f"{option} must be a finite number of seconds {bound}, got {value!r}; {example}"
        )
    return float(value)  # type: ignore[arg-type]


def optional_seconds(option: str, value: object, example: str) -> float | None:
    """None (no limit), or seconds > 0."""
    return None if value is None else seconds(option, value, example, positive=True)


def name(what: str, value: object, example: str) -> str:
    """A job, child or pipeline name: non-empty text of printable characters, without ``/``.

    ``/`` separates a parent from its child in outcome names, and the name is written to the
    journal and to logs, so it must be encodable text.
    """
    problem = _name_problem(value)
    if problem is not None:
        raise InvalidOption(f"{what} must be {problem}, got {value!r}; {example}")
    assert isinstance(value, str)
    return value


def _name_problem(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return "a non-empty str"
    if "/" in value:
        return "a name without '/' (it separates a parent job from its children)"
    if len(value) > MAX_NAME_LENGTH:
        return f"at most {MAX_NAME_LENGTH} characters long"
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
        return "printable text (no control characters or lone surrogates)"
    return None
