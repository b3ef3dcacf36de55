"""The ``afterwork`` command.

- ``afterwork serve [--host H] [--port P] [--db PATH] [--no-journal]``: the conversation
  service. Flags override the ``AFTERWORK_*`` settings; a bad setting stops it at once,
  naming the variable. Its journal lives beside the database unless ``--no-journal``.
- ``afterwork demo [--conversations N] [--users N] [--out DIR]``: the service under load,
  checked; exits 1 if anything it expected did not happen.
- ``afterwork bench [ARGS...]``: the benchmarks, as ``python -m benchmarks ARGS...``.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .conversations import ServiceSettings

#: Exit status for bad settings or arguments, as argparse uses.
USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afterwork", description="The conversation service, its demo, and the benchmarks."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the conversation service")
    serve.add_argument("--host", help="address to listen on (AFTERWORK_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (AFTERWORK_PORT)")
    serve.add_argument("--db", type=Path, help="SQLite database file (AFTERWORK_DB)")
    serve.add_argument(
        "--no-journal",
        dest="journal",
        action="store_const",
        const=False,
        help="keep no journal: work in flight at a crash is lost (AFTERWORK_JOURNAL=false)",
    )
    demo = commands.add_parser("demo", help="run the service under load and check it")
    demo.add_argument(
        "--conversations",
        type=_positive,
        default=200,
        metavar="N",
        help="conversations to post (200)",
    )
    demo.add_argument(
        "--users", type=_positive, default=20, metavar="N", help="users they belong to (20)"
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        metavar="DIR",
        help="where the database, log and plot go",
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of the generated conversations")
    commands.add_parser(
        "bench", help="run the benchmarks (arguments go to 'python -m benchmarks')", add_help=False
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def bench_command(args: Sequence[str]) -> list[str]:
    """The benchmark runner's command line, with ``args`` passed through untouched."""
    return [sys.executable, "-m", "benchmarks", *args]


def serve(args: argparse.Namespace) -> int:
    from .conversations import SettingsError, load_settings

    try:
        settings = load_settings(host=args.host, port=args.port, db=args.db, journal=args.journal)
    except SettingsError as error:
        print(f"afterwork serve: {error}", file=sys.stderr)
        return USAGE_ERROR
    _run_server(settings)
    return 0


def _run_server(settings: ServiceSettings) -> None:
    import uvicorn

    from .conversations import configure_logging, create_app

    configure_logging(level=logging.getLevelNamesMapping()[settings.log_level.upper()])
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        # uvicorn waits this long for open requests on SIGTERM; then the lifespan drains the
        # dispatcher for up to drain_timeout more.
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout)),
        log_config=None,  # uvicorn's records go to the handler configure_logging set up
    )
    uvicorn.Server(config).run()


def demo(args: argparse.Namespace) -> int:
    import anyio
    from rich.console import Console

    from .conversations._demo import DemoOptions, run_demo

    options = DemoOptions(
        conversations=args.conversations, users=args.users, out=args.out, seed=args.seed
    )
    console = Console()
    if not console.is_terminal:  # a log or a CI page: wide enough for the tables
        console = Console(width=110)
    return anyio.run(run_demo, options, console)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``afterwork`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after 'bench' belongs to the benchmarks
        return subprocess.call(bench_command(argv[1:]))
    args = _parser().parse_args(argv)
    return serve(args) if args.command == "serve" else demo(args)


if __name__ == "__main__":
    sys.exit(main())
