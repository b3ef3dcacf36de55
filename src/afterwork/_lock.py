"""One live owner per journal: an exclusive ``flock`` on a lock file beside it.

The lock belongs to an open file, so the kernel drops it when its process dies, however it
dies: a crash never leaves a journal locked. It is taken per open file, not per process, so a
second dispatcher in the same process is refused too. The owner writes its pid into the file,
so whoever is refused learns who holds it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ._exceptions import JournalError


def lock_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".lock")


class OwnerLock:
    """The exclusive lock on ``journal``'s lock file, held from ``acquire`` to ``release``."""

    def __init__(self, journal: Path, shown: Path | None = None) -> None:
        self.journal = journal
        self.shown = journal if shown is None else shown  # the path as the user gave it
        self.path = lock_path(journal)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``JournalError`` naming the process that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise JournalError(
                f"cannot create the journal's lock file {str(self.path)!r}: {error.strerror}; "
                "pass journal= a path in a directory this process can write"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            raise JournalError(owned_message(self.shown, owner)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the lock
            self._fd = None


def owner_of(journal: Path) -> int | None:
    """The pid of the process that owns ``journal`` now, or None if nobody does."""
    try:
        fd = os.open(lock_path(journal), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd) or -1
    finally:
        os.close(fd)
    return None


def owned_message(journal: Path, owner: int | None) -> str:
    who = f"process {owner}" if owner is not None and owner > 0 else "another process"
    if owner == os.getpid():
        who += " (this process: another Dispatcher has it open)"
    return (
        f"the journal {str(journal)!r} is in use by {who}; a journal has one live owner: "
        "give each process (each worker) a journal of its own, or share work across "
        "processes with the Redis scale-out (afterwork.taskiq)"
    )


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
