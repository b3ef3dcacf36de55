"""afterwork's benchmarks: afterwork measured beside the thread tools a user would otherwise use.

Run them all with ``python -m benchmarks`` (``make bench``), one with
``python -m benchmarks peak_threads --hang``, and every one once at a tiny size with
``python -m benchmarks --smoke``. Each benchmark module has a ``run(config)`` that drives fresh
subprocesses and a ``measure(peer, params)`` that one of those subprocesses calls.
"""

from __future__ import annotations

BENCHMARKS = (
    "peak_threads",
    "overhead",
    "admission",
    "memory",
    "scale",
    "journal",
    "service",
    "scaleout",
)
