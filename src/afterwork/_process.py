"""Ending a process that may still have threads running jobs past their timeout.

A job's thread hung past its timeout is not a daemon thread (anyio's worker threads never
are), so the interpreter would wait for it at exit, forever. A service or worker process that
has drained and closed its dispatcher calls ``exit_now``: a plain exit when no such thread is
left, and otherwise, once output is flushed, an immediate one.
"""

from __future__ import annotations

import os
import sys
import threading

import structlog

logger = structlog.get_logger("afterwork")


def exit_now(code: int) -> None:
    """Exit with ``code``, even if non-daemon threads (hung jobs) still run."""
    hung = [t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    if not hung:
        sys.exit(code)
    logger.warning("process.exit_abandoning_threads", threads=len(hung), code=code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
