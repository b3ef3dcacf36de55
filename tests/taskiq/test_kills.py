"""Real ``afterwork worker`` processes killed mid-flight (issue 11, "Tests and CI").

Each test runs worker processes (``afterwork worker --pipelines
tests.apps.taskiq_jobs:pipeline``) against a real ``redis-server`` of its own, sends with a
``Producer`` from this process, and reads what the jobs did from the runs file they append
to ("start KEY JOB PID TIME" / "end KEY JOB PID TIME"). Needs a real redis-server: it skips
where only fakeredis is available. Every process is stopped by its pid when the test ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

import afterwork as aw
from afterwork.taskiq import Producer, RemoteHandle
from afterwork.testing import wait_until
from tests.apps import taskiq_jobs
from tests.apps.taskiq_jobs import JOBS, Work
from tests.taskiq.conftest import RedisServer

ROOT = Path(__file__).resolve().parents[2]
AFTERWORK = Path(sys.executable).parent / "afterwork"
PIPELINES = "tests.apps.taskiq_jobs:pipeline"
STREAM = "afterwork"
GROUP = "afterwork"
DEAD = "afterwork:dead"
#: Bounds each wait on processes and Redis: a safety net for a broken test, not a measurement.
LIMIT = 60.0
#: A worker process imports taskiq, redis and pydantic: seconds on a loaded machine.
STARTUP_LIMIT = 90.0
#: Bounds a whole scenario, worker restarts included.
SCENARIO_LIMIT = 180.0

#: Each test starts several processes; pytest-timeout's default 60 s is too tight for that.
pytestmark = pytest.mark.timeout(240)


# -- the runs file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    kind: str  # "start" or "end"
    key: str
    job: str
    pid: int
    at: float

    @property
    def item(self) -> tuple[str, str]:
        return (self.key, self.job)


def read_marks(path: Path) -> list[Mark]:
    if not path.exists():
        return []
    marks = []
    for line in path.read_text().splitlines():
        kind, key, job, pid, at = line.split()
        marks.append(Mark(kind, key, job, int(pid), float(at)))
    return marks


def starts(marks: list[Mark]) -> Counter[tuple[str, str]]:
    return Counter(m.item for m in marks if m.kind == "start")


def running_on(marks: list[Mark], pid: int) -> set[tuple[str, str]]:
    """The jobs ``pid`` started and has not finished."""
    started = {m.item for m in marks if m.kind == "start" and m.pid == pid}
    return started - {m.item for m in marks if m.kind == "end" and m.pid == pid}


# -- worker processes -------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    options: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        """The worker's log events (JSON lines on its stdout)."""
        found = []
        for line in self.log.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def logged(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]

    async def started(self) -> None:
        await wait_until(
            lambda: bool(self.logged("worker.started")) or self.proc.poll() is not None,
            f"worker {self.pid} to start",
            limit=STARTUP_LIMIT,
        )
        assert self.proc.poll() is None, f"worker {self.pid} exited: {self.stderr()}"

    async def exited(self) -> int:
        await wait_until(lambda: self.proc.poll() is not None, f"worker {self.pid} to exit",
                         limit=LIMIT, interval=0.01)  # fmt: skip
        return int(self.proc.returncode)

    def stderr(self) -> str:
        return self.log.with_suffix(".err").read_text()


class Workers:
    """Starts ``afterwork worker`` processes; ``stop_all`` kills what is left, by pid."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.runs = tmp_path / "runs.txt"
        self.all: list[WorkerProcess] = []

    def start(
        self, *, max_threads: int = 4, claim_timeout: float = 2, drain_timeout: float = 5
    ) -> WorkerProcess:
        n = len(self.all)
        log = self.tmp_path / f"worker{n}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
               taskiq_jobs.RUNS_ENV: str(self.runs), "TASKIQ_JOBS_JSON_LOGS": "1"}  # fmt: skip
        command = [
            str(AFTERWORK), "worker", "--broker", self.url, "--pipelines", PIPELINES,
            "--max-threads", str(max_threads), "--claim-timeout", str(claim_timeout),
            "--drain-timeout", str(drain_timeout),
        ]  # fmt: skip
        with log.open("wb") as out, log.with_suffix(".err").open("wb") as err:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        worker = WorkerProcess(proc, log, {"max_threads": max_threads,
                                           "drain_timeout": drain_timeout})  # fmt: skip
        self.all.append(worker)
        return worker

    def marks(self) -> list[Mark]:
        return read_marks(self.runs)

    def stop_all(self) -> None:
        for worker in self.all:
            if worker.proc.poll() is None:
                os.kill(worker.pid, signal.SIGKILL)
            worker.proc.wait(timeout=10)


@pytest.fixture
def workers(real_redis: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(real_redis.url, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
async def redis(real_redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(real_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


async def consumers(redis: Redis) -> dict[str, int]:
    """The group's consumers and how many messages each holds."""
    try:
        found = await redis.xinfo_consumers(STREAM, GROUP)
    except ResponseError:
        return {}
    return {_text(c["name"]): int(c["pending"]) for c in found}


def consumer_of(names: dict[str, int], pid: int) -> str | None:
    """A CLI worker's consumer is named "host:pid:suffix"."""
    for name in names:
        if f":{pid}:" in name:
            return name
    return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def held_and_recorded(redis: Redis, consumer: str) -> tuple[list[str], set[tuple[str, str]]]:
    """The messages ``consumer`` holds, and the (key, job) outcomes recorded for them."""
    pending: Any = await redis.xpending_range(STREAM, GROUP, "-", "+", 1000,
                                              consumername=consumer)  # fmt: skip
    held = sorted(_text(p["message_id"]) for p in pending)
    recorded = set()
    for message_id in held:
        entry: Any = await redis.xrange(STREAM, message_id, message_id)
        message = json.loads(entry[0][1][b"data"])
        outcomes: Any = await redis.hgetall(f"afterwork:afterwork:jobs:{message['task_id']}")
        for job, raw in outcomes.items():
            if json.loads(raw)["status"] is not None:
                recorded.add((message["kwargs"]["key"], _text(job)))
    return held, recorded


async def wait_reports(handles: list[RemoteHandle]) -> list[aw.Report]:
    return [await handle.wait(timeout=LIMIT) for handle in handles]


def assert_all_done(reports: list[aw.Report], marks: list[Mark], keys: range) -> None:
    """Every completion's report is ok with its 4 jobs succeeded, and every job ended."""
    assert [r.key for r in reports] == [str(k) for k in keys]
    for report in reports:
        assert report.ok, report
        assert sorted(o.job for o in report.outcomes) == list(JOBS)
        assert all(o.status is aw.JobStatus.SUCCEEDED for o in report.outcomes)
    ended = {m.item for m in marks if m.kind == "end"}
    assert ended == {(str(k), j) for k in keys for j in JOBS}


# -- SIGKILL mid-burst ------------------------------------------------------------------------


async def test_sigkill_mid_burst_loses_nothing_and_reruns_only_the_running_jobs(
    workers: Workers, redis: Redis
) -> None:
    """Three workers (max-threads 4, claim-timeout 2 s) run 60 completions of 4 blocking jobs
    (50-200 ms); one is SIGKILLed half-way through a completion. Every job of every completion
    finishes on the others, each report is ok, the dead worker's messages are all taken over;
    only jobs the victim had started and not recorded start twice (every job running at the
    kill among them, none whose outcome was in Redis), none three times, and at most the
    victim's max_threads (4) of them."""
    pool = [workers.start(max_threads=4, claim_timeout=2) for _ in range(3)]
    for worker in pool:
        await worker.started()
    victim = pool[0]
    with anyio.fail_after(SCENARIO_LIMIT):
        async with Producer(workers.url, pipelines=[taskiq_jobs.pipeline]) as producer:
            handles = [await producer.submit(taskiq_jobs.pipeline, Work(id=i)) for i in range(60)]

            def mid_burst() -> bool:
                """A quarter of the jobs ended, and the victim is half-way through a
                completion: some of its jobs ended, some still run."""
                marks = workers.marks()
                if sum(m.kind == "end" for m in marks) < 60:
                    return False
                running = running_on(marks, victim.pid)
                ended = {m.item for m in marks if m.kind == "end" and m.pid == victim.pid}
                return any((key, job) in ended for key, _ in running for job in JOBS)

            await wait_until(mid_burst, "the victim to run jobs mid-burst", limit=LIMIT,
                             interval=0.002)  # fmt: skip
            os.kill(victim.pid, signal.SIGKILL)
            killed_at, killed_wall = time.monotonic(), time.time()
            assert await victim.exited() == -signal.SIGKILL
            at_kill = workers.marks()
            running_at_kill = running_on(at_kill, victim.pid)
            name = consumer_of(await consumers(redis), victim.pid)
            assert name is not None
            held, recorded = await held_and_recorded(redis, name)
            # Nobody took the victim's messages over while we looked (claim timeout 2 s), so
            # what Redis holds of them is what the victim recorded before it died.
            assert (await held_and_recorded(redis, name))[0] == held

            async def taken_over() -> bool:
                return (await consumers(redis)).get(name, 0) == 0

            while not await taken_over():  # noqa: ASYNC110 (Redis state: no event to await)
                await anyio.sleep(0.01)
            reclaimed_after = time.monotonic() - killed_at
            reports = await wait_reports(handles)
    marks = workers.marks()
    assert_all_done(reports, marks, range(60))
    count = starts(marks)
    twice = {item for item, n in count.items() if n > 1}
    first_start: dict[tuple[str, str], int] = {}
    for mark in marks:
        if mark.kind == "start":
            first_start.setdefault(mark.item, mark.pid)
    finished_unrecorded = sorted(
        f"{key}/{job} ended {killed_wall - at:.3f} s before the kill"
        for kind, key, job, pid, at in (astuple(m) for m in at_kill)
        if kind == "end" and pid == victim.pid and (key, job) in twice
    )
    print(
        f"\nSIGKILL: {len(held)} messages orphaned, taken over {reclaimed_after:.2f} s after "
        f"the kill; {len(running_at_kill)} jobs running at the kill, {len(twice)} started "
        f"twice; finished on the victim but not yet recorded: {finished_unrecorded}"
    )
    assert max(count.values()) <= 2
    assert all(first_start[item] == victim.pid for item in twice)
    assert running_at_kill <= twice  # each job cut by the kill ran again, elsewhere
    assert not twice & recorded  # and no job whose outcome the victim had recorded
    assert len(twice) <= 4, finished_unrecorded  # at most the victim's max_threads
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    for worker in pool[1:]:
        os.kill(worker.pid, signal.SIGTERM)
    for worker in pool[1:]:
        assert await worker.exited() == 0


# -- SIGTERM ----------------------------------------------------------------------------------


async def test_sigterm_stops_idle_and_busy_workers_on_time_and_loses_nothing(
    workers: Workers, redis: Redis
) -> None:
    """Of two workers (drain-timeout 1 s), one idle, one running a completion of four 5 s
    jobs, both sent SIGTERM at once: each exits 0 within drain_timeout + 5 s and leaves the
    group; the busy one's cut completion is handed back and a third worker finishes it (the
    jobs end there only), its report ok."""
    pair = [workers.start(max_threads=4, claim_timeout=2, drain_timeout=1) for _ in range(2)]
    for worker in pair:
        await worker.started()
    with anyio.fail_after(SCENARIO_LIMIT):
        async with Producer(workers.url, pipelines=[taskiq_jobs.pipeline]) as producer:
            handle = await producer.submit(taskiq_jobs.pipeline, Work(id=1, sleep_s=5))
            await wait_until(
                lambda: len({m.item for m in workers.marks() if m.kind == "start"}) == 4,
                "the four jobs to start", limit=LIMIT,
            )  # fmt: skip
            [busy_pid] = {m.pid for m in workers.marks()}
            busy, idle = sorted(pair, key=lambda w: w.pid != busy_pid)
            busy_name = consumer_of(await consumers(redis), busy.pid)
            idle_name = consumer_of(await consumers(redis), idle.pid)
            assert busy_name is not None
            assert idle_name is not None

            signalled = time.monotonic()
            for worker in (idle, busy):
                os.kill(worker.pid, signal.SIGTERM)
            took: dict[int, float] = {}
            while len(took) < 2:
                for worker in (idle, busy):
                    if worker.pid not in took and worker.proc.poll() is not None:
                        took[worker.pid] = time.monotonic() - signalled
                assert time.monotonic() - signalled < LIMIT, "the workers did not exit"
                await anyio.sleep(0.01)
            for worker in (idle, busy):
                assert worker.proc.returncode == 0, worker.stderr()
            left_after_stop = await consumers(redis)
            assert (await redis.xpending(STREAM, GROUP))["pending"] == 1  # handed back

            finisher = workers.start(max_threads=4, claim_timeout=2, drain_timeout=1)
            report = await handle.wait(timeout=LIMIT)
            os.kill(finisher.pid, signal.SIGTERM)
            assert await finisher.exited() == 0
    print(f"\nSIGTERM: idle exited in {took[idle.pid]:.2f} s, busy in {took[busy.pid]:.2f} s")
    assert took[idle.pid] <= 1 + 5
    assert took[busy.pid] <= 1 + 5
    marks = workers.marks()
    assert_all_done([report], marks, range(1, 2))
    assert {m.pid for m in marks if m.kind == "end"} == {finisher.pid}  # cut, then run again
    assert idle_name not in left_after_stop
    assert busy_name not in left_after_stop  # removed, though its cut message was pending
    assert await consumers(redis) == {}


# -- renewed claims ---------------------------------------------------------------------------


async def test_a_completion_longer_than_the_claim_timeout_is_never_stolen(
    workers: Workers, redis: Redis
) -> None:
    """Two worker processes with claim-timeout 1 s: a completion whose jobs each take 4 s
    starts each job exactly once, on one worker; no claim is lost or taken over."""
    pair = [workers.start(max_threads=4, claim_timeout=1) for _ in range(2)]
    for worker in pair:
        await worker.started()
    with anyio.fail_after(LIMIT):
        async with Producer(workers.url, pipelines=[taskiq_jobs.pipeline]) as producer:
            report = await producer.run(taskiq_jobs.pipeline, Work(id=1, sleep_s=4))
    marks = workers.marks()
    assert_all_done([report], marks, range(1, 2))
    assert starts(marks) == Counter({("1", job): 1 for job in JOBS})
    assert len({m.pid for m in marks}) == 1
    for worker in pair:
        assert worker.logged("worker.claim_lost") == []
        os.kill(worker.pid, signal.SIGTERM)
    for worker in pair:
        assert await worker.exited() == 0
        [stopped] = worker.logged("worker.stopped")
        assert stopped["reclaimed"] == 0


# -- poison -----------------------------------------------------------------------------------


async def test_a_poison_message_is_dead_lettered_across_worker_restarts(
    workers: Workers, redis: Redis
) -> None:
    """A completion whose first job kills its worker (os._exit) is run by max_recoveries (3)
    workers in turn, each replaced when it dies, then moved to "afterwork:dead" on its 4th
    delivery with afterwork.poisoned logged and a report with every job failed; the five
    other completions finish, each job at least once, with ok reports."""
    live = [workers.start(max_threads=4, claim_timeout=1) for _ in range(2)]
    deaths: list[int] = []

    async def supervise() -> None:
        while True:
            for worker in list(live):
                code = worker.proc.poll()
                if code is not None:
                    deaths.append(code)
                    live.remove(worker)
                    live.append(workers.start(max_threads=4, claim_timeout=1))
            await anyio.sleep(0.05)

    for worker in live:
        await worker.started()
    with anyio.fail_after(SCENARIO_LIMIT):
        async with (
            Producer(workers.url, pipelines=[taskiq_jobs.pipeline]) as producer,
            anyio.create_task_group() as group,
        ):
            group.start_soon(supervise)
            poison = await producer.submit(taskiq_jobs.pipeline, Work(id=0, crash=True))
            others = [await producer.submit(taskiq_jobs.pipeline, Work(id=i)) for i in range(1, 6)]
            reports = await wait_reports(others)
            poisoned = await poison.wait(timeout=LIMIT)
            group.cancel_scope.cancel()
        survivors = [w for w in live if w.proc.poll() is None]
        for worker in survivors:
            await worker.started()  # its SIGTERM handler is in place
            os.kill(worker.pid, signal.SIGTERM)
        for worker in survivors:
            assert await worker.exited() == 0
    marks = workers.marks()
    assert starts(marks)[("0", "job0")] == 3
    assert deaths == [1, 1, 1]
    assert not poisoned.ok
    assert {o.job: o.status for o in poisoned.outcomes} == dict.fromkeys(JOBS, aw.JobStatus.FAILED)
    # The others, some of which shared a worker with the poison when it died, all finish.
    assert_all_done(reports, [m for m in marks if m.key != "0"], range(1, 6))
    dead_letters: Any = await redis.xrange(DEAD)
    [(_, dead)] = dead_letters
    assert json.loads(dead[b"data"])["task_id"] == poison.id
    assert dead[b"deliveries"] == b"4"
    logged = [e for w in workers.all for e in w.logged("afterwork.poisoned")]
    assert [(e["key"], e["deliveries"]) for e in logged] == [("0", 4)]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
