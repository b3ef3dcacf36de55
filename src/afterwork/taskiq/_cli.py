"""``afterwork worker``: a worker process, with its own event loop and signal handling.

taskiq's own worker command hangs on SIGTERM while idle on Python 3.11, so the worker runs
here instead: the first SIGTERM (or Ctrl-C) stops reading and drains within
``--drain-timeout``, hands back what is left and exits 0; a second one cancels at once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from afterwork._pipeline import Pipeline

from ._worker import Worker

#: Exit status for bad arguments, as argparse uses.
USAGE_ERROR = 2


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = commands.add_parser(
        "worker", help="run pipelines' jobs from a Redis queue (needs afterwork[taskiq])"
    )
    worker.add_argument("--broker", required=True, metavar="URL", help="redis://host:port/db")
    which = worker.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--pipelines", metavar="MODULE:ATTR[,MODULE:ATTR]",
        help="where the pipelines are: ATTR is a Pipeline or a list of them",
    )  # fmt: skip
    which.add_argument(
        "--conversations", action="store_true", help="run the conversation service's jobs"
    )
    worker.add_argument("--db", type=Path, help="with --conversations: the SQLite store")
    worker.add_argument("--queue", default="afterwork", help="the stream's name (afterwork)")
    worker.add_argument("--max-threads", type=int, default=32, help="the thread budget (32)")
    worker.add_argument("--max-active", type=int, default=64, help="completions run at once (64)")
    worker.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds a stop drains (30)"
    )
    worker.add_argument(
        "--claim-timeout", type=float, default=30.0,
        help="seconds after which a silent worker's messages are taken over (30)",
    )  # fmt: skip
    worker.add_argument(
        "--max-recoveries", type=int, default=3,
        help="deliveries after the first before a message counts as poison (3)",
    )  # fmt: skip
    worker.add_argument("--lanes", type=json.loads, default=None, help="e.g. '{\"llm\": 6}'")


def run(args: argparse.Namespace) -> int:
    """Carry out ``afterwork worker ...``; return the exit status."""
    from afterwork._process import exit_now

    try:
        options = _options(args)
    except ValueError as error:
        print(f"afterwork worker: {error}", file=sys.stderr)
        return USAGE_ERROR
    if args.conversations:
        from afterwork.conversations import configure_logging

        configure_logging()
    anyio.run(_serve, args, options, backend="asyncio")
    exit_now(0)
    return 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    if args.conversations and args.db is None:
        raise ValueError("--conversations needs --db PATH, the store the service uses")
    if args.conversations and args.lanes is None:
        from afterwork.conversations import ServiceSettings

        # The jobs name their lanes ("llm", "http"): the service's settings size them, as
        # they do in 'afterwork serve' (AFTERWORK_LANES).
        args.lanes = ServiceSettings(db=args.db).lanes
    return {
        "queue": args.queue,
        "max_threads": args.max_threads,
        "max_active": args.max_active,
        "drain_timeout": args.drain_timeout,
        "claim_timeout": args.claim_timeout,
        "max_recoveries": args.max_recoveries,
        "lanes": args.lanes,
    }


def load_pipelines(spec: str) -> list[Pipeline[Any]]:
    """The pipelines ``MODULE:ATTR[,MODULE:ATTR]`` names (ATTR a Pipeline or a list)."""
    found: list[Pipeline[Any]] = []
    for part in spec.split(","):
        module_name, _, attr = part.strip().partition(":")
        if not module_name or not attr:
            raise ValueError(
                f"--pipelines takes MODULE:ATTR, got {part!r}; e.g. myapp.jobs:pipeline"
            )
        try:
            value = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"--pipelines {part}: {error}") from None
        items = value if isinstance(value, list | tuple) else [value]
        if not all(isinstance(item, Pipeline) for item in items):
            raise ValueError(f"--pipelines {part}: {value!r} is not a Pipeline or a list of them")
        found.extend(items)
    return found


async def _serve(args: argparse.Namespace, options: dict[str, Any]) -> None:
    async with _pipelines(args) as (pipelines, on_report):
        worker = Worker(args.broker, pipelines, on_report=on_report, **options)
        async with anyio.create_task_group() as group:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        if worker._stopping.is_set():
                            group.cancel_scope.cancel()  # a second signal: stop at once
                        worker.stop()

            group.start_soon(on_signals)
            await worker.run()
            group.cancel_scope.cancel()


@asynccontextmanager
async def _pipelines(args: argparse.Namespace) -> AsyncIterator[tuple[list[Pipeline[Any]], Any]]:
    if not args.conversations:
        yield load_pipelines(args.pipelines), (lambda report: None)
        return
    from afterwork.conversations import ServiceSettings, build_pipeline
    from afterwork.conversations._reports import ReportWriter
    from afterwork.conversations._service import http_client, services_for

    settings = ServiceSettings(db=args.db)
    async with http_client(settings) as client:
        services = services_for(settings, client)
        await anyio.to_thread.run_sync(services.store.initialise)
        try:
            yield [build_pipeline(services)], ReportWriter(services.store).save
        finally:
            services.store.close()
