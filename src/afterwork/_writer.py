"""The journal's writer: one thread that owns the connection and commits in groups.

Writes queue up and the writer commits whatever has queued in one transaction (group
commit), so a burst of admissions costs one commit and the event loop never waits on the
disk: only a caller that needs its own write on disk waits, for that write. The writes one
turn of the event loop makes (a completion's outcomes, a burst's admissions) reach the thread
together, in one hand-off: waking a thread for each of them cost more than writing them.

The writer never dies silently. A write that fails alone (a constraint, a value SQLite cannot
take) fails only its caller. Anything that means the file itself is gone or broken (an I/O
error, a damaged page, the file deleted or replaced under it, which the writer checks before
every batch) fails the journal: the failure is logged once as ``journal.failed``, every
waiting caller gets ``JournalError``, and so does every later write, so nothing is ever
admitted that would not survive a crash.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.lowlevel import EventLoopToken

from ._exceptions import JournalError
from ._loop import call_soon, call_soon_threadsafe, is_current

logger = structlog.get_logger("afterwork")

#: Errors that concern one write, not the file: the other writes of its batch go on.
_ONE_WRITE = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError)


class Write:
    """One queued write; ``done`` is set on the loop once it is committed or has failed."""

    __slots__ = ("apply", "done", "error", "result")

    def __init__(
        self, apply: Callable[[sqlite3.Connection], Any], done: anyio.Event | None
    ) -> None:
        self.apply: Callable[[sqlite3.Connection], Any] | None = apply
        self.done = done
        self.result: Any = None
        self.error: BaseException | None = None


class Writer:
    """The thread that applies queued writes to ``conn``, and its health."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, identity: tuple[int, int], token: EventLoopToken
    ) -> None:
        self.path = path
        self.failure: str | None = None
        self._conn = conn
        self._identity = identity
        self._token = token
        self._queue: queue.SimpleQueue[list[Write] | None] = queue.SimpleQueue()
        self._gathered: list[Write] = []  # this loop turn's writes, handed off at its end
        self._thread = threading.Thread(target=self._loop, name="afterwork-journal", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def put(self, apply: Callable[[sqlite3.Connection], Any], *, wait: bool) -> Write:
        """Queue ``apply``; raise ``JournalError`` at once if the journal has failed."""
        if self.failure is not None:
            raise JournalError(self.failed_message())
        write = Write(apply, anyio.Event() if wait else None)
        if not is_current(self._token):  # not from the loop (a test's thread): at once
            self._queue.put([write])
            if not self.alive:
                self._drain_queue()
            return write
        self._gathered.append(write)
        if len(self._gathered) == 1:
            call_soon(self._token, self.hand_off)
        return write

    def hand_off(self) -> None:
        """Give the writes gathered so far to the thread (at the end of the loop's turn)."""
        if self._gathered:
            gathered, self._gathered = self._gathered, []
            self._queue.put(gathered)
        if not self.alive:  # the thread stopped meanwhile: its last sweep may have missed these
            self._drain_queue()

    def failed_message(self) -> str:
        return (
            f"the journal {str(self.path)!r} failed ({self.failure}); nothing more can be made "
            "durable, so new work is refused: fix the cause and restart, and the journal "
            "replays what it holds"
        )

    def stop(self, timeout: float) -> None:
        """Write everything handed off, then stop (waiting at most ``timeout`` seconds).
        Call ``hand_off()`` on the loop first."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        try:
            while True:
                batch = [self._queue.get()]
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                writes = [w for group in batch if group is not None for w in group]
                self._commit(writes)
                self._wake(writes)
                if None in batch:
                    return
        except BaseException as error:  # the thread must report, not vanish
            self._fail(f"the writer stopped: {type(error).__name__}: {error}")
        finally:
            self._conn.close()
            self._drain_queue()

    def _commit(self, writes: list[Write]) -> None:
        if not writes:
            return
        if self.failure is None:
            self._check_file()
        if self.failure is not None:
            for write in writes:
                write.error = JournalError(self.failed_message())
            return
        try:
            self._apply(writes)
        except Exception:
            # One bad write must not sink the others: try each alone, keeping its own error.
            for write in writes:
                self._apply_alone(write)

    def _apply_alone(self, write: Write) -> None:
        if self.failure is not None:
            write.error = JournalError(self.failed_message())
            return
        try:
            self._apply([write])
        except _ONE_WRITE as error:
            write.error = error
            logger.error("journal.write_failed", path=str(self.path), error=str(error))
        except sqlite3.Error as error:
            self._fail(f"{type(error).__name__}: {error}")
            write.error = JournalError(self.failed_message())
        except Exception as error:  # a value the statement could not take (bad text, say)
            write.error = error
            logger.error("journal.write_failed", path=str(self.path), error=repr(error))

    def _apply(self, writes: list[Write]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in writes:
                assert write.apply is not None
                write.result = write.apply(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for write in writes:
            write.apply = None  # the write holds its data (an event's JSON) no longer

    def _check_file(self) -> None:
        """A journal deleted or replaced under the writer would take every commit into a
        file nobody reads again: stop writing instead."""
        try:
            stat = os.stat(self.path)
        except OSError as error:
            self._fail(f"its file is gone ({error.strerror})")
            return
        if (stat.st_dev, stat.st_ino) != self._identity:
            self._fail("its file was replaced by another one")

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            logger.error("journal.failed", path=str(self.path), reason=reason)

    def _wake(self, writes: list[Write]) -> None:
        waiting = [w for w in writes if w.done is not None]
        if waiting:
            call_soon_threadsafe(self._token, _set_all, waiting)

    def _drain_queue(self) -> None:
        """After the thread stops, nobody may be left waiting."""
        left: list[Write] = []
        while True:
            try:
                group = self._queue.get_nowait()
            except queue.Empty:
                break
            for write in group or ():
                why = self.failed_message() if self.failure else f"{str(self.path)!r} is closed"
                write.error = JournalError(why)
                left.append(write)
        self._wake(left)


def _set_all(writes: list[Write]) -> None:
    for write in writes:
        assert write.done is not None
        write.done.set()
