"""scale: the cost of one completion as the number of completions doubles.

Completions of 7 jobs, all submitted at once to a fresh dispatcher (``max_pending`` as large
as the batch, so everything is admitted and pending together), then awaited. The cost per
completion is the wall time divided by the count. It should stay flat: a cost that grows
with the batch means some step is worse than linear in the amount of pending work. Jobs are
no-ops (pure machinery) or sleep 1 ms (32 threads bound them at 7 ms / 32 per completion).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import anyio

import afterwork as aw

from ._chaos import MAX_THREADS, Conversation
from ._harness import (
    Config,
    Result,
    Section,
    Target,
    figure,
    fmt,
    median,
    run_interleaved,
    table,
)

JOBS = 7
# Costs this much above the smallest batches' cost count as growth, not noise.
GROWTH_FLAG = 1.25
MIN_COMPLETIONS = 160


def pipeline(job_s: float) -> aw.Pipeline[Conversation]:
    pipe = aw.Pipeline("scale", event=Conversation, key=lambda e: e.id)

    def job(conv: Conversation) -> None:
        if job_s:
            time.sleep(job_s)

    for k in range(JOBS):
        pipe.job(name=f"job{k}")(job)
    return pipe


async def _batch(pipe: aw.Pipeline[Conversation], n: int) -> float:
    async with aw.Dispatcher(max_threads=MAX_THREADS, max_pending=max(n, 1)) as dispatcher:
        started = time.perf_counter()
        handles = [dispatcher.submit_nowait(pipe, Conversation(id=i)) for i in range(n)]
        for handle in handles:
            await handle.wait()
        return time.perf_counter() - started


def measure(peer: str, params: dict[str, Any]) -> Result:
    pipe = pipeline(0.001 if peer == "sleep_1ms" else 0.0)

    async def cost(n: int) -> float:
        # Small batches are repeated until they add up to MIN_COMPLETIONS: one batch of 10
        # lasts a few milliseconds, too short to time alone on a shared machine.
        return median([await _batch(pipe, n) / n for _ in range(max(1, MIN_COMPLETIONS // n))])

    async def main() -> Result:
        await _batch(pipe, 64)  # warm-up: worker threads, imports, caches
        return {str(n): await cost(n) for n in params["sizes"]}

    return anyio.run(main)


def sizes(config: Config) -> list[int]:
    top = config.pick(smoke=40, quick=640, full=10_240)
    return [10 * 2**i for i in range(int(math.log2(top / 10)) + 1)]


PEERS = {"noop": "no-op jobs", "sleep_1ms": "1 ms jobs"}


def run(config: Config) -> Section:
    ns = sizes(config)
    results = run_interleaved("scale", list(PEERS), {"sizes": ns}, config.repeats)
    cost = {
        peer: [median(r[str(n)] for r in runs) * 1e3 for n in ns] for peer, runs in results.items()
    }
    rows = [[f"{n:,}"] + [fmt(cost[peer][i], 3) for peer in PEERS] for i, n in enumerate(ns)]
    growth = {peer: _growth(values) for peer, values in cost.items()}
    plot = _plot(ns, cost, config.out / "scale.png")
    flagged = [PEERS[peer] for peer, g in growth.items() if g > GROWTH_FLAG]
    verdict = (
        "**Grows faster than linearly: " + ", ".join(flagged) + ".**"
        if flagged
        else "No cost grows faster than linearly."
    )
    markdown = "\n\n".join(
        [
            "## scale",
            f"Batches of {ns[0]:,} to {ns[-1]:,} completions, doubling, each awaited in full; "
            "cost per completion in ms (wall time / completions). Batches smaller than "
            f"{MIN_COMPLETIONS} are repeated up to {MIN_COMPLETIONS} completions, and their "
            "median is taken.",
            table(["completions", *(f"{label} (ms/completion)" for label in PEERS.values())], rows),
            "Growth: the cost at the largest batch over the median of the three smallest: "
            + ", ".join(f"{PEERS[p]} {g:.2f}x" for p, g in growth.items())
            + f". {verdict}",
            f"![cost per completion]({plot.name})",
        ]
    )
    targets = [
        Target(
            f"cost per completion flat from {ns[0]:,} to {ns[-1]:,} completions",
            ", ".join(f"{PEERS[p]}: {g:.2f}x from smallest to largest" for p, g in growth.items()),
            not flagged,
            ""
            if not flagged
            else "The cost per completion rises with the number pending, then levels off. "
            "Up to max_active (256) completions run at once, each with 7 job tasks and a "
            "runner per job queued for a token, so a larger batch works in a larger memory "
            "footprint and gives the garbage collector more to scan; lighter job tasks (no "
            "runner until a token is free) would shrink both.",
        )
    ]
    return Section("scale", markdown, targets, sizes=f"{ns[0]:,} to {ns[-1]:,} completions")


def _growth(values: list[float]) -> float:
    return values[-1] / median(values[:3])


def _plot(ns: list[int], cost: dict[str, list[float]], path: Path) -> Path:
    with figure(path, (7, 4)) as ax:
        for peer, values in cost.items():
            ax.plot(ns, values, marker="o", label=PEERS[peer])
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("completions in the batch")
        ax.set_ylabel("ms per completion")
        ax.set_title("afterwork: cost per completion as the batch doubles", fontsize=10)
    return path
