"""A worker's local dispatcher, and the recorder that keeps job outcomes in Redis.

Each worker runs the completions it receives in a ``Dispatcher`` of its own, so its thread
budget, isolation, timeouts, retries, lanes and drain are the library's (G1-G5, G7-G9). Two
things differ from a dispatcher in one process:

- outcomes go to Redis as they happen (``RedisRecorder``): a hash per completion, job ->
  outcome, so a completion delivered again re-runs only its unfinished jobs, by the journal's
  replay rules;
- the worker admits a completion only when it can start it now (``wait_for_capacity``), and
  with what Redis recorded of it before (``admit_received``).

The recorder's methods are called on the loop and must not wait: they queue writes, which
the worker's writer task applies in order (see ``Worker``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from afterwork import _codec
from afterwork._completion import Completion, Plan
from afterwork._dispatcher import Dispatcher
from afterwork._exceptions import Overloaded
from afterwork._journal_db import JobRecord, Row
from afterwork._models import JobOutcome, JobStatus, Report
from afterwork._pipeline import Pipeline
from afterwork._replay import context_with, plan_of
from afterwork._runtime import Durable, Recorder

from . import _wire

#: A queued write: ("spawn" or "job", completion id, job, record JSON), or ("finish", id,
#: Report). A "job" write is a final outcome.
Write = tuple[str, str, Any, Any]


class Unstored:
    """Final job outcomes queued for Redis and not stored yet.

    A job's thread, holding its token, waits until there are none before it runs the job
    (``ThreadBudget.before_call``). A SIGKILL re-runs the jobs whose outcome Redis lacks:
    those running, and those that ended while their outcome was on its way. With the wait,
    each token accounts for at most one of them, so the re-runs stay within ``max_threads``.
    The wait is bounded (``limit_s``): with Redis unreachable, jobs go on and the bound is lost
    rather than the work.
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._count = 0
        self._changed = threading.Condition()

    def add(self) -> None:
        with self._changed:
            self._count += 1

    def stored(self, count: int) -> None:
        with self._changed:
            self._count -= count
            if self._count <= 0:
                self._count = 0
                self._changed.notify_all()

    def wait(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._count == 0, timeout=self.limit_s)


class RedisRecorder:
    """Queues a Redis write for each spawn, final outcome and finished completion."""

    encodes_events = False  # the message already carries the event, encoded

    def __init__(self, put: Callable[[Write], None], unstored: Unstored) -> None:
        self._put = put
        self._unstored = unstored

    def admitted(self, completion: Completion) -> Durable | None:
        return None  # the message is in Redis already

    def started(self, completion: Completion) -> Durable | None:
        return None  # Redis counts deliveries instead (a poison is delivered too often)

    def child_spawned(self, completion: Completion, job: str) -> None:
        self._put(("spawn", completion.id, job, _wire.dumps({"status": None})))

    def job_finished(self, completion: Completion, outcome: JobOutcome) -> None:
        if outcome.status.is_final:
            record = outcome.model_dump(mode="json", include={"status", "attempts",
                                                               "duration_s", "error"})  # fmt: skip
            self._unstored.add()
            self._put(("job", completion.id, outcome.job, _wire.dumps(record)))

    def completion_finished(
        self, completion: Completion, report: Report, followups: list[Completion]
    ) -> None:
        assert not followups, "a worker's dispatcher parks nothing (max_delayed=0)"
        self._put(("finish", completion.id, report, None))

    def interrupted(self, completion: Completion) -> None:
        pass  # its message stays pending: released to the other workers at stop


def jobs_of(hash_value: dict[bytes, bytes]) -> dict[str, JobRecord]:
    """The job records of a completion, from its Redis hash."""
    records = {}
    for raw_job, raw in hash_value.items():
        job = raw_job.decode()
        info = json.loads(raw)
        status = JobStatus(info["status"]) if info.get("status") else None
        records[job] = JobRecord(
            job,
            status if status is not None and status.is_final else None,
            int(info.get("attempts") or 0),
            float(info.get("duration_s") or 0.0),
            info.get("error"),
        )
    return records


def plan_from(pipeline: Pipeline[Any], records: dict[str, JobRecord]) -> Plan | None:
    """What a delivered completion has left to run; None for a first delivery."""
    if not records:
        return None
    row = Row(id="", pipeline=pipeline.name, key="", event=b"", context={}, admitted_at=0.0)
    row.jobs = records
    return plan_of(pipeline, row)


class WorkerDispatcher(Dispatcher):
    """A ``Dispatcher`` recording in Redis, taking work only when it can start it."""

    def __init__(
        self, recorder: Recorder, before_call: Callable[[], None] | None = None, **options: Any
    ) -> None:
        self._worker_recorder = recorder
        self._before_call = before_call
        super().__init__(**options)

    def _make_recorder(self) -> Recorder:
        return self._worker_recorder

    async def wait_for_capacity(self) -> None:
        """Wait until one more completion would start at once (fair dispatch)."""
        assert self._host is not None
        await self._host.wait_for_capacity()

    def admit_received(
        self, pipeline: Pipeline[Any], message: _wire.Completion, plan: Plan | None
    ) -> Completion:
        """Admit the completion a message carries, resuming what Redis recorded of it.

        Raises what decoding the event raises (it no longer validates), and ``Overloaded``
        if there is no room (the caller waits for capacity first, so there always is).
        """
        host = self._open_host(pipeline)
        assert host.runtime is not None
        host.runtime.budget.before_call = self._before_call
        event = _codec.decode(pipeline.event, message.event)
        completion = Completion(
            host.runtime,
            pipeline,
            event,
            message.key,
            plan=plan if plan is not None else Plan(),
            completion_id=message.id,
            context=context_with(message.context),
        )
        if not host.admission.take_room_nowait():
            raise Overloaded(
                f"no room for {message.label}: wait_for_capacity() first",
                pending=len(host.admission.pending),
                max_pending=self.max_pending,
            )
        host.counters.admitted += 1
        host.admit(completion)
        return completion
