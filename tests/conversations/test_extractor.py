"""The rule-based extractor and the feature-hashing embedding: deterministic, checkable."""

from __future__ import annotations

import math

import pytest

from afterwork.conversations import DIMENSIONS, RuleExtractor, cosine, embed

from .conftest import conversation


def test_facts_come_from_what_the_user_said() -> None:
    """First-person statements of the user become facts; a friend's do not."""
    conv = conversation(
        user=("Honestly I love climbing. My favourite food is ramen!",),
        other=("I love golf.",),
    )
    assert RuleExtractor().memories(conv) == [
        "User said: I love climbing",
        "User said: My favourite food is ramen",
    ]


def test_tasks_are_detected_once_each() -> None:
    """'I need to' and 'remind me to' become tasks, duplicates dropped."""
    conv = conversation(user=("I need to call mom.", "Remind me to call mom", "Nice day."))
    assert RuleExtractor().tasks(conv) == ["Call mom"]


def test_topics_come_from_signal_words() -> None:
    """Topics are the sorted names whose signal words appear anywhere."""
    conv = conversation(other=("The marathon is after the project deadline.",))
    assert RuleExtractor().topics(conv) == ["fitness", "work"]


def test_latency_range_is_checked() -> None:
    """A reversed latency range is refused with the value."""
    with pytest.raises(ValueError, match=r"^latency must be a \(low, high\) range") as error:
        RuleExtractor((0.2, 0.1))
    assert str(error.value).endswith("got (0.2, 0.1)")


def test_embedding_is_deterministic_and_unit_length() -> None:
    """The same text gives the same 256-d unit vector; different texts differ."""
    first, again, other = embed("I love tea"), embed("I love tea"), embed("deadline at work")
    assert len(first) == DIMENSIONS
    assert first == again
    assert math.isclose(cosine(first, first), 1.0, rel_tol=1e-9)
    assert cosine(first, other) < 0.5


def test_empty_text_embeds_to_zeros() -> None:
    """No words, no direction: the zero vector, not a division by zero."""
    assert embed("") == [0.0] * DIMENSIONS
