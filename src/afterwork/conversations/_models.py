"""The events of the conversation service: a completed conversation, bounded in size."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

#: The speaker label of the device's owner: facts and tasks come from what they said.
USER_SPEAKER = "user"
MAX_SEGMENTS = 5_000
MAX_TRANSCRIPT_BYTES = 1_000_000
#: The pydantic error type of a conversation over a size bound; the service answers 413.
TOO_LARGE = "conversation_too_large"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TranscriptSegment(_Model):
    """One stretch of speech: who said it, what, and when (seconds from the start)."""

    speaker: str = Field(min_length=1, max_length=100)
    text: str
    start: float = Field(ge=0)
    end: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> TranscriptSegment:
        if self.end < self.start:
            raise ValueError(
                f"segment ends at {self.end} s before it starts at {self.start} s; "
                "'end' must be >= 'start'"
            )
        return self


class Structured(_Model):
    """What the app already derived from the conversation when it completed."""

    title: str = Field(default="", max_length=500)
    overview: str = Field(default="", max_length=10_000)
    category: str = Field(default="other", min_length=1, max_length=100)
    action_items: list[str] = Field(default_factory=list, max_length=500)


class Conversation(_Model):
    """A finished conversation of user ``uid``."""

    id: str = Field(min_length=1, max_length=200)
    uid: str = Field(min_length=1, max_length=200)
    created_at: datetime
    language: str = Field(default="en", min_length=2, max_length=35)
    transcript_segments: list[TranscriptSegment] = Field(default_factory=list)
    structured: Structured = Field(default_factory=Structured)

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError(
                f"created_at {value.isoformat()} has no timezone; "
                "send it with an offset, e.g. 2026-01-01T12:00:00Z"
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
        size = sum(len(segment.text.encode()) for segment in value)
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
    reprocess: bool = False


def is_new(event: ConversationCompleted) -> bool:
    """The ``when`` of the jobs that run only the first time a conversation completes."""
    return not event.reprocess
