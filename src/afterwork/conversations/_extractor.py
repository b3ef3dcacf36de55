"""The LLM port: what the jobs ask a language model, and a rule-based stand-in for one.

``Extractor`` is the seam. ``RuleExtractor`` answers from fixed patterns and word lists, so
every run gives the same facts, tasks and topics and the tests can check them exactly. It is a
stand-in for a real model, not a model: ``latency`` makes each call block for a random time in
a range, as a synchronous model client would, so the demo and the benchmarks load the thread
budget the way real extraction does.
"""

from __future__ import annotations

import random
import re
import threading
import time
from typing import Protocol

from ._models import Conversation

# Topic -> words that signal it. A conversation is "about" every topic it mentions.
TOPICS: dict[str, tuple[str, ...]] = {
    "fitness": ("run", "running", "gym", "workout", "marathon", "yoga", "swim"),
    "work": ("meeting", "deadline", "project", "client", "manager", "launch", "roadmap"),
    "family": ("mom", "dad", "sister", "brother", "kids", "daughter", "son", "family"),
    "travel": ("flight", "trip", "hotel", "visa", "airport", "vacation"),
    "health": ("doctor", "sleep", "diet", "dentist", "medication", "headache"),
    "finance": ("budget", "savings", "rent", "invoice", "taxes", "mortgage"),
    "learning": ("course", "spanish", "book", "lesson", "study", "exam"),
    "food": ("dinner", "recipe", "cook", "restaurant", "lunch", "coffee"),
}

_FACT = re.compile(
    r"\b(?:i am|i'm|i like|i love|i hate|i prefer|i work|i live|my (?:\w+ ){1,3}is)\b[^.!?]*",
    re.IGNORECASE,
)
_TASK = re.compile(
    r"\b(?:i need to|i have to|i'll|i will|remind me to|don't forget to|i should)\s+([^.!?]+)",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z']+")


class Extractor(Protocol):
    """What the jobs need from a language model. Calls block; jobs run them in threads."""

    def memories(self, conversation: Conversation) -> list[str]:
        """Facts about the user, one short sentence each."""
        ...

    def tasks(self, conversation: Conversation) -> list[str]:
        """Things the user said they would do."""
        ...

    def topics(self, conversation: Conversation) -> list[str]:
        """What the conversation is about, as topic names."""
        ...


def normalise(text: str) -> str:
    """Lower case, single spaces, no end punctuation: the form facts are compared in."""
    return " ".join(text.lower().split()).rstrip(".!?,;")


class RuleExtractor:
    """A deterministic, rule-based stand-in for an LLM, with an emulated latency.

    ``latency`` is a ``(low, high)`` range in seconds; each call sleeps for a random time in
    it, blocking its thread. ``(0, 0)`` answers at once.
    """

    def __init__(self, latency: tuple[float, float] = (0.0, 0.0), *, seed: int = 0) -> None:
        low, high = latency
        if not 0 <= low <= high:
            raise ValueError(
                f"latency must be a (low, high) range of seconds with 0 <= low <= high, "
                f"got {latency!r}"
            )
        self.latency = (low, high)
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def _think(self) -> None:
        low, high = self.latency
        if high > 0:
            with self._lock:  # random.Random is shared by every worker thread
                delay = self._random.uniform(low, high)
            time.sleep(delay)

    def memories(self, conversation: Conversation) -> list[str]:
        self._think()
        facts: dict[str, str] = {}
        for line in conversation.user_lines():
            for match in _FACT.finditer(line):
                fact = "User said: " + match.group(0).strip()
                facts.setdefault(normalise(fact), fact)
        return list(facts.values())

    def tasks(self, conversation: Conversation) -> list[str]:
        self._think()
        tasks: dict[str, str] = {}
        for line in conversation.user_lines():
            for match in _TASK.finditer(line):
                task = match.group(1).strip().rstrip(",;")
                task = task[:1].upper() + task[1:]
                tasks.setdefault(normalise(task), task)
        return list(tasks.values())

    def topics(self, conversation: Conversation) -> list[str]:
        self._think()
        text = " ".join(
            [conversation.structured.title, conversation.structured.overview]
            + [segment.text for segment in conversation.transcript_segments]
        )
        words = set(_WORD.findall(text.lower()))
        return sorted(topic for topic, signals in TOPICS.items() if words.intersection(signals))
