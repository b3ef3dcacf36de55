"""scaleout: the Redis scale-out, with real ``afterwork worker`` processes on loopback.

One run (a fresh interpreter, like every benchmark run) starts a ``redis-server`` of its own
on a free port and four worker processes with ``--max-threads 4 --claim-timeout 2``, running
``_scaleout_jobs``: completions of two blocking jobs that sleep 200 ms each, so a worker's
ceiling is its thread budget (20 jobs/s) and four workers leave two CPUs mostly idle.
Each worker does its imports and then waits at a gate of its own: the run joins them to the
queue one by one, when it needs them, so no measurement includes a worker's start-up (seconds
of imports on a busy machine). Then, in order:

1. submit latency: ``await Producer.submit`` one at a time to a queue no worker reads,
   alternating in blocks with ``await Dispatcher.submit`` to a local dispatcher with the same
   pipeline and thread budget;
2. a burst on 1 worker: jobs per second between the 10th and the 90th percentile of the job
   ends, and not before the last submit;
3. a burst on that worker; once a third of its jobs ended, a second worker is released. The
   rate from the second worker's first job end to the 95th percentile of the ends, against
   the rate before the release;
4. a burst on 2 workers, then on 4;
5. two workers stopped (SIGTERM), a burst on the other two; one is SIGKILLed once a third
   of the jobs ended, while it runs jobs, and nothing more is sent. Timed from the kill until
   XPENDING shows none of its messages still on it; jobs started twice are counted from the
   runs file.

A smoke run starts two workers and skips the burst on four. The OS threads of every worker
process (``/proc/PID/status``) are sampled throughout.
"""

from __future__ import annotations

import ctypes
import importlib.util
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

import afterwork as aw

from ._harness import (
    ROOT,
    Config,
    Result,
    Section,
    Target,
    figure,
    fmt,
    med,
    median,
    percentile,
    run_interleaved,
    table,
)
from ._report import cores
from ._scaleout_jobs import GATE_ENV, JOBS, RUNS_ENV, Burst, pipeline

MAX_THREADS = 4
# A worker spends some milliseconds of CPU on each job (its Redis round trips and the
# dispatch); at 200 ms a job, four workers need a fraction of one core even on a shared
# machine, so what is measured is the scale-out, not the competition for the CPUs.
JOB_S = 0.2
#: The most jobs per second one worker can run: its thread budget over the job's sleep.
CEILING = MAX_THREADS / JOB_S
CLAIM_TIMEOUT_S = 2.0
#: Workers stopped with SIGTERM have nothing left to drain; this only bounds their exit.
DRAIN_TIMEOUT_S = 5.0
WORKER_COUNTS = (1, 2, 4)
QUEUE = "afterwork"
#: The latency measurement's queue, which no worker reads: its messages stay in the stream.
LATENCY_QUEUE = "latency"
LATENCY_BLOCKS = 8
LATENCY_WARMUP = 50
#: Concurrent submitters of a burst: the burst is in Redis long before the workers finish it.
SUBMITTERS = 8
#: A safety net for each wait (a hung worker, a broken Redis), never a measurement.
LIMIT_S = 180.0
#: How often the driver polls the runs file and Redis: often enough to time a takeover to
#: 10 ms, seldom enough to leave the CPUs to the workers.
POLL_S = 0.01
THREADS_SAMPLE_S = 0.02
#: Points kept of each burst's timeline for the plot.
TIMELINE_POINTS = 300
PR_SET_PDEATHSIG = 1


# -- the runs file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    kind: str  # "start" or "end"
    burst: str
    key: str
    job: str
    pid: int
    at: float

    @property
    def item(self) -> tuple[str, str]:
        return (self.key, self.job)


class Runs:
    """The jobs' runs file, read incrementally: each poll parses only what was appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._marks: list[Mark] = []
        self._bursts: dict[str, list[Mark]] = {}

    def marks(self) -> list[Mark]:
        if not self.path.exists():
            return self._marks
        with self.path.open("rb") as runs:
            runs.seek(self._offset)
            data = runs.read()
        # A line being appended right now is left for the next read.
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            kind, key, job, pid, at = line.split()
            burst = key.rpartition("-")[0]
            mark = Mark(kind, burst, key, job, int(pid), float(at))
            self._marks.append(mark)
            self._bursts.setdefault(burst, []).append(mark)
        return self._marks

    def of(self, burst: str) -> list[Mark]:
        self.marks()
        return self._bursts.get(burst, [])


def ended(marks: list[Mark]) -> int:
    """Distinct jobs that ran to their end (a job run twice counts once)."""
    return len({m.item for m in marks if m.kind == "end"})


def running_on(marks: list[Mark], pid: int) -> set[tuple[str, str]]:
    """The jobs ``pid`` started and did not end."""
    started = {m.item for m in marks if m.kind == "start" and m.pid == pid}
    return started - {m.item for m in marks if m.kind == "end" and m.pid == pid}


def end_times(marks: list[Mark]) -> list[float]:
    """When each job first ended, in order (a job run twice counts once)."""
    first: dict[tuple[str, str], float] = {}
    for m in marks:
        if m.kind == "end":
            first[m.item] = min(m.at, first.get(m.item, m.at))
    return sorted(first.values())


def at_fraction(times: list[float], q: float) -> float:
    """The time by which the fraction ``q`` of the sorted ``times`` had passed."""
    return times[min(len(times) - 1, max(0, round(q * len(times)) - 1))]


def rate(times: list[float], start: float, stop: float) -> float:
    """Events per second over [start, stop]: the slope of the events counted against time.

    Jobs that start together end together, in waves of up to a worker's max_threads; counting
    the ends between two of them would gain or lose most of a wave depending on where in
    their waves the bounds fall. The slope of the whole staircase does not. NaN for a window
    too short to tell.
    """
    window = [(t, i) for i, t in enumerate(times) if start <= t <= stop]
    if len(window) < 3 or window[-1][0] <= window[0][0]:
        return float("nan")
    at, count = [t for t, _ in window], [i for _, i in window]
    return statistics.linear_regression(at, count).slope


def timeline(times: list[float], origin: float) -> list[list[float]]:
    """Jobs ended by each time, from ``origin``, thinned to at most TIMELINE_POINTS."""
    step = max(1, len(times) // TIMELINE_POINTS)
    points = [[t - origin, i + 1] for i, t in enumerate(times) if i % step == 0]
    if times:
        points.append([times[-1] - origin, len(times)])
    return [[0.0, 0], *points]


# -- processes --------------------------------------------------------------------------------


def _dies_with_parent() -> Callable[[], None] | None:
    """What a started process runs before exec so that it is SIGKILLed if the run that
    started it dies: the harness kills a run that hangs, and its Redis and workers must not
    outlive it. None where there is no prctl (not Linux)."""
    if sys.platform != "linux":
        return None
    # Looked up here, not in the forked process, where it could need a lock held at the fork.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return set_death_signal


PREEXEC = _dies_with_parent()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _afterwork() -> list[str]:
    """The ``afterwork`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "afterwork"
    return [str(script)] if script.exists() else [sys.executable, "-m", "afterwork.cli"]


def _threads(pid: int) -> int:
    """The OS threads of process ``pid`` now; 0 if it is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used; NaN without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # After the command's name, which is in parentheses and may hold spaces.
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    gate: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class ThreadCounts:
    """The most OS threads each worker process had at once, sampled from a thread of its
    own (the driver blocks in its waits and submits)."""

    peak: dict[int, int] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._sample, name="scaleout-threads", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(THREADS_SAMPLE_S):
            for pid in list(self.pids):
                count = _threads(pid)
                self.peak[pid] = max(self.peak.get(pid, 0), count)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- one run ----------------------------------------------------------------------------------


class Cluster:
    """A redis-server and worker processes of one run; leaving kills them all, by pid."""

    def __init__(self, tmp: Path, redis_server: str, params: dict[str, Any]) -> None:
        from redis import Redis

        self.tmp = tmp
        self.params = params
        self.runs = Runs(tmp / "runs.txt")
        port = _free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        command = [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--daemonize", "no", "--dir", str(tmp)]  # fmt: skip
        self.redis_proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=PREEXEC
        )
        # A timeout, so that a Redis that stops answering fails the run instead of hanging it.
        self.redis = Redis.from_url(self.url, socket_timeout=30)
        self.workers: list[WorkerProcess] = []
        self.live: list[WorkerProcess] = []  # those expected to be running
        self.threads = ThreadCounts()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.threads.stop()
        for worker in self.workers:
            if worker.proc.poll() is None:
                os.kill(worker.pid, signal.SIGKILL)  # the run is over: nothing to drain
            worker.proc.wait(timeout=30)
        self.redis.close()
        self.redis_proc.terminate()
        self.redis_proc.wait(timeout=30)

    # -- waiting --

    def until(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + LIMIT_S
        while not predicate():
            for worker in self.live:
                if worker.proc.poll() is not None:
                    raise RuntimeError(
                        f"scaleout: worker {worker.pid} exited ({worker.proc.returncode}) "
                        f"while waiting for {what}\n--- its log ---\n{worker.tail()}"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"scaleout: timed out after {LIMIT_S:g} s waiting for {what}")
            time.sleep(POLL_S)

    def _redis_up(self) -> bool:
        from redis.exceptions import ConnectionError as RedisConnectionError

        if self.redis_proc.poll() is not None:
            raise RuntimeError(f"scaleout: redis-server exited ({self.redis_proc.returncode})")
        try:
            return bool(self.redis.ping())
        except RedisConnectionError:
            return False

    def consumers(self) -> dict[str, int]:
        """The group's consumers and how many messages each holds."""
        from redis.exceptions import ResponseError

        try:
            found: Any = self.redis.xinfo_consumers(QUEUE, "afterwork")
        except ResponseError:  # no stream or group yet
            return {}
        return {_text(c["name"]): int(c["pending"]) for c in found}

    def consumer_of(self, pid: int) -> str | None:
        """A CLI worker's consumer is named "host:pid:suffix"."""
        return next((name for name in self.consumers() if f":{pid}:" in name), None)

    def wait_done(self, burst: str, jobs: int) -> None:
        """Until every job of ``burst`` ended and every message was acknowledged."""

        def done() -> bool:
            if ended(self.runs.of(burst)) < jobs:
                return False
            summary: Any = self.redis.xpending(QUEUE, "afterwork")
            return int(summary["pending"]) == 0

        self.until(done, f"the end of burst {burst}")

    # -- workers --

    def spawn(self) -> WorkerProcess:
        """A worker process that does its imports, then waits for ``release``."""
        n = len(self.workers)
        log, gate = self.tmp / f"worker{n}.log", self.tmp / f"gate{n}"
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "PYTHONPATH": path, RUNS_ENV: str(self.runs.path),
               GATE_ENV: str(gate)}  # fmt: skip
        command = [*_afterwork(), "worker", "--broker", self.url,
                   "--pipelines", "benchmarks._scaleout_jobs:gated_pipeline",
                   "--max-threads", str(MAX_THREADS), "--claim-timeout", str(CLAIM_TIMEOUT_S),
                   "--drain-timeout", str(DRAIN_TIMEOUT_S)]  # fmt: skip
        with log.open("wb") as sink:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink,
                                    stderr=subprocess.STDOUT, preexec_fn=PREEXEC)  # fmt: skip
        worker = WorkerProcess(proc, log, gate)
        self.workers.append(worker)
        self.live.append(worker)
        self.threads.pids.append(worker.pid)
        return worker

    def release(self, worker: WorkerProcess) -> None:
        """Open a worker's gate; it connects and joins the group (wait for that with
        ``joined``)."""
        worker.gate.touch()

    def joined(self, worker: WorkerProcess) -> bool:
        return self.consumer_of(worker.pid) is not None

    def stop(self, worker: WorkerProcess, sig: signal.Signals) -> None:
        self.live.remove(worker)
        # Its pid may be reused once it is reaped: sample it no more.
        self.threads.pids.remove(worker.pid)
        os.kill(worker.pid, sig)

    # -- sending --

    def send(self, burst: str, completions: int) -> float:
        """Submit a burst through a Producer; return the time the last submit returned."""
        from afterwork.taskiq import Producer

        async def main() -> None:
            ids = iter(range(completions))
            async with Producer(
                self.url, pipelines=[pipeline], queue=QUEUE, max_pending=completions + 1000
            ) as producer:

                async def submitter() -> None:
                    for i in ids:
                        await producer.submit(pipeline, Burst(burst=burst, id=i, sleep_s=JOB_S))

                async with anyio.create_task_group() as group:
                    for _ in range(SUBMITTERS):
                        group.start_soon(submitter)

        anyio.run(main)
        return time.time()

    # -- the measurements --

    def start(self) -> Result:
        """Redis up, and every worker waiting at its gate, its imports done."""
        self.until(self._redis_up, "answer from redis-server")
        launched = time.perf_counter()
        self.pool = [self.spawn() for _ in range(self.params["pool"])]
        waiting = [Path(f"{w.gate}.waiting") for w in self.pool]
        self.until(lambda: all(path.exists() for path in waiting), "the workers at their gates")
        return {"startup_s": time.perf_counter() - launched}

    def grow(self, to: int) -> None:
        """Release workers until ``to`` are in the group, then warm them up."""
        for worker in self.pool[:to]:
            self.release(worker)
        self.until(lambda: all(self.joined(w) for w in self.pool[:to]), f"{to} workers in")
        # Threads started and code warm: the measured burst is no slower for coming first.
        self.throughput(f"warmup{to}", to, self.params["warmup_jobs"])

    def latency(self) -> Result:
        """``await submit`` one at a time: Producer and local Dispatcher, in turns."""
        from afterwork.taskiq import Producer

        block = max(1, self.params["submits"] // LATENCY_BLOCKS)

        async def main() -> Result:
            remote: list[float] = []
            local: list[float] = []
            room = LATENCY_WARMUP + LATENCY_BLOCKS * block  # every submit of a side admitted
            events = (Burst(burst="latency", id=i, sleep_s=JOB_S) for i in itertools.count())
            async with (
                Producer(self.url, pipelines=[pipeline], queue=LATENCY_QUEUE,
                         max_pending=room) as producer,
                aw.Dispatcher(max_threads=MAX_THREADS, max_pending=room,
                              drain_timeout=0) as dispatcher,
            ):  # fmt: skip
                for _ in range(LATENCY_WARMUP):
                    await producer.submit(pipeline, next(events))
                    await dispatcher.submit(pipeline, next(events))
                for _ in range(LATENCY_BLOCKS):
                    for submit, into in ((producer.submit, remote), (dispatcher.submit, local)):
                        for _ in range(block):
                            event = next(events)
                            began = time.perf_counter()
                            await submit(pipeline, event)
                            into.append(time.perf_counter() - began)
            return {
                "producer_p50_us": percentile(remote, 50) * 1e6,
                "producer_p99_us": percentile(remote, 99) * 1e6,
                "local_p50_us": percentile(local, 50) * 1e6,
                "local_p99_us": percentile(local, 99) * 1e6,
            }

        return anyio.run(main)

    def throughput(self, burst: str, workers: int, per_worker: int) -> Result:
        """Jobs/s of a burst of ``per_worker`` jobs per worker (as long on any number), and
        the CPU the workers and Redis spent per job."""
        jobs = per_worker * workers
        pids = [w.pid for w in self.pool[:workers]]
        cpu = [_cpu_s(pid) for pid in pids], _cpu_s(self.redis_proc.pid)
        sent = self.send(burst, jobs // len(JOBS))
        self.wait_done(burst, jobs)
        workers_cpu = sum(_cpu_s(pid) for pid in pids) - sum(cpu[0])
        redis_cpu = _cpu_s(self.redis_proc.pid) - cpu[1]
        times = end_times(self.runs.of(burst))
        # From the 10th percentile (every thread busy) but not while submits still take CPU,
        # to the 90th (before the last jobs leave threads idle).
        return {
            f"rate{workers}": rate(times, max(at_fraction(times, 0.1), sent),
                                   at_fraction(times, 0.9)),
            f"worker_cpu_ms{workers}": workers_cpu / jobs * 1e3,
            f"redis_cpu_ms{workers}": redis_cpu / jobs * 1e3,
        }  # fmt: skip

    def shrink(self, to: int) -> None:
        """Stop workers with SIGTERM (they drain nothing: no burst runs) down to ``to``."""
        leaving = self.pool[to:]
        for worker in leaving:
            self.stop(worker, signal.SIGTERM)
        self.until(
            lambda: all(w.proc.poll() is not None for w in leaving), "stopped workers to exit"
        )
        self.until(lambda: len(self.consumers()) == to, f"{to} workers left in the group")
        self.pool = self.pool[:to]

    def kill(self) -> Result:
        """SIGKILL one of two workers mid-burst; time the takeover, count jobs run twice."""
        victim = self.pool[0]
        jobs = self.params["kill_jobs"]
        began = time.time()
        self.send("kill", jobs // len(JOBS))
        name = self.consumer_of(victim.pid)
        assert name is not None

        def mid_burst() -> bool:
            marks = self.runs.of("kill")
            if ended(marks) == jobs:
                raise RuntimeError("scaleout: the kill burst ended before the victim was busy")
            return ended(marks) >= jobs // 3 and bool(running_on(marks, victim.pid))

        self.until(mid_burst, "the victim running jobs a third into the burst")
        killed_at = time.time()
        self.stop(victim, signal.SIGKILL)
        victim.proc.wait(timeout=LIMIT_S)
        held = self.consumers().get(name, 0)
        self.until(lambda: self.consumers().get(name, 0) == 0, "the victim's messages taken")
        reclaimed_s = time.time() - killed_at
        self.wait_done("kill", jobs)
        self.pool = self.pool[1:]
        marks = self.runs.of("kill")
        cut = running_on(marks, victim.pid)
        starts = Counter(m.item for m in marks if m.kind == "start")
        restarts = [m.at for m in marks if m.kind == "start" and m.item in cut and m.at > killed_at]
        # Jobs that had ended on the victim and still ran again: their outcome was not in
        # Redis when the message was taken over. How long before the kill they ended:
        rerun_ended = [killed_at - m.at for m in marks if m.kind == "end" and m.pid == victim.pid
                       and starts[m.item] > 1]  # fmt: skip
        times = end_times(marks)
        return {
            "reclaim_s": reclaimed_s,
            "held": held,
            "cut": len(cut),
            "twice": sum(n - 1 for n in starts.values()),
            "twice_not_cut": len(rerun_ended),
            "rerun_ended_ms": max(rerun_ended, default=0.0) * 1e3,
            "restarted_s": max(restarts) - killed_at if restarts else float("nan"),
            "kill_timeline": timeline(times, began),
            "kill_at_s": killed_at - began,
        }

    def join(self) -> Result:
        """A burst on one worker; a second one released a third of the way through."""
        joining = self.pool[1]
        jobs = self.params["join_jobs"]
        began = time.time()
        sent = self.send("join", jobs // len(JOBS))
        self.until(lambda: ended(self.runs.of("join")) >= jobs // 3, "a third of the burst")
        released = time.time()
        self.release(joining)
        self.until(lambda: self.joined(joining), "the second worker in the group")
        joined = time.time()
        self.wait_done("join", jobs)
        marks = self.runs.of("join")
        times = end_times(marks)
        theirs = [m.at for m in marks if m.kind == "end" and m.pid == joining.pid]
        stop = at_fraction(times, 0.95)
        after = float("nan")
        share = float("nan")
        if theirs and min(theirs) < stop:
            start = min(theirs)  # both workers' threads busy from here on
            after = rate(times, start, stop)
            in_window = [m for m in marks if m.kind == "end" and start < m.at <= stop]
            share = sum(m.pid == joining.pid for m in in_window) / len(in_window)
        before = rate(times, max(at_fraction(times, 0.1), sent), released)
        first_start = min(
            (m.at for m in marks if m.kind == "start" and m.pid == joining.pid), default=joined
        )
        return {
            "join_before": before,
            "join_after": after,
            "join_ratio": after / before,
            "join_share": share,
            "join_delay_s": first_start - released,
            "join_timeline": timeline(times, began),
            "join_released_s": released - began,
        }

    def duplicates_elsewhere(self) -> int:
        """Jobs started more than once outside the kill burst (a claim lost under load)."""
        starts = Counter(m.item for m in self.runs.marks() if m.kind == "start")
        return sum(n - 1 for (key, _), n in starts.items() if not key.startswith("kill-"))


def _measure(tmp: Path, redis_server: str, params: dict[str, Any]) -> Result:
    with Cluster(tmp, redis_server, params) as cluster:
        result = cluster.start()
        result.update(cluster.latency())
        per_worker, pool = params["jobs_per_worker"], params["pool"]
        cluster.grow(1)
        result.update(cluster.throughput("w1", 1, per_worker))
        result.update(cluster.join())
        result.update(cluster.throughput("w2", 2, per_worker))
        if pool > 2:
            cluster.grow(pool)
            result.update(cluster.throughput(f"w{pool}", pool, per_worker))
            cluster.shrink(2)
        result.update(cluster.kill())
        result["duplicates_elsewhere"] = cluster.duplicates_elsewhere()
        # Over every worker; 0 only without /proc.
        result["threads_max"] = max(cluster.threads.peak.values(), default=0)
        # The machine's load over the last minute: a shared machine's waits show in the
        # round trips (submit latency) more than in sleep-bound throughput.
        result["load"] = os.getloadavg()[0]
        return result


def measure(peer: str, params: dict[str, Any]) -> Result:
    redis_server = shutil.which("redis-server")
    assert redis_server is not None, "run() checks for redis-server first"
    with tempfile.TemporaryDirectory(prefix="afterwork-scaleout-") as tmp:
        return _measure(Path(tmp), redis_server, params)


# -- the section ------------------------------------------------------------------------------


def _missing() -> str | None:
    """Why this benchmark cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return "no `redis-server` on PATH (the workers need a real Redis)"
    if importlib.util.find_spec("taskiq") is None or importlib.util.find_spec("redis") is None:
        return "afterwork[taskiq] is not installed"
    return None


def _sizes(params: dict[str, Any]) -> str:
    return (
        f"up to {params['pool']} workers, bursts of {params['jobs_per_worker']} jobs per "
        f"worker, {params['kill_jobs']} jobs around the kill, {params['join_jobs']} around "
        f"the join, {params['submits']:,} submits per side"
    )


def run(config: Config) -> Section:
    params = {
        # A smoke run starts 2 workers, not 4: on a small machine their imports take most
        # of its time.
        "pool": config.pick(smoke=2, quick=4, full=4),
        "jobs_per_worker": config.pick(smoke=16, quick=80, full=300),
        "warmup_jobs": config.pick(smoke=8, quick=8, full=16),
        "kill_jobs": config.pick(smoke=48, quick=120, full=400),
        "join_jobs": config.pick(smoke=48, quick=200, full=600),
        "submits": config.pick(smoke=40, quick=2_000, full=5_000),
    }
    missing = _missing()
    if missing is not None:
        markdown = f"## scaleout\n\nSkipped: {missing}."
        return Section("scaleout", markdown, [], sizes=f"skipped: {missing}")
    runs = run_interleaved("scaleout", ["cluster"], params, config.repeats)["cluster"]
    counts = [k for k in WORKER_COUNTS if k <= params["pool"]]
    plot = _plot(runs, counts, config.out / "scaleout.png")
    markdown = "\n\n".join(
        [
            "## scaleout",
            "The Redis scale-out with real `afterwork worker` processes and a `redis-server` "
            f"of the run's own, on loopback. Workers run with `--max-threads {MAX_THREADS} "
            f"--claim-timeout {CLAIM_TIMEOUT_S:g}`; a completion is two blocking jobs that "
            f"sleep {JOB_S * 1e3:.0f} ms, so one worker's ceiling is {CEILING:.0f} jobs/s "
            "(its thread budget, not the CPU). Each run starts its workers at once and "
            "joins them to the queue one by one as the steps below need them, in this "
            "order: 1 worker, a second joining mid-burst, "
            f"{', '.join(map(str, counts[1:]))}, then a SIGKILL of 1 of 2. "
            f"Starting the {params['pool']} processes took {fmt(med(runs, 'startup_s'), 1)} s "
            "(imports, mostly), which no measurement includes. Medians over "
            f"runs, ratios paired within each run; the machine's load average was "
            f"{fmt(med(runs, 'load'), 1)} on {cores()} cores.",
            table(THROUGHPUT_COLUMNS, _throughput_rows(runs, counts)),
            "Jobs/s: the slope of jobs ended against time, between the 10th and the 90th "
            "percentile of the burst's job ends (and not before its last submit); each burst "
            "has as many jobs per worker. CPU per job: user + system time of the workers and "
            "of redis-server over the whole burst, over its jobs.",
            table(["SIGKILL mid-burst, 1 of 2 workers", "median", "worst"], _kill_rows(runs)),
            table(["second worker mid-burst", "median"], _join_rows(runs)),
            table(["`await submit`, one at a time", "p50 (µs)", "p99 (µs)"], _latency_rows(runs)),
            f"{params['submits']:,} submits per side, in alternating blocks. "
            "`Producer.submit` reads the queue's backlog (`XINFO GROUPS`), then sends the "
            "message and its count in one transaction: two round trips to Redis, each "
            "also waiting for `redis-server` to be scheduled. `Dispatcher.submit` stays in the "
            f"process; the local dispatcher runs its jobs on {MAX_THREADS} threads meanwhile.",
            f"OS threads per worker process, sampled every {THREADS_SAMPLE_S * 1e3:.0f} ms "
            f"over whole runs: at most {_worst(runs, 'threads_max'):.0f} "
            f"(max_threads {MAX_THREADS}). Jobs started twice outside the kill: "
            f"{sum(int(r['duplicates_elsewhere']) for r in runs)}.",
            f"![scale-out]({plot.name})",
        ]
    )
    return Section("scaleout", markdown, _targets(runs, counts, config), sizes=_sizes(params))


def _ratio(runs: list[Result], workers: int) -> float:
    """Jobs/s on ``workers`` workers over jobs/s on one, paired within each run, median."""
    return median(float(r.get(f"rate{workers}", "nan")) / float(r["rate1"]) for r in runs)


THROUGHPUT_COLUMNS = ["workers", "jobs/s", "vs 1 worker", "ceiling (jobs/s)", "of ceiling",
                      "worker CPU / job (ms)", "redis-server CPU / job (ms)"]  # fmt: skip


def _throughput_rows(runs: list[Result], counts: list[int]) -> list[list[str]]:
    rows = []
    for workers in counts:
        jobs_s = med(runs, f"rate{workers}")
        ceiling = workers * CEILING
        rows.append([str(workers), fmt(jobs_s, 1), f"{_ratio(runs, workers):.2f}x",
                     fmt(ceiling, 0), f"{jobs_s / ceiling:.0%}",
                     fmt(med(runs, f"worker_cpu_ms{workers}"), 2),
                     fmt(med(runs, f"redis_cpu_ms{workers}"), 2)])  # fmt: skip
    return rows


def _worst(runs: list[Result], key: str) -> float:
    return max(float(r[key]) for r in runs)


def _kill_rows(runs: list[Result]) -> list[list[str]]:
    def row(label: str, key: str, digits: int = 0) -> list[str]:
        return [label, fmt(med(runs, key), digits), fmt(_worst(runs, key), digits)]

    return [
        row("messages the victim held", "held"),
        row("its jobs cut by the kill (running)", "cut"),
        row("SIGKILL to all its messages taken over (s)", "reclaim_s", 2),
        row("SIGKILL to its cut jobs all started again (s)", "restarted_s", 2),
        row("jobs started twice", "twice"),
        row("of them, jobs that had ended on the victim", "twice_not_cut"),
        row("those ended this long before the kill (ms)", "rerun_ended_ms"),
    ]


def _join_rows(runs: list[Result]) -> list[list[str]]:
    return [
        ["jobs/s on one worker, before the release", fmt(med(runs, "join_before"), 1)],
        ["jobs/s on two, from the joiner's first job end", fmt(med(runs, "join_after"), 1)],
        ["after / before (paired within each run)", f"{med(runs, 'join_ratio'):.2f}x"],
        ["the joiner's share of the jobs ended after it joined", f"{med(runs, 'join_share'):.0%}"],
        ["released to its first job start (s)", fmt(med(runs, "join_delay_s"), 2)],
    ]


def _latency_rows(runs: list[Result]) -> list[list[str]]:
    return [
        ["`Producer.submit` (Redis on loopback)", fmt(med(runs, "producer_p50_us"), 0),
         fmt(med(runs, "producer_p99_us"), 0)],
        ["local `Dispatcher.submit`", fmt(med(runs, "local_p50_us"), 1),
         fmt(med(runs, "local_p99_us"), 1)],
    ]  # fmt: skip


RERUN_WHY = (
    "Besides the jobs the kill cut, jobs that had already ended on the victim ran again: "
    "their outcomes had not reached Redis. A worker's thread waits, holding its token, until "
    "every earlier outcome is stored before it starts a job, so each token accounts for at "
    "most one such job; the wait gives up after the claim timeout (Redis unreachable), and "
    "past that the bound no longer holds."
)


def _rerun_note(twice: float, ended_before: float) -> str:
    if not ended_before:
        return "Only the jobs the kill cut ran again."
    met = "Met here, but not bounded by max_threads. " if twice <= MAX_THREADS else ""
    return met + RERUN_WHY


def _targets(runs: list[Result], counts: list[int], config: Config) -> list[Target]:
    smoke = " Smoke size: indicative only." if config.smoke else ""
    two, four = _ratio(runs, 2), _ratio(runs, 4)
    reclaim = _worst(runs, "reclaim_s")
    twice = _worst(runs, "twice")
    threads = _worst(runs, "threads_max")
    join = med(runs, "join_ratio")
    kills = f"{len(runs)} kill{'s' if len(runs) > 1 else ''}"
    return [
        Target(
            "Redis: throughput with 1, 2 and 4 workers >= 1.8x at 2 and 3.2x at 4 (loopback)",
            f"{two:.2f}x at 2, "
            + (f"{four:.2f}x at 4" if 4 in counts else "4 not run at this size")
            + f" ({fmt(med(runs, 'rate1'), 1)} jobs/s on one)",
            two >= 1.8 and four >= 3.2,
            "Sleep-bound jobs, a budget of 4 threads per worker." + smoke,
        ),
        Target(
            "Redis: a SIGKILLed worker's messages reclaimed within the claim timeout + 2 s "
            f"({CLAIM_TIMEOUT_S + 2:g} s), with no new traffic",
            f"worst {reclaim:.2f} s, median {med(runs, 'reclaim_s'):.2f} s over {kills}",
            reclaim <= CLAIM_TIMEOUT_S + 2,
            "Claims are renewed every third of the claim timeout, so a dead worker's "
            "messages pass it 2/3 to 1 claim timeout after the kill; the others look every "
            "min(1 s, a third of it)." + smoke,
        ),
        Target(
            f"Redis: jobs started twice per kill <= the victim's max_threads ({MAX_THREADS})",
            f"worst {twice:.0f}, median {med(runs, 'twice'):.0f} over {kills}; of them, "
            f"ended on the victim before the kill: worst {_worst(runs, 'twice_not_cut'):.0f}",
            twice <= MAX_THREADS,
            _rerun_note(twice, _worst(runs, "twice_not_cut")) + smoke,
        ),
        Target(
            "Redis: Producer.submit p50 and p99, reported beside local Dispatcher.submit",
            f"Producer {fmt(med(runs, 'producer_p50_us'), 0)} / "
            f"{fmt(med(runs, 'producer_p99_us'), 0)} µs; local "
            f"{fmt(med(runs, 'local_p50_us'), 1)} / {fmt(med(runs, 'local_p99_us'), 1)} µs",
            True,
            "Reported, no bound: two round trips to Redis (the backlog check, then the "
            "transaction) against an in-process hand-off. One script doing both would "
            "halve it.",
        ),
        Target(
            f"Redis: OS threads per worker <= max_threads + 3 ({MAX_THREADS + 3})",
            f"at most {threads:.0f}",
            0 < threads <= MAX_THREADS + 3,
            "" if threads else "No /proc here: not sampled.",
        ),
        Target(
            "Redis: a second worker started mid-burst takes its half: >= 1.8x on the rest",
            f"{join:.2f}x, its share {med(runs, 'join_share'):.0%}",
            join >= 1.8,
            "Fair dispatch: a worker reads a message only when it can start it at once, so "
            "the first worker holds no backlog the joiner could have taken." + smoke,
        ),
    ]


def _plot(runs: list[Result], counts: list[int], path: Path) -> Path:
    shown = runs[len(runs) // 2]
    with figure(path, (13, 4)) as scaling:
        fig = scaling.figure
        grid = fig.add_gridspec(1, 3)
        scaling.set_subplotspec(grid[0])
        kill, join = fig.add_subplot(grid[1]), fig.add_subplot(grid[2])
        scaling.plot(counts, [med(runs, f"rate{k}") for k in counts], marker="o",
                     label="measured (median)")  # fmt: skip
        scaling.plot(counts, [k * CEILING for k in counts], linestyle="--", color="grey",
                     label="thread-budget ceiling")  # fmt: skip
        scaling.set_xticks(counts)
        scaling.set_ylim(bottom=0)
        scaling.set_xlabel("worker processes")
        scaling.set_ylabel("jobs / s")
        scaling.set_title("throughput, sleep-bound jobs", fontsize=10)
        scaling.legend(fontsize=8)
        events = {
            "kill": [("SIGKILL", shown["kill_at_s"]),
                     ("all taken over", shown["kill_at_s"] + shown["reclaim_s"])],
            "join": [("second worker released", shown["join_released_s"])],
        }  # fmt: skip
        for axes, name in ((kill, "kill"), (join, "join")):
            points = shown[f"{name}_timeline"]
            axes.plot([p[0] for p in points], [p[1] for p in points], label="jobs ended")
            for (label, at), style in zip(events[name], ("-", ":"), strict=False):
                axes.axvline(at, color="red", linestyle=style, label=label)
            axes.set_xlabel("seconds from the first submit")
            axes.set_ylabel("jobs ended (each once)")
            axes.legend(fontsize=8)
            axes.grid(alpha=0.3)
        kill.set_title("SIGKILL of one of two workers (one run)", fontsize=10)
        join.set_title("a second worker joins mid-burst (one run)", fontsize=10)
    return path
