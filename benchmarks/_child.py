"""One measurement in a fresh interpreter: ``python -m benchmarks._child MODULE PEER PARAMS``.

It prints the measurement as one JSON line after a marker, for the harness to pick up.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys

import structlog

from ._harness import RESULT_MARKER


def quiet_logging() -> None:
    """Drop afterwork's info events and render the rest to nowhere.

    A service would ship these events somewhere; the peers log nothing at all, so rendering
    them here would measure the log sink, not the dispatcher. Binding and filtering still
    cost what they cost.
    """
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sink),
        cache_logger_on_first_use=True,
    )


def main(argv: list[str]) -> None:
    module_name, peer, params = argv
    quiet_logging()
    module = importlib.import_module(f"benchmarks.{module_name}")
    result = module.measure(peer, json.loads(params))
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    # Threads still running (a hung job's, say) have nothing left to report: do not wait.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
