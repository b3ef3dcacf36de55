"""Each of the seven jobs against a real SQLite file, run through a real dispatcher."""

from __future__ import annotations

import math

import pytest

from afterwork.conversations import JOBS, Store, build_pipeline
from afterwork.conversations._embedding import from_blob
from afterwork.conversations._outcomes import outcomes, save_report
from afterwork.conversations._receiver import Receiver
from afterwork.conversations._writes import trend_counts

from .conftest import MOMENT, Runner, completed, conversation


def test_unknown_job_names_are_refused(store: Store) -> None:
    """build_pipeline(only=...) names the unknown job and lists the real ones."""
    with pytest.raises(ValueError, match=r"^unknown job\(s\) save_vector; the jobs are ") as error:
        build_pipeline(None, only=["save_vector"])  # type: ignore[arg-type]
    assert str(error.value).endswith(", ".join(JOBS))


async def test_vector_is_upserted_once_per_conversation(store: Store, run_jobs: Runner) -> None:
    """Two runs leave one unit-length 256-d vector; a reprocess skips the job."""
    event = completed(conversation(user=("I love tea.",), overview="Tea talk"))
    for _ in range(2):
        report = await run_jobs(event, "save_structured_vector")
        assert report.outcome("save_structured_vector").status == "succeeded"
    (row,) = store.query("SELECT dimensions, vector FROM vectors WHERE conversation_id = 'c1'")
    vector = from_blob(row["vector"])
    assert (row["dimensions"], len(vector)) == (256, 256)
    assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-5)
    again = await run_jobs(completed(event.conversation, reprocess=True), "save_structured_vector")
    assert again.outcome("save_structured_vector").status == "skipped"


async def test_memories_are_deduplicated_per_user(store: Store, run_jobs: Runner) -> None:
    """A fact the user already has, from any conversation, is not stored twice."""
    await run_jobs(completed(conversation("c1", user=("I love tea.",))), "extract_memories")
    await run_jobs(
        completed(conversation("c2", user=("i LOVE tea!", "I live in Oslo."))), "extract_memories"
    )
    rows = store.query("SELECT conversation_id, content FROM memories ORDER BY id")
    assert rows == [
        {"conversation_id": "c1", "content": "User said: I love tea"},
        {"conversation_id": "c2", "content": "User said: I live in Oslo"},
    ]


async def test_reprocess_replaces_a_conversations_memories(store: Store, run_jobs: Runner) -> None:
    """On reprocess the conversation's earlier memories go, the new ones come, once."""
    await run_jobs(completed(conversation(user=("I love tea.",))), "extract_memories")
    changed = conversation(user=("I prefer coffee.",))
    for _ in range(2):
        await run_jobs(completed(changed, reprocess=True), "extract_memories")
    assert store.query("SELECT content FROM memories") == [
        {"content": "User said: I prefer coffee"}
    ]


async def test_trends_count_per_user_and_day(store: Store, run_jobs: Runner) -> None:
    """Topics and category are counted per UTC day; a reprocess does not count twice."""
    run = completed(conversation("c1", other=("A gym workout.",), category="Health"))
    await run_jobs(run, "extract_trends")
    await run_jobs(completed(run.conversation, reprocess=True), "extract_trends")
    await run_jobs(
        completed(conversation("c2", other=("Run!",), category="health")), "extract_trends"
    )
    assert trend_counts(store, "u1", MOMENT.date().isoformat()) == {
        ("topic", "fitness"): 2,
        ("category", "health"): 2,
    }


async def test_action_items_are_saved_and_synced(
    store: Store, run_jobs: Runner, receiver: tuple[Receiver, str]
) -> None:
    """Structured and detected items are saved; auto_sync posts them and marks them exported."""
    hooks, url = receiver
    store.set_webhook("u1", "tasks", f"{url}/tasks/u1")
    event = completed(conversation(user=("I need to pay the rent.",), action_items=["Buy milk"]))
    report = await run_jobs(event, "save_action_items")
    assert [o.job for o in report.outcomes] == ["save_action_items", "save_action_items/auto_sync"]
    assert report.ok
    rows = store.query(
        "SELECT description, source, exported_at IS NOT NULL AS done FROM action_items"
    )
    assert rows == [
        {"description": "Buy milk", "source": "structured", "done": 1},
        {"description": "Pay the rent", "source": "detected", "done": 1},
    ]
    assert hooks.task_items == 2
    again = await run_jobs(completed(event.conversation, reprocess=True), "save_action_items")
    assert [o.job for o in again.outcomes] == ["save_action_items"]  # nothing left to export
    assert store.count("action_items") == 2


async def test_auto_sync_failure_keeps_items_unexported(
    store: Store, run_jobs: Runner, receiver: tuple[Receiver, str]
) -> None:
    """A task integration answering 500 fails the child alone; the items stay unexported."""
    _, url = receiver
    store.set_webhook("u1", "tasks", f"{url}/hooks/down/u1")
    report = await run_jobs(completed(conversation(action_items=["Buy milk"])), "save_action_items")
    assert report.outcome("save_action_items").status == "succeeded"
    child = report.outcome("save_action_items/auto_sync")
    assert (child.status, child.attempts) == ("failed", 3)
    assert child.error == (
        f"RuntimeError: task integration {url}/hooks/down/u1 did not take 1 action item(s): "
        "HTTP 500; they stay unexported and go with the next sync"
    )
    assert store.count("action_items", "exported_at IS NULL") == 1


async def test_goal_progress_moves_once_per_conversation(store: Store, run_jobs: Runner) -> None:
    """A mentioned goal moves by one, never again for that conversation, capped at target."""
    store.add_goal("g1", "u1", "Run a marathon", ["marathon"], target=2)
    store.add_goal("g2", "u1", "Learn Spanish", ["spanish"], target=5)
    for cid in ("c1", "c1", "c2", "c3"):
        event = completed(conversation(cid, other=("Training for the marathon.",)), cid == "c1")
        await run_jobs(event, "update_goal_progress")
    rows = store.query("SELECT id, progress FROM goals ORDER BY id")
    assert rows == [{"id": "g1", "progress": 2}, {"id": "g2", "progress": 0}]
    assert store.count("goal_mentions") == 3


async def test_personas_refresh_from_recent_memories(store: Store, run_jobs: Runner) -> None:
    """The winner spawns one child per persona; each prompt lists the user's memories."""
    store.add_persona("p1", "u1", "Coach", "You are {name}.\n{memories}")
    store.add_persona("p2", "u1", "Friend", "{name} knows:\n{memories}")
    event = completed(conversation(user=("I love tea.",)))
    report = await run_jobs(event, "extract_memories")
    report = await run_jobs(event, "update_personas")
    assert sorted(o.job for o in report.outcomes) == [
        "update_personas",
        "update_personas/p1",
        "update_personas/p2",
    ]
    prompts = store.query("SELECT prompt FROM personas ORDER BY id")
    assert prompts == [
        {"prompt": "You are Coach.\n- User said: I love tea"},
        {"prompt": "Friend knows:\n- User said: I love tea"},
    ]


async def test_a_failing_persona_does_not_stop_the_others(store: Store, run_jobs: Runner) -> None:
    """A template with an unknown field fails its child; the sibling is still rebuilt."""
    store.add_persona("bad", "u1", "Critic", "{name} is {mood}")
    store.add_persona("good", "u1", "Coach", "{name}: {memories}")
    report = await run_jobs(completed(conversation()), "update_personas")
    bad, good = report.outcome("update_personas/bad"), report.outcome("update_personas/good")
    assert (bad.status, good.status) == ("failed", "succeeded")
    assert bad.error == (
        "ValueError: persona 'Critic': its template uses unknown field(s) mood; "
        "a template may use only {name} and {memories}"
    )
    assert store.query("SELECT prompt FROM personas WHERE id = 'good'") == [
        {"prompt": "Coach: - (nothing yet)"}
    ]


async def test_a_new_window_allows_a_new_refresh(store: Store, run_jobs: Runner) -> None:
    """The same user refreshes again once the window has moved on (here, 60 s windows)."""
    store.add_persona("p1", "u1", "Coach", "{name}")
    times = iter([MOMENT, MOMENT.replace(second=59), MOMENT.replace(minute=31)])
    results = []
    for cid in ("c1", "c2", "c3"):
        report = await run_jobs(
            completed(conversation(cid)),
            "update_personas",
            persona_window_s=60,
            clock=lambda: next(times),
        )
        results.append(len(report.outcomes))
    assert results == [2, 1, 2]  # refreshed, rate-limited, refreshed
    assert store.query("SELECT window_start, skipped FROM persona_updates ORDER BY 1") == [
        {"window_start": "2026-03-14T09:30:00+00:00", "skipped": 1},
        {"window_start": "2026-03-14T09:31:00+00:00", "skipped": 0},
    ]


async def test_all_seven_jobs_run_for_one_event(store: Store, run_jobs: Runner) -> None:
    """The whole pipeline succeeds for a plain conversation and persists its report."""
    report = await run_jobs(completed(conversation(user=("I love tea.",))))
    assert sorted(o.job for o in report.outcomes) == sorted(JOBS)
    assert report.ok
    save_report(store, report)
    assert [row["job"] for row in outcomes(store, "c1")] == sorted(JOBS)
