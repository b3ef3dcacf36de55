"""The ``afterwork`` command.

- ``afterwork serve [--host H] [--port P] [--db PATH] [--token-file FILE] [--no-journal]
  [--broker URL]``: the conversation service; with a broker, its jobs run in workers. Flags
  override the ``AFTERWORK_*`` settings (``serve --help`` lists them all); a bad setting
  stops it at once, naming the variable.
- ``afterwork demo [--conversations N] [--users N] [--out DIR]``: the service under load,
  checked; exits 1 if anything it expected did not happen.
- ``afterwork journal list PATH`` and ``afterwork journal requeue PATH KEY``: the operator's
  view of a journal (see ``_journal_cli``).
- ``afterwork worker --broker URL --pipelines MODULE:ATTR``: run jobs from a Redis queue.
- ``afterwork bench [ARGS...]``: the benchmarks, as ``python -m benchmarks ARGS...``.
- ``afterwork --version``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, _journal_cli

if TYPE_CHECKING:
    from .conversations import ServiceSettings

#: Exit status for bad settings or arguments, as argparse uses.
USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afterwork", description="The conversation service, its demo, and the benchmarks."
    )
    parser.add_argument("--version", action="version", version=f"afterwork {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the conversation service",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="address to listen on (AFTERWORK_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (AFTERWORK_PORT)")
    serve.add_argument("--db", type=Path, help="SQLite database file (AFTERWORK_DB)")
    serve.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="a file holding the API token (instead of AFTERWORK_API_TOKEN)",
    )
    serve.add_argument(
        "--no-journal",
        dest="journal",
        action="store_const",
        const=False,
        help="keep no journal: work in flight at a crash is lost (AFTERWORK_JOURNAL=false)",
    )
    serve.add_argument(
        "--broker",
        metavar="URL",
        help="send conversations to 'afterwork worker --conversations' processes over Redis "
        "(AFTERWORK_BROKER)",
    )
    _demo_parser(commands)
    _journal_cli.add_parser(commands)
    _worker_parser(commands)
    commands.add_parser(
        "bench", help="run the benchmarks (arguments go to 'python -m benchmarks')", add_help=False
    )
    return parser


def _demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser("demo", help="run the service under load and check it")
    demo.add_argument(
        "--conversations", type=_positive, default=200, metavar="N",
        help="conversations to post (200)",
    )  # fmt: skip
    demo.add_argument(
        "--users", type=_positive, default=20, metavar="N", help="users they belong to (20)"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("demo-output"), metavar="DIR",
        help="where the database, log and plot go",
    )  # fmt: skip
    demo.add_argument("--seed", type=int, default=7, help="seed of the generated conversations")


def _worker_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        from .taskiq import _cli
    except ImportError:  # the taskiq extra is not installed
        commands.add_parser("worker", help="run jobs from a Redis queue (needs afterwork[taskiq])")
        return
    _cli.add_parser(commands)


def _worker(args: argparse.Namespace) -> int:
    try:
        from .taskiq import _cli
    except ImportError:
        print("afterwork worker: install afterwork[taskiq] first", file=sys.stderr)
        return USAGE_ERROR
    return _cli.run(args)


def _settings_help() -> str:
    """Every setting ``serve`` reads, with its variable and its default."""
    try:
        from .conversations import ServiceSettings
    except ImportError:  # the service extra is not installed
        return "settings: install afterwork[service] to run the service"
    lines = ["settings (environment variables; flags above override them):"]
    for name, field in ServiceSettings.model_fields.items():
        default = "unset" if field.is_required() else field.get_default(call_default_factory=True)
        # The form the variable takes: JSON for a mapping or a list, so it can be pasted.
        if default is None:
            shown = "unset"
        elif isinstance(default, dict | tuple | list | bool):
            shown = json.dumps(default)
        else:
            shown = str(default)
        lines.append(f"  AFTERWORK_{name.upper():<28} {field.description} (default: {shown})")
    return "\n".join(lines)


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
        settings = load_settings(
            token_file=args.token_file,
            host=args.host,
            port=args.port,
            db=args.db,
            journal=args.journal,
            broker=args.broker,
        )
    except SettingsError as error:
        print(f"afterwork serve: {error}", file=sys.stderr)
        return USAGE_ERROR
    return _run_server(settings)


def _run_server(settings: ServiceSettings) -> int:
    from ._process import exit_now
    from .conversations import configure_logging, create_app
    from .conversations._server import ServiceServer, config

    configure_logging(level=logging.getLevelNamesMapping()[settings.log_level.upper()])
    app = create_app(settings)
    server = ServiceServer(config(app, settings), app)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn hands a Ctrl-C back once it has shut down
        exit_now(130)
    # uvicorn does not say whether its start failed (a lifespan error, a busy port).
    exit_now(0 if server.started else 1)
    return 0  # not reached: exit_now ends the process


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
    if args.command == "journal":
        return _journal_cli.run(args, sys.stdout, sys.stderr)
    if args.command == "worker":
        return _worker(args)
    return serve(args) if args.command == "serve" else demo(args)


if __name__ == "__main__":
    sys.exit(main())
