"""The demo's world: users with goals, personas and webhooks, and their conversations.

Everything comes from one seeded ``random.Random``, so a seed gives the same conversations,
facts and tasks on every run, and the demo can say in advance what must happen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ._models import Conversation, ConversationCompleted, Structured, TranscriptSegment
from ._store import Store

#: How each user's webhook endpoint on the demo receiver behaves (see _receiver).
WEBHOOK_MODES = ("ok",) * 12 + ("flaky", "flaky", "throttle", "throttle", "down", "reject")
GOALS = (
    ("Run a marathon", ("marathon", "running", "run"), 10),
    ("Learn Spanish", ("spanish", "lesson"), 5),
    ("Save money", ("budget", "savings"), 8),
    ("Sleep better", ("sleep",), 7),
    ("Ship the project", ("launch", "deadline", "project"), 6),
)
PERSONAS = (
    ("coach", "Coach", "You are {name}, a kind coach. What you know about the user:\n{memories}"),
    ("friend", "Friend", "You are {name}, an old friend. Remember:\n{memories}"),
    ("mentor", "Mentor", "You are {name}. Advise the user, who told you:\n{memories}"),
)
#: One persona template is broken on purpose: its refresh fails, and the others still run.
BROKEN_PERSONA = ("critic", "Critic", "You are {name}, in a {mood} mood.\n{memories}")
FACTS = (
    "I love {hobby}",
    "I work at {company} as a {role}",
    "My favourite food is {food}",
    "I live in {city}",
    "I prefer {drink} in the morning",
)
TASKS = (
    "I need to {task}",
    "Remind me to {task}",
    "Don't forget to {task}",
    "I'll {task} tomorrow",
)
CHATTER = (
    "We talked about the {topic} plan again.",
    "That meeting ran long, the client wants the launch before the deadline.",
    "My sister is visiting, we should cook dinner together.",
    "The flight to the conference is early, the hotel is near the airport.",
    "I skipped the gym, my sleep has been bad this week.",
    "The budget for rent and savings needs another look.",
    "The Spanish lesson was fun, I have an exam next month.",
    "Went for a run by the river, training for the marathon.",
)
WORDS = {
    "hobby": ("climbing", "jazz", "chess", "gardening", "running", "photography"),
    "company": ("Acme", "Globex", "Initech", "Umbrella", "Hooli"),
    "role": ("designer", "engineer", "nurse", "teacher", "analyst"),
    "food": ("ramen", "tacos", "paella", "dumplings", "curry"),
    "city": ("Lisbon", "Osaka", "Denver", "Nairobi", "Tallinn"),
    "drink": ("tea", "coffee", "matcha"),
    "task": (
        "book the dentist",
        "send the invoice",
        "call mom",
        "renew the visa",
        "buy running shoes",
        "review the roadmap",
        "pay the rent",
    ),
    "topic": ("fitness", "work", "travel", "family"),
}
CATEGORIES = ("personal", "work", "health", "family", "finance")


@dataclass(frozen=True)
class DemoUser:
    uid: str
    webhook_mode: str | None
    syncs_tasks: bool
    broken_persona: bool


def users(count: int) -> list[DemoUser]:
    """``count`` users; the webhook modes cycle, every other user syncs tasks."""
    return [
        DemoUser(
            uid=f"user-{i:02d}",
            webhook_mode=WEBHOOK_MODES[i % len(WEBHOOK_MODES)] if i % 10 != 9 else None,
            syncs_tasks=i % 2 == 0,
            broken_persona=i == 3,
        )
        for i in range(count)
    ]


def seed_profiles(store: Store, people: list[DemoUser], receiver_url: str) -> None:
    """Write each user's goals, personas and integrations (blocking; run before traffic)."""
    for n, user in enumerate(people):
        for k in range(2):
            title, keywords, target = GOALS[(n + k) % len(GOALS)]
            store.add_goal(f"{user.uid}:goal-{k}", user.uid, title, list(keywords), target)
        personas = PERSONAS[: 2 + n % 2] + ((BROKEN_PERSONA,) if user.broken_persona else ())
        for slug, name, template in personas:
            store.add_persona(f"{user.uid}:{slug}", user.uid, name, template)
        if user.webhook_mode is not None:
            url = f"{receiver_url}/hooks/{user.webhook_mode}/{user.uid}"
            store.set_webhook(user.uid, "conversation_created", url)
        if user.syncs_tasks:
            store.set_webhook(user.uid, "tasks", f"{receiver_url}/tasks/{user.uid}")


def _fill(rng: random.Random, template: str) -> str:
    return template.format(**{key: rng.choice(values) for key, values in WORDS.items()})


def conversation(rng: random.Random, index: int, uid: str, start: datetime) -> Conversation:
    """One realistic conversation of ``uid``: chatter, a couple of facts and tasks."""
    lines = [("friend", rng.choice(CHATTER)) for _ in range(rng.randint(4, 10))]
    lines += [("user", _fill(rng, rng.choice(FACTS)) + ".") for _ in range(rng.randint(1, 3))]
    lines += [("user", _fill(rng, rng.choice(TASKS)) + ".") for _ in range(rng.randint(0, 2))]
    rng.shuffle(lines)
    segments, clock = [], 0.0
    for speaker, text in lines:
        length = 1.5 + len(text) / 15
        segments.append(
            TranscriptSegment(speaker=speaker, text=text, start=clock, end=clock + length)
        )
        clock += length + 0.3
    category = rng.choice(CATEGORIES)
    return Conversation(
        id=f"conv-{index:05d}",
        uid=uid,
        created_at=start + timedelta(minutes=7 * index),
        language="en",
        transcript_segments=segments,
        structured=Structured(
            title=f"{category.title()} chat #{index}",
            overview=segments[0].text,
            category=category,
            action_items=[_fill(rng, "{task}").capitalize()] if rng.random() < 0.5 else [],
        ),
    )


def conversations(count: int, people: list[DemoUser], seed: int = 7) -> list[ConversationCompleted]:
    """``count`` completed conversations, spread round-robin over ``people``."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    return [
        ConversationCompleted(conversation=conversation(rng, i, people[i % len(people)].uid, start))
        for i in range(count)
    ]
