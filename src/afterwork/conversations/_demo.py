"""``afterwork demo``: the service under realistic traffic, over real HTTP, checked.

1. Starts the service (fresh SQLite file, an API token) and a webhook receiver on free
   loopback ports. Some users' endpoints throttle with 429 and ``Retry-After``: their
   webhooks park (``deferred``) instead of holding admission room, then are delivered.
2. Posts the conversations concurrently, honouring 503 ``Retry-After``, while a live panel
   shows progress, failures and threads against the budget.
3. Reprocesses some conversations and checks that no row was written twice; tries what an
   attacker would (no token, another user's conversation id) and checks nothing changed.
4. Shuts the service down (a drain), prints the outcome tables and the expectations, writes a
   plot of threads and admission, and exits 1 if any expectation failed.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
from pydantic import SecretStr
from rich.console import Console
from rich.live import Live

import afterwork as aw
from afterwork.testing import ThreadSampler, base_url, serving

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
from ._metrics import os_threads
from ._models import ConversationCompleted
from ._receiver import Receiver
from ._server import protocol
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
    """The service as the demo runs it: a small budget, a slow-ish model, short retries, and
    parking after 0.5 s (the throttling endpoints ask for 1 s)."""
    return ServiceSettings(
        db=db,
        port=0,
        api_token=SecretStr(secrets.token_urlsafe(24)),
        max_threads=options.max_threads,
        max_pending=64,
        drain_timeout=10,
        park_after=0.5,
        lanes={"llm": options.max_threads // 2, "http": options.max_threads},
        llm_latency_s=(0.02, 0.08),
        webhook_retry_delays_s=(0.05, 0.1, 0.2),
    )


def thread_ceiling(settings: ServiceSettings) -> int:
    """The most OS threads the service may add: the jobs' budget, the request threads, the
    journal's writer and the report writer's thread."""
    return settings.max_threads + settings.request_threads + 2


URL = "/v1/conversations/completed"


async def post(
    client: httpx.AsyncClient, event: ConversationCompleted, progress: Progress, tag: str
) -> None:
    """POST one completion until it is admitted, waiting out each 503's Retry-After."""
    headers = {"X-Request-ID": f"demo-{tag}-{event.conversation.id}"}
    body = event.model_dump(mode="json")
    while True:
        response = await client.post(URL, json=body, headers=headers)
        if response.status_code != 503:
            break
        progress.rejected += 1
        await anyio.sleep(float(response.headers.get("Retry-After", "1")))
    if response.status_code == 202:
        progress.posted += 1
    else:
        progress.errors += 1


async def watch(client: httpx.AsyncClient, progress: Progress) -> None:
    """Poll the service's stats until every posted completion has finished, parked webhooks
    included."""
    while True:
        progress.sample(aw.Stats.model_validate((await client.get("/v1/stats")).json()))
        stats = progress.stats
        assert stats is not None
        if progress.live is not None:
            progress.live.refresh()
        sent = progress.posted + progress.errors == progress.total
        if sent and stats.completed >= progress.posted and not stats.pending + stats.delayed:
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
    #: (status without a token, status of another uid's post, rows unchanged by it)
    hostile: tuple[int, int, bool] = (0, 0, False)
    peak_threads: int = 0


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
    assert settings.api_token is not None
    token = {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}
    with closing(store), ThreadSampler(interval=0.005) as sampler:
        # Counted from here, as the sampler counts, so its own thread is in neither.
        progress.baseline_threads = os_threads()
        async with (
            serving(create_app(settings), http=protocol(settings)) as server,
            httpx.AsyncClient(base_url=base_url(server), timeout=60, headers=token) as client,
        ):
            # Redrawn by the polling loop, not by a thread of its own: the demo counts every
            # OS thread of the process against the service's ceiling.
            with Live(progress, console=console, auto_refresh=False) as live:
                progress.live = live
                await drive(client, events, progress, tag="new", concurrency=limit)
            progress.live = None
            traffic.before_reprocess = await anyio.to_thread.run_sync(snapshot, store)
            console.print(f"\nreprocessing {len(reprocess)} conversations ...")
            progress.total += len(reprocess)
            await drive(client, reprocess, progress, tag="again", concurrency=limit)
            traffic.hostile = await hostile(client, store, events[0])
            traffic.metrics = (await client.get("/metrics")).text
    traffic.peak_threads = sampler.peak_above_baseline
    return traffic


async def hostile(
    client: httpx.AsyncClient, store: Store, victim: ConversationCompleted
) -> tuple[int, int, bool]:
    """What an attacker would try: posting without the token, and posting another user's
    conversation id as a reprocess under their own uid. Returns the two statuses and whether
    every row stayed as it was."""
    body = victim.model_dump(mode="json")
    anonymous = await client.post(URL, json=body, headers={"Authorization": ""})
    before = await anyio.to_thread.run_sync(snapshot, store)
    stolen = {**body, "reprocess": True}
    stolen["conversation"] = {**body["conversation"], "uid": "mallory"}
    conflict = await client.post(URL, json=stolen)
    after = await anyio.to_thread.run_sync(snapshot, store)
    owner = await anyio.to_thread.run_sync(store.owner, victim.conversation.id)
    unchanged = after == before and owner == victim.conversation.uid
    return anonymous.status_code, conflict.status_code, unchanged


async def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the demo; return the exit status (0 when every expectation held)."""
    started = time.perf_counter()
    db, log_path = fresh_files(options.out)
    people = data.users(options.users)
    events = data.conversations(options.conversations, people, seed=options.seed)
    reprocess = [e.model_copy(update={"reprocess": True}) for e in events[: len(events) // 10]]
    settings = demo_settings(options, db)
    receiver = Receiver(retry_after_s=1)
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
    ceiling = thread_ceiling(settings)
    unauthorized, conflict, unchanged = traffic.hostile
    checks = [
        ("thread budget held (OS threads counted)",
         0 < traffic.peak_threads <= ceiling and stats.threads_peak <= stats.max_threads,
         f"{traffic.peak_threads} OS threads at peak, at most {ceiling}: budget "
         f"{stats.max_threads} + {settings.request_threads} request + 2 writers"),
        ("no token: 401; another user's id: 409, nothing changed",
         (unauthorized, conflict, unchanged) == (401, 409, True),
         f"{unauthorized}, {conflict}, rows unchanged: {unchanged}"),
        ("every conversation admitted", traffic.progress.errors == 0,
         f"{traffic.progress.errors} refused for good"),
        ("the journal kept nothing after the drain", journal_left(settings) == 0,
         f"{journal_left(settings)} unfinished in {settings.journal_path.name}"),
        *expectations(world, jobs, store, receiver, traffic.before_reprocess, ids),
    ]  # fmt: skip
    png = plot(
        traffic.progress, stats.max_threads, ceiling, stats.max_pending, options.out / "threads.png"
    )
    numbers = figures(world, store, receiver, stats, wall)
    numbers["refused with 503, then retried"] = str(traffic.progress.rejected)
    numbers["service log"] = str(log_path)
    print_summary(console, summary_tables(jobs, numbers, checks))
    console.print(f"plot of threads and admission: {png}")
    store.close()
    failed = [name for name, ok, _ in checks if not ok]
    if failed:
        console.print(f"[red]demo FAILED: {', '.join(failed)}[/red]")
        return 1
    console.print(f"[green]demo passed: {len(checks)} expectations held in {wall:.1f} s[/green]")
    return 0
