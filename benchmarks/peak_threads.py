"""peak_threads: the seed's chaos scenario, run by every peer.

For each peer: peak OS threads above the baseline (sampled every 2 ms), makespan, slot
efficiency (useful work divided by 32 slots times the makespan), peak RSS, and how long the
call that launches one completion takes (p50, p99).
"""

from __future__ import annotations

import bisect
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afterwork.testing import ThreadSampler

from ._chaos import MAX_THREADS, Plan, Scenario, Tracker
from ._harness import (
    Config,
    Result,
    Section,
    Target,
    current_rss_bytes,
    figure,
    fmt,
    med,
    mib,
    paired_ratio,
    peak_rss_bytes,
    percentile,
    run_interleaved,
    table,
)
from ._peers import PEERS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure
    from matplotlib.gridspec import GridSpec

SAMPLE_INTERVAL_S = 0.002
# One colour, line style and marker per peer, the same in every variant's plot, so a peer
# keeps its look when --hang leaves some peers out.
LOOKS = {
    peer: (f"C{i}", ("-", "--", "-.", ":")[i % 4], "osD^v<>P"[i % 8])
    for i, peer in enumerate(PEERS)
}
# The zoomed panels: this many side by side, y ticks every PANEL_TICK threads.
PANEL_COLUMNS = 4
PANEL_TICK = 8
Curve = tuple[list[float], list[int]]
PANEL_NOTE = (
    "Below: one panel per peer, all on the same\n"
    "y range and time window (shaded above when\n"
    "a peer runs past it). Bold: the run with the\n"
    "median makespan, drawn above too; faint:\n"
    "the other runs. Steps hold the last sample."
)
TIMEOUT_PEERS = [name for name, (_, _, _, can) in PEERS.items() if can]
NO_TIMEOUT_REASONS = {
    "raw": "a started thread cannot be stopped, and nothing waits on it to time it out",
    "pool": "`Future.result(timeout=)` only stops the wait; the call keeps its worker",
    "starlette": "`run_in_threadpool` is not cancellable: a timeout around it fires only "
    "once the hung call returns",
}


INTRO = """## peak_threads

The seed's chaos scenario: completions launched 5 ms apart, 7 blocking jobs each, every job
sleeping uniformly 2-5 s times `--scale`, the same durations for every peer. How each peer
runs it:

- **raw threading.Thread**: one `threading.Thread(...).start()` per job (the seed's "before").
  With `--personas`, the seventh job starts one thread per persona and joins them.
- **ThreadPoolExecutor(32)**: one module-level pool, one `submit` per job (the seed's fix).
  The personas job submits each persona to the same pool.
- **asyncio.to_thread**: one task per completion gathering `asyncio.to_thread` calls on the
  default executor, which has `min(32, cores + 4)` workers: 6 on 2 cores.
- **Starlette BackgroundTasks**: what a FastAPI endpoint does, one `BackgroundTasks` per
  completion. Its tasks run one after another, each sync one through `run_in_threadpool` on
  anyio's default 40-token limiter.
- **aiojobs Scheduler(limit=32)**: one `spawn` per job, each job an `asyncio.to_thread` call.
  The loop's default executor is given 32 workers, so the scheduler's limit is what binds.
- **afterwork run / submit**: `Dispatcher(max_threads=32)`; `run` in a task per completion, or
  `await submit(...)` and a task waiting on the handle. The personas job spawns its children
  with `ctx.spawn`.

asyncio.to_thread's runs sleep nearly all the time (6 threads, one idle event loop) and take
several times longer than the others, so they run in a second lane, alongside the other
peers' runs; every other peer runs alone.

*Launch* is the call a request handler makes before it can respond: starting 7 threads, 7
`submit`s, `create_task`, building the `BackgroundTasks`, 7 `spawn`s, a task-group
`start_soon` of `run`, or `await dispatcher.submit`. *Makespan* runs from the first launch to
the last outcome: the last blocking call returning, for the sync peers that nothing observes,
or the last completion finishing (or timing out). *Timed out* counts the jobs a peer reported
as timed out; *ordinary jobs timed out* are the ones that were not hanging, and their work
does not count as done. `asyncio.run` starts one more thread as it exits, to shut the default
executor down: that is the 7th thread of asyncio.to_thread (6 workers) and can be the 33rd of
aiojobs."""


def measure(peer: str, params: dict[str, Any]) -> Result:
    """In a fresh subprocess: run the scenario once as ``peer``."""
    plan = Plan(Scenario(**params))
    _, runner, unit, _ = PEERS[peer]
    scenario = plan.scenario
    expected = {
        "leaf": len(plan.leaves),
        "job": scenario.completions * scenario.jobs,
        "completion": scenario.completions,
    }[unit]
    latencies: list[float] = []
    rss_start = current_rss_bytes()
    with ThreadSampler(interval=SAMPLE_INTERVAL_S) as sampler:
        tracker = Tracker(expected)
        runner(plan, tracker, latencies)
    makespan = tracker.makespan_s
    return {
        "peak_threads": sampler.peak_above_baseline,
        "makespan_s": makespan,
        "efficiency": (plan.useful_work_s - tracker.lost_work_s) / (MAX_THREADS * makespan),
        "peak_rss": peak_rss_bytes(),
        "rss_start": rss_start,
        "launch_p50_us": percentile(latencies, 50) * 1e6,
        "launch_p99_us": percentile(latencies, 99) * 1e6,
        "timed_out": tracker.timed_out,
        "spurious_timeouts": tracker.spurious_timeouts,
        "hung": plan.hung,
        "samples": _downsample(sampler.samples),
    }


def _downsample(samples: list[tuple[float, int]], points: int = 1500) -> list[list[float]]:
    """Keep the peak of each time bin, so a short spike survives in the plot."""
    if not samples:
        return []
    width = max(SAMPLE_INTERVAL_S, samples[-1][0] / points)
    bins: dict[int, int] = {}
    for t, n in samples:
        b = int(t / width)
        bins[b] = max(bins.get(b, n), n)
    return [[round(b * width, 4), n] for b, n in sorted(bins.items())]


def variants(config: Config) -> list[Scenario]:
    """The scenarios this invocation runs."""
    scale = (
        config.scale if config.scale is not None else config.pick(smoke=0.01, quick=0.1, full=1.0)
    )
    completions = 10 if config.smoke else 50
    if config.variant_chosen:
        return [Scenario(scale, completions, hang=config.hang, personas=config.personas)]
    # The variants compare shapes, not speeds: quick mode runs them smaller to fit its
    # 5-minute budget. --full (or an explicit --scale) runs them at the base scale.
    same = config.full or config.scale is not None or config.smoke
    variant_scale = scale if same else scale * 0.3
    return [
        Scenario(scale, completions),
        Scenario(variant_scale, completions, hang=True),
        Scenario(variant_scale, completions, personas=10),
    ]


def _name(scenario: Scenario) -> str:
    parts = ["peak_threads"]
    if scenario.hang:
        parts.append("hang")
    if scenario.personas:
        parts.append("personas")
    return "_".join(parts)


def _title(scenario: Scenario) -> str:
    extra = []
    if scenario.hang:
        extra.append(f"--hang (timeout {fmt(scenario.timeout_s)} s, hang {fmt(scenario.hang_s)} s)")
    if scenario.personas:
        extra.append(f"--personas {scenario.personas}")
    shape = f"{scenario.completions} completions x {scenario.jobs} jobs, --scale {scenario.scale:g}"
    return f"peak_threads {' '.join(extra)} ({shape})".replace("  ", " ")


def run(config: Config) -> Section:
    parts: list[str] = []
    targets: list[Target] = []
    headline = ""
    afterwork_peaks: list[tuple[str, int, int]] = []
    for scenario in variants(config):
        peers = TIMEOUT_PEERS if scenario.hang else list(PEERS)
        # asyncio.to_thread gets min(32, cores + 4) workers: on a small machine its runs are
        # long and nearly idle (a few sleeping threads), so they overlap the other peers' runs.
        background = ("to_thread",)
        results = run_interleaved(
            "peak_threads", peers, scenario.params(), config.repeats, background=background
        )
        name = _name(scenario)
        plot = _plot(results, config.out / f"{name}.png", _title(scenario))
        parts.append(_markdown(scenario, results, plot))
        afterwork_peaks.append(
            (
                name.removeprefix("peak_threads").strip("_") or "base",
                max(r["peak_threads"] for r in results["afterwork_run"]),
                max(r["peak_threads"] for r in results["afterwork_submit"]),
            )
        )
        if not scenario.hang and not scenario.personas:
            headline = _headline(scenario, results, plot)
            targets += _base_targets(scenario, results)
    worst = max(max(run, submit) for _, run, submit in afterwork_peaks)
    targets.insert(
        0,
        Target(
            f"afterwork peak threads above baseline <= {MAX_THREADS} in every variant",
            "run / submit, the most in any run: "
            + ", ".join(f"{name} {run} / {submit}" for name, run, submit in afterwork_peaks),
            worst <= MAX_THREADS,
        ),
    )
    sizes = ", ".join(f"{_title(s).removeprefix('peak_threads ')}" for s in variants(config))
    return Section("peak_threads", "\n\n".join([INTRO, *parts]), targets, headline, sizes)


def _rows(results: dict[str, list[Result]], hang: bool) -> list[list[str]]:
    rows = []
    for peer, runs in results.items():
        row = [
            PEERS[peer][0],
            fmt(med(runs, "peak_threads"), 0),
            fmt(med(runs, "makespan_s")),
            fmt(med(runs, "efficiency") * 100, 0) + "%",
            mib(med(runs, "peak_rss")),
            fmt(med(runs, "launch_p50_us"), 0),
            fmt(med(runs, "launch_p99_us"), 0),
        ]
        if hang:
            row += [
                f"{med(runs, 'timed_out'):.0f} / {runs[0]['hung']}",
                fmt(med(runs, "spurious_timeouts"), 0),
            ]
        rows.append(row)
    return rows


def _markdown(scenario: Scenario, results: dict[str, list[Result]], plot: Path) -> str:
    headers = ["peer", "peak threads", "makespan (s)", "slot efficiency", "peak RSS (MiB)"]
    headers += ["launch p50 (µs)", "launch p99 (µs)"]
    if scenario.hang:
        headers += ["timed out / hung", "ordinary jobs timed out"]
    text = f"### {_title(scenario)}\n\n{table(headers, _rows(results, scenario.hang))}"
    if scenario.hang:
        text += "\n\nPeers that cannot time out a running job sit this variant out:\n\n"
        text += "\n".join(f"- {PEERS[p][0]}: {why}." for p, why in NO_TIMEOUT_REASONS.items())
    return text + f"\n\n![thread count over time]({plot.name})"


def _headline(scenario: Scenario, results: dict[str, list[Result]], plot: Path) -> str:
    rows = [
        [
            PEERS[peer][0],
            fmt(med(runs, "peak_threads"), 0),
            fmt(med(runs, "makespan_s")),
            fmt(med(runs, "efficiency") * 100, 0) + "%",
        ]
        for peer, runs in results.items()
    ]
    headers = ["peer", "peak threads above baseline", "makespan (s)", "slot efficiency"]
    return f"{table(headers, rows)}\n\n![thread count over time]({plot.name})"


def _base_targets(scenario: Scenario, results: dict[str, list[Result]]) -> list[Target]:
    raw = med(results["raw"], "peak_threads")
    targets = [
        Target(
            "raw peer peak threads >= 300 at the default scale",
            f"{raw:.0f} (median) at --scale {scenario.scale:g}",
            raw >= 300,
        )
    ]
    for peer in ("afterwork_run", "afterwork_submit"):
        ratio = paired_ratio(results[peer], results["pool"], "makespan_s")
        targets.append(
            Target(
                f"{PEERS[peer][0]} makespan within 5% of ThreadPoolExecutor(32)",
                f"{fmt(med(results[peer], 'makespan_s'))} s vs "
                f"{fmt(med(results['pool'], 'makespan_s'))} s: ratio {ratio:.3f}",
                ratio <= 1.05,
            )
        )
    return targets


def _plot(results: dict[str, list[Result]], path: Path, title: str) -> Path:
    """The whole run of every peer on top, and below it one zoomed panel per peer.

    On a single linear axis the raw-threads spike and asyncio.to_thread's long tail squeeze
    the peers that sit at the budget into one flat band. The panels share one y range near
    the budget and the time window the bounded peers need, so each peer reads on its own,
    even where several peers' curves coincide.
    """
    ordered = {peer: _median_first(runs) for peer, runs in results.items()}
    curves = {peer: [_xy(run) for run in runs if run["samples"]] for peer, runs in ordered.items()}
    window, top = _window(curves), _panel_top(curves)
    rows = -(-len(curves) // PANEL_COLUMNS)
    with figure(path, (12, 3.9 + 2.2 * rows)) as ax:
        fig = ax.figure
        grid = fig.add_gridspec(1 + rows, PANEL_COLUMNS, height_ratios=[1.8] + [1] * rows)
        # The full view takes the top row but one cell: the legend goes there, off the data.
        ax.set_subplotspec(grid[0, :-1])
        _full_view(ax, curves, window)
        _legend(fig.add_subplot(grid[0, -1]), ax)
        panels = _panel_axes(fig, grid, len(curves))
        for i, (panel, (peer, runs)) in enumerate(zip(panels, curves.items(), strict=True)):
            _panel(panel, peer, runs, window, top)
            _panel_title(panel, peer, ordered[peer][0])
            _label_outer(panel, i, len(curves))
        fig.suptitle(title, fontsize=11)
    return path


def _panel_axes(fig: Figure | SubFigure, grid: GridSpec, count: int) -> list[Axes]:
    """``count`` panels in the grid's rows below the full view, all on one x and one y scale."""
    panels: list[Axes] = []
    for i in range(count):
        panel = fig.add_subplot(grid[1 + i // PANEL_COLUMNS, i % PANEL_COLUMNS])
        if panels:
            panel.sharex(panels[0])
            panel.sharey(panels[0])
        panels.append(panel)
    return panels


def _median_first(runs: list[Result]) -> list[Result]:
    """A peer's runs, the one with the median makespan first.

    That run stands for the peer; the others are drawn faintly in its panel, to show how much
    the repeats differ.
    """
    ordered = sorted(runs, key=lambda r: r["makespan_s"])
    ordered.insert(0, ordered.pop(len(ordered) // 2))
    return ordered


def _xy(run: Result) -> Curve:
    xs, ys = zip(*run["samples"], strict=True)
    return [float(x) for x in xs], [int(y) for y in ys]


def _window(curves: dict[str, list[Curve]]) -> float:
    """The seconds the panels show: up to the end of the last peer that is not an outlier.

    A peer that runs more than twice as long as the typical one (asyncio.to_thread on a small
    machine) would squeeze the others into a sliver: its panel says where it ends instead.
    """
    ends = _ends(curves)
    if not ends:
        return 1.0
    typical = statistics.median(ends)
    return 1.03 * max(end for end in ends if end <= 2 * typical)


def _ends(curves: dict[str, list[Curve]]) -> list[float]:
    """When each peer's median-makespan run took its last sample."""
    return [runs[0][0][-1] for runs in curves.values() if runs]


def _panel_top(curves: dict[str, list[Curve]]) -> int:
    """The panels' shared y limit: room above the budget and every peak near it.

    A peak more than twice the budget (raw threads) is left off scale and labelled instead.
    """
    peaks = [max(runs[0][1]) for runs in curves.values() if runs]
    near = [peak for peak in peaks if peak <= 2 * MAX_THREADS]
    return PANEL_TICK * (max([MAX_THREADS, *near]) // PANEL_TICK + 1)


def _full_view(ax: Axes, curves: dict[str, list[Curve]], window: float) -> None:
    for i, (peer, runs) in enumerate(curves.items()):
        if not runs:
            continue
        xs, ys = runs[0]
        color, style, marker = LOOKS[peer]
        ax.step(
            xs,
            ys,
            where="post",
            color=color,
            linestyle=style,
            linewidth=1.3,
            marker=marker,
            markersize=4,
            # Markers a little apart from one peer to the next, so that curves lying on top
            # of each other (several peers at exactly 32) still show every peer's marker.
            markevery=(0.013 * i, 0.09),
            label=f"{PEERS[peer][0]} (peak {max(ys)})",
        )
    if max(_ends(curves), default=0.0) > window:
        ax.axvspan(0, window, color="grey", alpha=0.08, linewidth=0)
    _budget(ax)
    _integer_ticks(ax)
    ax.set_xlim(left=0)
    # Headroom over the budget line, so its label never sits on the frame.
    ax.set_ylim(0, max(ax.get_ylim()[1], 1.25 * MAX_THREADS))
    ax.set_xlabel("seconds since the first completion")
    ax.set_ylabel("OS threads above baseline")
    ax.set_title("the whole run, every peer", fontsize=9, loc="left")


def _legend(cell: Axes, full_view: Axes) -> None:
    cell.axis("off")
    handles, labels = full_view.get_legend_handles_labels()
    cell.legend(handles, labels, loc="upper left", fontsize=8, frameon=False)
    cell.text(0.0, 0.0, PANEL_NOTE, fontsize=7.5, color="dimgrey", va="bottom")


def _panel(ax: Axes, peer: str, runs: list[Curve], window: float, top: int) -> None:
    color, style, _ = LOOKS[peer]
    for xs, ys in runs[1:]:
        ax.step(xs, ys, where="post", color=color, linewidth=0.8, alpha=0.35)
    if runs:
        xs, ys = runs[0]
        ax.step(xs, ys, where="post", color=color, linestyle=style, linewidth=1.5)
        _off_scale(ax, runs[0], window, top)
    ax.set_xlim(0, window)
    ax.set_ylim(0, top)
    _budget(ax, in_panel=True)
    _panel_ticks(ax)
    ax.grid(alpha=0.3)


def _panel_title(ax: Axes, peer: str, run: Result) -> None:
    # The bold run's own figures, the same numbers as that run's row would show in the table.
    numbers = f"peak {run['peak_threads']}, makespan {run['makespan_s']:.2f} s"
    ax.set_title(f"{PEERS[peer][0]}\n{numbers}", fontsize=9)


def _off_scale(ax: Axes, curve: Curve, window: float, top: int) -> None:
    """Say what the zoom hides: a peak above the panel, a tail past its right edge."""
    xs, ys = curve
    peak = max(ys)
    if peak > top:
        # In the top right corner: the spike itself fills the space next to its peak.
        ax.text(
            0.98,
            0.96,
            f"\u2191 off scale: peak {peak} at {xs[ys.index(peak)]:.2f} s",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    if xs[-1] > window:
        level = ys[bisect.bisect_right(xs, window) - 1]
        ax.annotate(
            f"runs on to {xs[-1]:.1f} s \u2192",
            (window, level),
            xytext=(-3, 3),
            textcoords="offset points",
            ha="right",
            fontsize=8,
        )


def _budget(ax: Axes, *, in_panel: bool = False) -> None:
    """The budget line and its label.

    The label sits just above the line, where few curves go: in the full view at its right
    end, past all but asyncio.to_thread's low tail; in a panel at its middle, because the
    ramps up and the falling edges (Starlette's from 40) crowd both ends.
    """
    ax.axhline(MAX_THREADS, color="grey", linestyle="--", linewidth=0.8)
    x, offset, ha = (0.5, (0, 2), "center") if in_panel else (1.0, (-3, 2), "right")
    ax.annotate(
        f"{MAX_THREADS}-thread budget",
        (x, MAX_THREADS),
        xycoords=("axes fraction", "data"),
        xytext=offset,
        textcoords="offset points",
        ha=ha,
        va="bottom",
        color="dimgrey",
        fontsize=7,
    )


def _integer_ticks(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    # Threads come whole: a tick at 12.5 threads would only invite misreading.
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _panel_ticks(ax: Axes) -> None:
    from matplotlib.ticker import MultipleLocator

    # Steps of 8 put the 32-thread budget on a tick.
    ax.yaxis.set_major_locator(MultipleLocator(PANEL_TICK))


def _label_outer(ax: Axes, index: int, count: int) -> None:
    """Tick labels on the left column and on the lowest panel of each column only."""
    lowest = index + PANEL_COLUMNS >= count
    ax.tick_params(labelleft=index % PANEL_COLUMNS == 0, labelbottom=lowest)
    if lowest:
        ax.set_xlabel("seconds", fontsize=8)
    if index % PANEL_COLUMNS == 0:
        ax.set_ylabel("threads", fontsize=8)
