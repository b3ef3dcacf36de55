"""``python -m benchmarks [NAME ...] [--smoke | --full] [--hang] [--personas N] [--scale S]``.

With no NAME every benchmark runs, and RESULTS.md and the plots in ``benchmarks/`` are
rewritten. A partial run, a run with a variant or scale of its own, and ``--smoke`` write into
a temporary directory instead (or into ``--out``), so the committed results always come from
one complete run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from . import BENCHMARKS
from ._harness import Config, Section, log
from ._report import render, targets_table

HERE = Path(__file__).resolve().parent


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure afterwork against raw threads, the thread pool and async peers.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--smoke",
        action="store_true",
        help="each benchmark once at a tiny size, into a temporary directory",
    )
    size.add_argument("--full", action="store_true", help="the seed's own time scale and sizes")
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="peak_threads: job sleeps are 2-5 s times this (default 0.1)",
    )
    parser.add_argument(
        "--hang", action="store_true", help="peak_threads: every tenth job hangs past its timeout"
    )
    parser.add_argument(
        "--personas",
        type=int,
        default=0,
        metavar="N",
        help="peak_threads: the seventh job fans out N children",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per measurement, at least 3 (medians are reported)",
    )
    parser.add_argument("--out", type=Path, default=None, help="where results and plots go")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    if args.repeats < 3 and not args.smoke:
        parser.error("--repeats must be at least 3: results are medians of repeated runs")
    if args.personas < 0:
        parser.error("--personas must be >= 0")
    if args.scale is not None and args.scale <= 0:
        parser.error("--scale must be > 0")
    return args


def make_config(args: argparse.Namespace) -> tuple[Config, bool]:
    """The run's config, and whether it is the complete run that owns RESULTS.md."""
    variant = args.hang or args.personas > 0
    complete = not args.names and not args.smoke and not variant and args.scale is None
    if args.out is not None:
        out = args.out
        # Made now, so that a path that cannot be written fails before the run, not after it.
        out.mkdir(parents=True, exist_ok=True)
    elif complete:
        out = HERE
    else:
        out = Path(tempfile.mkdtemp(prefix="afterwork-bench-"))
    config = Config(
        out=out,
        smoke=args.smoke,
        full=args.full,
        repeats=1 if args.smoke else args.repeats,
        scale=args.scale,
        hang=args.hang,
        personas=args.personas,
        variant_chosen=variant,
    )
    return config, complete or args.out is not None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config, write_results = make_config(args)
    names = list(args.names or BENCHMARKS)
    if (args.hang or args.personas) and "peak_threads" not in names:
        log("--hang and --personas apply to peak_threads only")
    started = time.perf_counter()
    sections: list[Section] = []
    for name in names:
        log(f"{name} ({config.mode} mode)")
        module = importlib.import_module(f"benchmarks.{name}")
        section: Section = module.run(config)
        sections.append(section)
        print(f"\n{section.markdown}\n", flush=True)
    elapsed = time.perf_counter() - started
    print(targets_table(sections))
    if write_results:
        path = config.out / "RESULTS.md"
        path.write_text(render(config, sections, elapsed))
        log(f"wrote {path}")
    log(f"plots in {config.out}; took {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
