"""The events of the conversation service: a completed conversation, bounded and checked.

Every constraint that JSON Schema can state is stated in the model, so the OpenAPI document
tells clients exactly what is accepted:

- ids and uids: 1 to 128 characters of ``A-Z a-z 0-9 . _ : -``, starting with a letter or a
  digit. They become URL path segments, header values and idempotency keys, so nothing
  outside that alphabet is taken, and nothing is stripped or rewritten silently;
- numbers: finite (``NaN``, ``Infinity`` and ``1e400`` are refused), within a range, and
  numbers in the JSON (``"1.5"`` and ``true`` are refused); ``reprocess`` is ``true`` or
  ``false``;
- ``created_at``: a string, an RFC 3339 timestamp with an offset, in the years 1971 to 2099, so it
  converts to UTC without overflowing; the check is also a pattern in the schema.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

#: The speaker label of the device's owner: facts and tasks come from what they said.
USER_SPEAKER = "user"
MAX_SEGMENTS = 5_000
MAX_TRANSCRIPT_BYTES = 1_000_000
#: The longest a conversation may last, in seconds: 30 days.
MAX_OFFSET_S = 30 * 24 * 3600
#: The pydantic error type of a conversation over a size bound; the service answers 413.
TOO_LARGE = "conversation_too_large"
#: The alphabet of ids (conversation ids, user ids), as a regular expression.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
#: RFC 3339 with an offset, years 1971-2099 (so the UTC instant lies within 1970-2100).
TIMESTAMP_PATTERN = (
    r"^(19(7[1-9]|[89][0-9])|20[0-9]{2})-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
#: Strict: a number, never a numeric string or a boolean.
Seconds = Annotated[float, Field(ge=0, le=MAX_OFFSET_S, allow_inf_nan=False, strict=True)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TranscriptSegment(_Model):
    """One stretch of speech: who said it, what, and when (seconds from the start)."""

    speaker: str = Field(min_length=1, max_length=100)
    text: str = Field(max_length=100_000)
    start: Seconds
    end: Seconds


class Structured(_Model):
    """What the app already derived from the conversation when it completed."""

    title: str = Field(default="", max_length=500)
    overview: str = Field(default="", max_length=10_000)
    category: str = Field(default="other", min_length=1, max_length=100)
    action_items: list[Annotated[str, Field(max_length=1_000)]] = Field(
        default_factory=list, max_length=500
    )


class Conversation(_Model):
    """A finished conversation of user ``uid``."""

    id: Id
    uid: Id
    created_at: datetime = Field(json_schema_extra={"pattern": TIMESTAMP_PATTERN})
    language: str = Field(default="en", min_length=2, max_length=35)
    transcript_segments: list[TranscriptSegment] = Field(
        default_factory=list, max_length=MAX_SEGMENTS
    )
    structured: Structured = Field(default_factory=Structured)

    @field_validator("created_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        # Checked on the text, before pydantic parses it: a year-1 date with a +14:00
        # offset would otherwise overflow when converted to UTC later.
        if not isinstance(value, str | datetime):
            # pydantic would read a number as seconds since 1970: refused, like any
            # timestamp that does not say its offset.
            raise ValueError(
                f"created_at {value!r} is not an RFC 3339 timestamp; send a string such as "
                "2026-01-01T12:00:00Z"
            )
        if isinstance(value, str) and not _TIMESTAMP.match(value):
            raise ValueError(
                f"created_at {value!r} is not an RFC 3339 timestamp with an offset in the "
                "years 1971-2099; send e.g. 2026-01-01T12:00:00Z"
            )
        return value

    @field_validator("created_at")
    @classmethod
    def _aware_and_sane(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError(
                f"created_at {value.isoformat()} has no timezone; "
                "send it with an offset, e.g. 2026-01-01T12:00:00Z"
            )
        try:
            instant = value.astimezone(UTC)
        except OverflowError:
            instant = EARLIEST
        if not EARLIEST <= instant < LATEST:
            raise ValueError(
                f"created_at {value.isoformat()} is outside 1970-2099; send the moment the "
                "conversation completed, e.g. 2026-01-01T12:00:00Z"
            )
        return value

    @field_validator("transcript_segments", mode="before")
    @classmethod
    def _few_enough(cls, value: object) -> object:
        # Checked before the segments are validated one by one, so an oversized body is
        # refused without building thousands of models first.
        if isinstance(value, list) and len(value) > MAX_SEGMENTS:
            raise PydanticCustomError(
                TOO_LARGE,
                "the transcript has {count} segments, more than the limit of {limit}; "
                "split the conversation",
                {"count": len(value), "limit": MAX_SEGMENTS},
            )
        return value

    @field_validator("transcript_segments")
    @classmethod
    def _short_enough(cls, value: list[TranscriptSegment]) -> list[TranscriptSegment]:
        size = sum(len(segment.text.encode("utf-8", "surrogatepass")) for segment in value)
        if size > MAX_TRANSCRIPT_BYTES:
            raise PydanticCustomError(
                TOO_LARGE,
                "the transcript text is {size} bytes, more than the limit of {limit}; "
                "split the conversation",
                {"size": size, "limit": MAX_TRANSCRIPT_BYTES},
            )
        return value

    def transcript(self) -> str:
        """The whole transcript as one text, a line per segment."""
        return "\n".join(segment.text for segment in self.transcript_segments)

    def user_lines(self) -> list[str]:
        """What the user said, a segment per line."""
        return [s.text for s in self.transcript_segments if s.speaker.lower() == USER_SPEAKER]


class ConversationCompleted(_Model):
    """The event: a conversation completed (or is processed again, with ``reprocess``)."""

    conversation: Conversation
    reprocess: bool = Field(default=False, strict=True)  # true or false; never "yes" or 1


def is_new(event: ConversationCompleted) -> bool:
    """The ``when`` of the jobs that run only the first time a conversation completes."""
    return not event.reprocess
