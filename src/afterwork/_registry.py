"""The pipelines a dispatcher knows: one per name, each checked when it is registered."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import _codec
from ._exceptions import DuplicateJob, InvalidOption
from ._pipeline import Pipeline


def register(
    known: dict[str, Pipeline[Any]], pipelines: Iterable[Pipeline[Any]], *, journaled: bool
) -> None:
    """Add ``pipelines`` to ``known``; with a journal, their event models must survive it
    exactly (``InvalidEvent`` names the field that would not)."""
    for pipeline in pipelines:
        if not isinstance(pipeline, Pipeline):
            raise InvalidOption(
                f"register() takes Pipeline objects, got {pipeline!r}; "
                "e.g. dispatcher.register(pipeline)"
            )
        same = known.get(pipeline.name)
        if same is pipeline:
            continue
        if same is not None:
            raise DuplicateJob(
                f"another pipeline named {pipeline.name!r} is already registered; "
                "pipeline names must be unique within a dispatcher"
            )
        if journaled:
            _codec.check_model(pipeline.event)
        known[pipeline.name] = pipeline
