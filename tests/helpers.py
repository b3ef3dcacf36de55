"""Shared test helpers: the event most tests submit, and the public testing helpers."""

from __future__ import annotations

from pydantic import BaseModel, Field

import afterwork as aw
from afterwork.testing import Gate, wait_until

__all__ = ["Ev", "Gate", "make_pipeline", "wait_until"]


class Ev(BaseModel):
    """The event most tests submit."""

    id: int
    text: str = ""
    tags: list[str] = Field(default_factory=list)


def make_pipeline(name: str = "p") -> aw.Pipeline[Ev]:
    return aw.Pipeline(name, event=Ev, key=lambda e: e.id)
