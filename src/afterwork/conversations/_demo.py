"""``afterwork demo``: the service under realistic traffic, over real HTTP, checked.

1. Starts the service (fresh SQLite file) and a webhook receiver on free loopback ports.
2. Posts the conversations concurrently, honouring 503 ``Retry-After``, while a live panel
   shows progress, failures and threads against the budget.
3. Reprocesses some conversations and checks that no row was written twice.
4. Shuts the service down (a drain), prints the outcome tables and the expectations, writes a
   plot of threads and pending completions, and exits 1 if any expectation failed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
from rich.console import Console
from rich.live import Live

import afterwork as aw
from afterwork.testing import base_url, serving

from . import _demo_data as data
from ._app import create_app
from ._demo_checks import (
    World,
    expectations,
    figures,
    job_counts,
    journal_left,
    request_ids_carried,
    snapshot,
)
from ._demo_view import Progress, plot, print_summary, summary_tables
from ._logging import configure_logging
from ._models import ConversationCompleted
from ._receiver import Receiver
from ._settings import ServiceSettings
from ._store import Store


@dataclass(frozen=True)
class DemoOptions:
    conversations: int = 200
    users: int = 20
    out: Path = Path("demo-output")
    seed: int = 7
    max_threads: int = 16
    concurrency: int = 32


def demo_settings(options: DemoOptions, db: Path) -> ServiceSettings:
    """The service as the demo runs it: a small budget, a slow-ish model, short retries."""
    return ServiceSettings(
        db=db,
        port=0,
        max_threads=options.max_threads,
        max_pending=64,
        drain_timeout=10,
        lanes={"llm": options.max_threads // 2, "http": options.max_threads},
        llm_latency_s=(0.02, 0.08),
        webhook_retry_delays_s=(0.05, 0.1, 0.2),
    )


async def post(
    client: httpx.AsyncClient, event: ConversationCompleted, progress: Progress, tag: str
) -> None:
    """POST one completion until it is admitted, waiting out each 503's Retry-After."""
    headers = {"X-Request-ID": f"demo-{tag}-{event.conversation.id}"}
    body = event.model_dump(mode="json")
    while True:
        response = await client.post("/v1/conversations/completed", json=body, headers=headers)
        if response.status_code != 503:
            break
        progress.rejected += 1
        await anyio.sleep(float(response.headers.get("Retry-After", "1")))
    if response.status_code == 202:
        progress.posted += 1
    else:
        progress.errors += 1


async def watch(client: httpx.AsyncClient, progress: Progress) -> None:
    """Poll the service's stats until every posted completion has finished."""
    while True:
        progress.sample(aw.Stats.model_validate((await client.get("/v1/stats")).json()))
        assert progress.stats is not None
        sent = progress.posted + progress.errors == progress.total
        if sent and progress.stats.completed >= progress.posted and not progress.stats.pending:
            return
        await anyio.sleep(0.1)


async def drive(
    client: httpx.AsyncClient,
    events: list[ConversationCompleted],
    progress: Progress,
    *,
    tag: str,
    concurrency: int,
) -> None:
    """Post ``events`` with at most ``concurrency`` requests in flight; wait until done."""
    limit = anyio.Semaphore(concurrency)

    async def one(event: ConversationCompleted) -> None:
        async with limit:
            await post(client, event, progress, tag)

    async with anyio.create_task_group() as group:
        group.start_soon(watch, client, progress)
        for event in events:
            group.start_soon(one, event)


def fresh_files(out: Path) -> tuple[Path, Path]:
    """The database and log paths, with what an earlier run left removed (its journal too:
    a run killed mid-way would otherwise be replayed into this one)."""
    out.mkdir(parents=True, exist_ok=True)
    db, log = out / "demo.db", out / "service.log"
    for base in (db, out / "demo.journal.db"):
        for path in (base, Path(f"{base}-wal"), Path(f"{base}-shm")):
            path.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    return db, log


@dataclass
class Traffic:
    """What the demo measured while the service ran."""

    progress: Progress
    metrics: str = ""
    before_reprocess: dict[str, int] = field(default_factory=dict)


async def run_traffic(
    options: DemoOptions,
    settings: ServiceSettings,
    events: list[ConversationCompleted],
    reprocess: list[ConversationCompleted],
    console: Console,
) -> Traffic:
    """Serve, post everything, reprocess some, scrape /metrics; return when drained."""
    traffic = Traffic(Progress(total=len(events)))
    progress, store, limit = traffic.progress, Store(settings.db), options.concurrency
    async with (
        serving(create_app(settings)) as server,
        httpx.AsyncClient(base_url=base_url(server), timeout=60) as client,
    ):
        with Live(progress, console=console, refresh_per_second=8):
            await drive(client, events, progress, tag="new", concurrency=limit)
        traffic.before_reprocess = await anyio.to_thread.run_sync(snapshot, store)
        console.print(f"\nreprocessing {len(reprocess)} conversations ...")
        progress.total += len(reprocess)
        await drive(client, reprocess, progress, tag="again", concurrency=limit)
        traffic.metrics = (await client.get("/metrics")).text
    return traffic


async def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the demo; return the exit status (0 when every expectation held)."""
    started = time.perf_counter()
    db, log_path = fresh_files(options.out)
    people = data.users(options.users)
    events = data.conversations(options.conversations, people, seed=options.seed)
    reprocess = [e.model_copy(update={"reprocess": True}) for e in events[: len(events) // 10]]
    settings = demo_settings(options, db)
    receiver = Receiver()
    store = Store(db)
    with log_path.open("w", encoding="utf-8") as log:
        configure_logging(json=True, stream=log)
        async with serving(receiver.app) as hooks:
            store.initialise()
            data.seed_profiles(store, people, base_url(hooks))
            traffic = await run_traffic(options, settings, events, reprocess, console)
    wall = time.perf_counter() - started
    stats = traffic.progress.stats
    assert stats is not None
    world = World(people, Counter(e.conversation.uid for e in events), len(reprocess))
    jobs = job_counts(traffic.metrics)
    ids = request_ids_carried(log_path)
    checks = [
        ("thread budget held", 0 < stats.threads_peak <= stats.max_threads,
         f"peak {stats.threads_peak} of {stats.max_threads}"),
        ("every conversation admitted", traffic.progress.errors == 0,
         f"{traffic.progress.errors} refused for good"),
        ("the journal kept nothing after the drain", journal_left(settings) == 0,
         f"{journal_left(settings)} unfinished in {settings.journal_path.name}"),
        *expectations(world, jobs, store, receiver, traffic.before_reprocess, ids),
    ]  # fmt: skip
    png = plot(traffic.progress, stats.max_threads, stats.max_pending, options.out / "threads.png")
    numbers = figures(world, store, receiver, stats, wall)
    numbers["refused with 503, then retried"] = str(traffic.progress.rejected)
    numbers["service log"] = str(log_path)
    print_summary(console, summary_tables(jobs, numbers, checks))
    console.print(f"plot of threads and pending completions: {png}")
    failed = [name for name, ok, _ in checks if not ok]
    if failed:
        console.print(f"[red]demo FAILED: {', '.join(failed)}[/red]")
        return 1
    console.print(f"[green]demo passed: {len(checks)} expectations held in {wall:.1f} s[/green]")
    return 0
