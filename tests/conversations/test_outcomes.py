"""The processing record: outcomes saved as reports land, merged for replays and follow-ups."""

from __future__ import annotations

from datetime import UTC, datetime

import afterwork as aw
from afterwork.conversations import PIPELINE, Store
from afterwork.conversations._outcomes import outcomes, processing, receive, save_report

from .conftest import completed, conversation


def report(
    *jobs: tuple[str, str], replayed: bool = False, followup: bool = False, key: str = "c1"
) -> aw.Report:
    return aw.Report(
        pipeline=PIPELINE,
        key=key,
        ok=all(aw.JobStatus(status).is_ok for _, status in jobs),
        outcomes=tuple(
            aw.JobOutcome(job=job, status=aw.JobStatus(status), attempts=1, duration_s=0.5)
            for job, status in jobs
        ),
        replayed=replayed,
        followup=followup,
    )


def statuses(store: Store, key: str = "c1") -> dict[str, str]:
    return {row["job"]: row["status"] for row in outcomes(store, key)}


def test_a_replayed_report_is_merged_into_the_earlier_outcomes(store: Store) -> None:
    """A replayed report updates only its own jobs; the ones recorded before stay."""
    receive(store, completed(conversation()))
    save_report(store, report(("extract_memories", "succeeded"), ("extract_trends", "cancelled")))
    save_report(store, report(("extract_trends", "succeeded"), replayed=True))
    assert statuses(store) == {"extract_memories": "succeeded", "extract_trends": "succeeded"}


def test_a_followup_report_replaces_only_its_deferred_job(store: Store) -> None:
    """A parked job's outcome, then its follow-up's: the other jobs keep their outcomes."""
    receive(store, completed(conversation()))
    retry_at = datetime(2026, 1, 1, tzinfo=UTC)
    deferred = aw.JobOutcome(
        job="conversation_created_webhook",
        status=aw.JobStatus.DEFERRED,
        attempts=2,
        duration_s=0.1,
        error="RetryLater: retry in 60 s",
        retry_at=retry_at,
    )
    first = report(("extract_memories", "succeeded"))
    save_report(store, first.model_copy(update={"outcomes": (*first.outcomes, deferred)}))
    rows = {row["job"]: row for row in outcomes(store, "c1")}
    assert rows["conversation_created_webhook"]["retry_at"] == retry_at.isoformat()
    save_report(store, report(("conversation_created_webhook", "succeeded"), followup=True))
    assert statuses(store) == {
        "extract_memories": "succeeded",
        "conversation_created_webhook": "succeeded",
    }


def test_a_fresh_report_replaces_the_outcomes(store: Store) -> None:
    """A new run (a reprocess) shows what it did, not what an earlier run left."""
    receive(store, completed(conversation()))
    save_report(
        store, report(("save_action_items", "succeeded"), ("save_action_items/x", "failed"))
    )
    receive(store, completed(conversation(), reprocess=True))
    save_report(store, report(("save_action_items", "succeeded")))
    assert statuses(store) == {"save_action_items": "succeeded"}


def test_processing_is_none_for_a_conversation_never_received(store: Store) -> None:
    """An unknown id has no record; a received one has its (possibly empty) outcomes."""
    receive(store, completed(conversation()))
    assert processing(store, "c1") == []
    assert processing(store, "nope") is None
