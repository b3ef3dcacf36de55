"""``afterwork journal``: the operator's view of a journal, through its public read API.

- ``afterwork journal list PATH [--json]``: unfinished completions (due now, delayed, or
  charged with crashes) and quarantined ones, with why each was quarantined.
- ``afterwork journal requeue PATH KEY``: put a quarantined completion back, to run at the
  next start. Refused while a process owns the journal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from ._exceptions import JournalError
from ._journal import JournalEntry, QuarantinedEntry, SqliteJournal


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    journal = commands.add_parser("journal", help="inspect a journal, or requeue quarantined work")
    actions = journal.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="unfinished and quarantined completions")
    listing.add_argument("path", type=Path, metavar="PATH", help="the journal file")
    listing.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    requeue = actions.add_parser("requeue", help="put a quarantined completion back")
    requeue.add_argument("path", type=Path, metavar="PATH", help="the journal file")
    requeue.add_argument("key", metavar="KEY", help="the completion's key (or its id)")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Carry out ``afterwork journal ...``; return the exit status."""
    if not args.path.exists():
        print(f"afterwork journal: no journal at {str(args.path)!r}", file=err)
        return 1
    journal = SqliteJournal(args.path)
    try:
        if args.action == "requeue":
            return _requeue(journal, args.key, out, err)
        unfinished, quarantined = journal.unfinished(), journal.quarantined()
    except JournalError as error:
        print(f"afterwork journal: {error}", file=err)
        return 1
    if args.json:
        document = {
            "unfinished": [e.model_dump(mode="json") for e in unfinished],
            "quarantined": [e.model_dump(mode="json") for e in quarantined],
        }
        print(json.dumps(document, indent=2), file=out)
    else:
        _print_tables(unfinished, quarantined, out)
    return 0


def _requeue(journal: SqliteJournal, key: str, out: TextIO, err: TextIO) -> int:
    ids = journal.requeue(key)
    if not ids:
        print(
            f"afterwork journal: nothing quarantined under {key!r} in {str(journal.path)!r}; "
            f"'afterwork journal list {journal.path}' shows what is",
            file=err,
        )
        return 1
    print(f"requeued {len(ids)} completion(s) of {key!r}; they run at the next start", file=out)
    return 0


def _print_tables(
    unfinished: list[JournalEntry], quarantined: list[QuarantinedEntry], out: TextIO
) -> None:
    delayed = sum(1 for e in unfinished if e.due_at is not None)
    print(f"unfinished: {len(unfinished)} ({delayed} delayed)", file=out)
    for entry in unfinished:
        open_jobs = sorted(j.job for j in entry.jobs if j.status is None)
        due = entry.due_at.isoformat(timespec="seconds") if entry.due_at else "now"
        print(
            f"  {entry.pipeline}:{entry.key}  due {due}  crashes {entry.crashes}  "
            f"unfinished jobs: {', '.join(open_jobs) or 'not started'}",
            file=out,
        )
    print(f"quarantined: {len(quarantined)}", file=out)
    for entry in quarantined:
        when = entry.quarantined_at.isoformat(timespec="seconds")
        print(f"  {entry.pipeline}:{entry.key}  {entry.reason} at {when}", file=out)
        print(f"    {entry.error.splitlines()[0] if entry.error else ''}", file=out)
