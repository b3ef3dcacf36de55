"""The event models: what a completed conversation may hold, and the size bounds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
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
    segments = [{"speaker": "a", "text": "é" * 100_000, "start": 0, "end": 1}] * 6
    with pytest.raises(ValidationError) as error:
        Conversation.model_validate(body(transcript_segments=segments))
    assert only_error(error)["msg"] == (
        "the transcript text is 1200000 bytes, more than the limit of 1000000; "
        "split the conversation"
    )


@pytest.mark.parametrize(
    "created_at",
    [
        "2026-03-14T09:30:00",  # no offset
        "0001-01-01T00:00:00+14:00",  # overflows when converted to UTC
        "1970-01-01T00:00:00Z",  # outside 1971-2099
        "2100-01-01T00:00:00Z",
        "2026-03-14 09:30:00Z",  # not RFC 3339
        "2026-03-14T09:30:00+0100",
    ],
)
def test_a_timestamp_outside_rfc_3339_or_the_sane_range_is_refused(created_at: str) -> None:
    """created_at must be RFC 3339 with an offset, in 1971-2099: an error saying how."""
    with pytest.raises(ValidationError) as error:
        Conversation.model_validate(body(created_at=created_at))
    assert only_error(error)["msg"] == (
        f"Value error, created_at {created_at!r} is not an RFC 3339 timestamp with an offset "
        "in the years 1971-2099; send e.g. 2026-01-01T12:00:00Z"
    )


def test_a_naive_or_out_of_range_datetime_object_is_refused() -> None:
    """A datetime built in Python (no text to match) is checked for its zone and range."""
    with pytest.raises(ValidationError) as naive:
        Conversation.model_validate(body(created_at=datetime(2026, 3, 14, 9, 30)))
    assert only_error(naive)["msg"] == (
        "Value error, created_at 2026-03-14T09:30:00 has no timezone; send it with an "
        "offset, e.g. 2026-01-01T12:00:00Z"
    )
    with pytest.raises(ValidationError) as early:
        Conversation.model_validate(body(created_at=datetime(1, 1, 1, tzinfo=UTC)))
    assert only_error(early)["msg"] == (
        "Value error, created_at 0001-01-01T00:00:00+00:00 is outside 1970-2099; send the "
        "moment the conversation completed, e.g. 2026-01-01T12:00:00Z"
    )


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e400", "3e9"])
def test_a_non_finite_or_huge_number_is_refused(number: str) -> None:
    """start must be a finite number of seconds within 30 days: NaN and 1e400 are 422s."""
    raw = (
        '{"id": "c1", "uid": "u1", "created_at": "2026-03-14T09:30:00Z", '
        f'"transcript_segments": [{{"speaker": "a", "text": "x", "start": {number}, "end": 1}}]}}'
    )
    with pytest.raises(ValidationError) as error:
        Conversation.model_validate_json(raw)
    problem = only_error(error)
    assert problem["loc"] == ("transcript_segments", 0, "start")
    assert problem["type"] in ("finite_number", "less_than_equal", "greater_than_equal")


@pytest.mark.parametrize(
    "cid",
    [
        "",
        " c1",
        "c1 ",
        "a/b",
        "a?b",
        "a#b",
        "../x",
        "会话",
        "\U0001f600",
        "\u202eab",
        "\u0000x",
        "x\r\ny",
        "-x",
        "x" * 129,
    ],
)
def test_ids_outside_the_alphabet_are_refused(cid: str) -> None:
    """Ids are 1-128 of A-Z a-z 0-9 . _ : -, starting alphanumeric; nothing is stripped."""
    with pytest.raises(ValidationError) as error:
        Conversation.model_validate(body(id=cid))
    problem = only_error(error)
    assert (problem["loc"], problem["type"]) == (("id",), "string_pattern_mismatch")


def test_ids_inside_the_alphabet_are_kept_as_sent() -> None:
    """A valid id with every allowed character comes through unchanged."""
    cid = "A-z_0.9:x" + "y" * 119
    assert Conversation.model_validate(body(id=cid, uid="u.1")).id == cid


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


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("start", '"1.5"', "float_type"),
        ("start", "true", "float_type"),
        ("end", '"1"', "float_type"),
    ],
)
def test_a_number_sent_as_a_string_or_a_boolean_is_refused(
    field: str, value: str, kind: str
) -> None:
    """Offsets are JSON numbers: "1.5" and true are refused, not read as 1.5 and 1."""
    segment = {"speaker": "a", "text": "x", "start": 0, "end": 1}
    raw = json.dumps(body(transcript_segments=[segment])).replace(
        f'"{field}": {segment[field]}', f'"{field}": {value}'
    )
    with pytest.raises(ValidationError) as error:
        Conversation.model_validate_json(raw)
    problem = only_error(error)
    assert (problem["loc"], problem["type"]) == (("transcript_segments", 0, field), kind)


def test_an_integer_offset_is_a_number_of_seconds() -> None:
    """A JSON integer is a number: 3 seconds is taken as 3.0."""
    segment = {"speaker": "a", "text": "x", "start": 3, "end": 4}
    conv = Conversation.model_validate_json(json.dumps(body(transcript_segments=[segment])))
    assert (conv.transcript_segments[0].start, conv.transcript_segments[0].end) == (3.0, 4.0)


@pytest.mark.parametrize("value", [1_700_000_000, 1.7e9, True])
def test_a_timestamp_sent_as_a_number_is_refused(value: object) -> None:
    """created_at is RFC 3339 text; a number is not read as seconds since 1970."""
    with pytest.raises(ValidationError) as error:
        Conversation.model_validate_json(json.dumps(body(created_at=value)))
    assert only_error(error)["msg"] == (
        f"Value error, created_at {value!r} is not an RFC 3339 timestamp; send a string "
        "such as 2026-01-01T12:00:00Z"
    )


@pytest.mark.parametrize("value", ['"true"', '"yes"', "1", "0"])
def test_reprocess_is_true_or_false(value: str) -> None:
    """reprocess is a JSON boolean: "true", "yes", 1 and 0 are refused."""
    raw = '{"conversation": ' + json.dumps(body()) + ', "reprocess": ' + value + "}"
    with pytest.raises(ValidationError) as error:
        ConversationCompleted.model_validate_json(raw)
    problem = only_error(error)
    assert (problem["loc"], problem["type"]) == (("reprocess",), "bool_type")
