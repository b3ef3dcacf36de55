"""The event models: what a completed conversation may hold, and the size bounds."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from afterwork.conversations import MAX_SEGMENTS, Conversation, ConversationCompleted

from .conftest import conversation


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "c1",
        "uid": "u1",
        "created_at": "2026-03-14T09:30:00Z",
        "transcript_segments": [{"speaker": "user", "text": "hi", "start": 0, "end": 1}],
    }
    return {**base, **changes}


def only_error(error: pytest.ExceptionInfo[ValidationError]) -> dict[str, Any]:
    (problem,) = error.value.errors()
    return dict(problem)


def test_a_valid_conversation_gets_defaults() -> None:
    """A minimal body validates, with an empty structured part and English."""
    conv = Conversation.model_validate(body())
    assert (conv.language, conv.structured.category, conv.structured.action_items) == (
        "en",
        "other",
        [],
    )
    assert ConversationCompleted(conversation=conv).reprocess is False


def test_too_many_segments_is_refused_before_validating_them() -> None:
    """5,001 segments fail with the conversation_too_large type and both numbers."""
    segments = [{"speaker": "a", "text": "x", "start": 0, "end": 0}] * (MAX_SEGMENTS + 1)
    with pytest.raises(ValidationError) as error:
        Conversation.model_validate(body(transcript_segments=segments))
    problem = only_error(error)
    assert problem["type"] == "conversation_too_large"
    assert problem["loc"] == ("transcript_segments",)
    assert problem["msg"] == (
        "the transcript has 5001 segments, more than the limit of 5000; split the conversation"
    )


def test_more_than_a_megabyte_of_text_is_refused() -> None:
    """Transcript text over 1 MB fails with its size and the limit."""
    segments = [{"speaker": "a", "text": "é" * 250_001, "start": 0, "end": 1}] * 2
    with pytest.raises(ValidationError) as error:
        Conversation.model_validate(body(transcript_segments=segments))
    assert only_error(error)["msg"] == (
        "the transcript text is 1000004 bytes, more than the limit of 1000000; "
        "split the conversation"
    )


def test_a_naive_timestamp_is_refused() -> None:
    """created_at without a timezone is an error that says how to send it."""
    with pytest.raises(ValidationError) as error:
        Conversation.model_validate(body(created_at="2026-03-14T09:30:00"))
    assert only_error(error)["msg"] == (
        "Value error, created_at 2026-03-14T09:30:00 has no timezone; send it with an offset, "
        "e.g. 2026-01-01T12:00:00Z"
    )


def test_a_segment_ending_before_it_starts_is_refused() -> None:
    """end < start names both times."""
    segments = [{"speaker": "a", "text": "x", "start": 5, "end": 2}]
    with pytest.raises(ValidationError) as error:
        Conversation.model_validate(body(transcript_segments=segments))
    problem = only_error(error)
    assert problem["loc"] == ("transcript_segments", 0)
    assert problem["msg"] == (
        "Value error, segment ends at 2.0 s before it starts at 5.0 s; 'end' must be >= 'start'"
    )


def test_unknown_fields_are_refused() -> None:
    """A misspelt field is an error, not silently dropped."""
    with pytest.raises(ValidationError) as error:
        Conversation.model_validate(body(titel="x"))
    assert only_error(error)["loc"] == ("titel",)


def test_user_lines_are_what_the_user_said() -> None:
    """user_lines keeps the user's segments only; transcript keeps all, in order."""
    conv = conversation(user=("I love tea.",), other=("Hello!",))
    assert conv.user_lines() == ["I love tea."]
    assert conv.transcript() == "I love tea.\nHello!"
