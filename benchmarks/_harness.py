"""The shared harness: run settings, one measurement per fresh subprocess, statistics, tables.

Every measurement runs in a subprocess of its own, so thread pools, anyio's worker threads and
the peak RSS of one peer never leak into the next. Repeats are interleaved (peer A, B, C, then
A, B, C again), so slow drift on a shared machine hits every peer alike, and the ratios that
pair runs taken side by side stay meaningful.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARKER = "@@benchmark-result@@ "
# A child that runs longer than this has hung: fail loudly rather than stall `make bench`.
CHILD_TIMEOUT_S = 900.0

Result = dict[str, Any]


@dataclass(frozen=True)
class Config:
    """How one invocation of ``python -m benchmarks`` runs."""

    out: Path
    smoke: bool = False
    full: bool = False
    repeats: int = 3
    scale: float | None = None
    hang: bool = False
    personas: int = 0
    # True when the user picked peak_threads variants on the command line.
    variant_chosen: bool = False

    @property
    def mode(self) -> str:
        return "smoke" if self.smoke else "full" if self.full else "quick"

    def pick(self, *, smoke: Any, quick: Any, full: Any) -> Any:
        """The size for the current mode."""
        return smoke if self.smoke else full if self.full else quick


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, with what this run measured."""

    goal: str
    measured: str
    met: bool
    note: str = ""


@dataclass
class Section:
    """What one benchmark contributes to RESULTS.md."""

    name: str
    markdown: str
    targets: list[Target] = field(default_factory=list)
    headline: str = ""
    # The sizes this mode used, in a few words.
    sizes: str = ""


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the tables."""
    print(message, file=sys.stderr, flush=True)


def run_child(module: str, peer: str, params: dict[str, Any]) -> Result:
    """Run ``benchmarks.<module>.measure(peer, params)`` in a fresh interpreter."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    command = [sys.executable, "-m", "benchmarks._child", module, peer, json.dumps(params)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env, cwd=ROOT
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            result: Result = json.loads(line[len(RESULT_MARKER) :])
            return result
    raise RuntimeError(
        f"benchmark child {module}:{peer} exited {done.returncode} without a result\n"
        f"--- stderr ---\n{done.stderr[-4000:]}"
    )


def run_interleaved(
    module: str,
    peers: Sequence[str],
    params: dict[str, Any],
    repeats: int,
    *,
    background: Sequence[str] = (),
) -> dict[str, list[Result]]:
    """Run every peer ``repeats`` times, round-robin; return each peer's results in order.

    Peers named in ``background`` run their repeats one after another in a second lane,
    alongside the others. This is only for runs that sleep nearly all the time and would
    otherwise dominate the wall-clock budget.
    """
    results: dict[str, list[Result]] = {peer: [] for peer in peers}
    slow = [peer for peer in peers if peer in background]
    lane = threading.Thread(target=_run_lane, args=(module, slow, params, repeats, results))
    lane.start()
    try:
        for rep in range(repeats):
            for peer in peers:
                if peer not in slow:
                    _run_one(module, peer, params, rep, repeats, results)
    finally:
        lane.join()
    missing = [peer for peer in peers if len(results[peer]) != repeats]
    if missing:
        raise RuntimeError(f"{module}: no result from {', '.join(missing)}; see the errors above")
    return results


def _run_lane(
    module: str,
    peers: Sequence[str],
    params: dict[str, Any],
    repeats: int,
    results: dict[str, list[Result]],
) -> None:
    try:
        for rep in range(repeats):
            for peer in peers:
                _run_one(module, peer, params, rep, repeats, results)
    except Exception as error:  # reported by the caller as a missing result
        log(f"  {module}: background lane failed: {error}")


def _run_one(
    module: str,
    peer: str,
    params: dict[str, Any],
    rep: int,
    repeats: int,
    results: dict[str, list[Result]],
) -> None:
    started = time.perf_counter()
    results[peer].append(run_child(module, peer, params))
    elapsed = time.perf_counter() - started
    log(f"  {module}: {peer} run {rep + 1}/{repeats} ({elapsed:.1f} s)")


def median(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def med(results: Sequence[Result], key: str) -> float:
    """The median of ``key`` over a peer's repeated results."""
    return median(float(r[key]) for r in results)


def paired_ratio(a: Sequence[Result], b: Sequence[Result], key: str) -> float:
    """The median of run-by-run ratios a/b: each pair ran side by side, so drift cancels."""
    return median(float(x[key]) / float(y[key]) for x, y in zip(a, b, strict=True) if y[key])


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linearly interpolated."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far.

    On Linux this reads VmHWM, which starts afresh at exec. ``ru_maxrss`` would not do: a
    child inherits its parent's high-water mark across fork and exec.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    """This process's resident set size now."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil  # type: ignore[import-untyped]  # no stubs installed; one call, int result

    return int(psutil.Process().memory_info().rss)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; numbers right-aligned."""
    body = [[str(cell) for cell in row] for row in rows]
    align = [
        "---:" if body and _numeric(row[i] for row in body) else "---" for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _numeric(cells: Iterable[str]) -> bool:
    cells = list(cells)
    if all(cell.strip() in ("", "n/a", "-") for cell in cells):
        return False

    def is_number(cell: str) -> bool:
        if cell.strip() in ("", "n/a", "-"):
            return True
        text = cell.replace(",", "").strip().removesuffix("%").removesuffix("x")
        try:
            float(text)
        except ValueError:
            return False
        return True

    return all(is_number(cell) for cell in cells)


def fmt(value: float, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def mib(value: float) -> str:
    return fmt(value / 2**20, 1)


@contextlib.contextmanager
def figure(path: Path, size: tuple[float, float]) -> Iterator[Axes]:
    """Draw on the yielded axes; on leaving, add a legend and grid and save to ``path``.

    A plot with more panels adds them to ``ax.figure``; if it placed a legend of its own
    anywhere in the figure, that one is kept and none is added on top of the data.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=110)
    try:
        yield ax
        if not any(axes.get_legend() for axes in fig.axes):
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
