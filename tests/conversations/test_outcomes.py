"""The processing record (due reports, outcomes) and what a restart recovers from the journal."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import afterwork as aw
from afterwork import _journal
from afterwork.conversations import PIPELINE, Store
from afterwork.conversations._outcomes import outcomes, processing, receive, save_report, withdraw
from afterwork.conversations._recovery import ERROR_NOT_KEPT, recover

from .conftest import completed, conversation


def report(*jobs: tuple[str, str], replayed: bool = False, key: str = "c1") -> aw.Report:
    return aw.Report(
        pipeline=PIPELINE,
        key=key,
        ok=all(status in ("succeeded", "skipped") for _, status in jobs),
        outcomes=tuple(
            aw.JobOutcome(job=job, status=status, attempts=1, duration_s=0.5)
            for job, status in jobs
        ),
        replayed=replayed,
    )


def statuses(store: Store, key: str = "c1") -> dict[str, str]:
    return {row["job"]: row["status"] for row in outcomes(store, key)}


def test_a_replayed_report_is_merged_into_the_earlier_outcomes(store: Store) -> None:
    """A replayed report updates only its own jobs; the ones recorded before stay."""
    receive(store, completed(conversation()))
    save_report(store, report(("extract_memories", "succeeded"), ("extract_trends", "cancelled")))
    assert store.count("reports_due") == 1  # a job was cancelled: the replay will settle it
    save_report(store, report(("extract_trends", "succeeded"), replayed=True))
    assert statuses(store) == {"extract_memories": "succeeded", "extract_trends": "succeeded"}
    assert store.count("reports_due") == 0


def test_a_fresh_report_replaces_the_outcomes(store: Store) -> None:
    """A new run (a reprocess) shows what it did, not what an earlier run left."""
    receive(store, completed(conversation()))
    save_report(
        store, report(("save_action_items", "succeeded"), ("save_action_items/x", "failed"))
    )
    receive(store, completed(conversation(), reprocess=True))
    save_report(store, report(("save_action_items", "succeeded")))
    assert statuses(store) == {"save_action_items": "succeeded"}
    assert store.count("reports_due") == 0


def test_a_refused_admission_is_withdrawn(store: Store) -> None:
    """After a 503 the conversation is not shown as processing."""
    receive(store, completed(conversation()))
    withdraw(store, "c1")
    record = processing(store, "c1")
    assert record is not None
    assert (record.due, record.outcomes) == (False, [])
    assert processing(store, "nope") is None


def write_journal(path: Path, rows: dict[str, dict[str, str | None]]) -> None:
    """A journal as the dispatcher leaves it at a crash: ``{key: {job: status or None}}``."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(_journal._SCHEMA)
        for key, jobs in rows.items():
            _journal.admit(f"id-{key}", PIPELINE, key, "{}")(conn)
            for job, status in jobs.items():
                if status is None:
                    _journal.job_started(f"id-{key}", job)(conn)
                else:
                    _journal.job_finished(f"id-{key}", job, status, 2)(conn)


def test_recovery_copies_the_outcomes_finished_before_a_crash(store: Store, tmp_path: Path) -> None:
    """Jobs that finished before a crash get their journal status; the rest wait for replay."""
    journal = tmp_path / "j.db"
    receive(store, completed(conversation("c1")))
    write_journal(journal, {"c1": {"extract_memories": "succeeded", "save_structured_vector":
                                   "failed", "update_personas/p1": None}})  # fmt: skip
    assert recover(store, journal, PIPELINE) == []
    assert outcomes(store, "c1") == [
        {"job": "extract_memories", "status": "succeeded", "attempts": 2, "duration_s": 0.0,
         "error": None},
        {"job": "save_structured_vector", "status": "failed", "attempts": 2, "duration_s": 0.0,
         "error": ERROR_NOT_KEPT},
    ]  # fmt: skip
    assert store.query("SELECT conversation_id, admissions FROM reports_due") == [
        {"conversation_id": "c1", "admissions": 1}
    ]


def test_recovery_resubmits_a_conversation_whose_report_was_lost(
    store: Store, tmp_path: Path
) -> None:
    """Due, but gone from the journal: its report was lost after its jobs ran; run it again."""
    journal = tmp_path / "j.db"
    event = completed(conversation("c2"), reprocess=True)
    receive(store, event)
    receive(store, event)  # two admissions, both finished and unreported
    write_journal(journal, {})
    assert recover(store, journal, PIPELINE) == [event]
    assert store.query("SELECT conversation_id, admissions FROM reports_due") == [
        {"conversation_id": "c2", "admissions": 1}
    ]


def test_without_a_journal_nothing_stays_due(store: Store) -> None:
    """With the journal off, work in flight at a crash is gone: nothing shows as processing."""
    receive(store, completed(conversation()))
    assert recover(store, None, PIPELINE) == []
    assert store.count("reports_due") == 0


def test_recovery_leaves_a_file_that_is_not_a_journal_to_the_dispatcher(
    store: Store, tmp_path: Path
) -> None:
    """A file that is not a journal recovers nothing here; the dispatcher refuses it at start."""
    journal = tmp_path / "j.db"
    journal.write_text("not a database")
    receive(store, completed(conversation()))
    assert len(recover(store, journal, PIPELINE)) == 1
    assert journal.read_text() == "not a database"
