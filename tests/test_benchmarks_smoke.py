"""The benchmarks package imports and parses its arguments; CI runs it for real with --smoke."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks import BENCHMARKS
from benchmarks.__main__ import HERE, make_config, parse_args
from benchmarks._chaos import Plan, Scenario
from benchmarks._harness import Config, percentile, table
from benchmarks.peak_threads import variants


def test_every_benchmark_imports() -> None:
    """Each listed benchmark has the run/measure pair the harness calls."""
    import importlib

    for name in BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        assert callable(module.run)
        assert callable(module.measure)


def test_default_run_owns_results() -> None:
    """A bare run writes RESULTS.md next to the benchmarks, three repeats."""
    config, write = make_config(parse_args([]))
    assert (config.out, config.repeats, config.mode, write) == (HERE, 3, "quick", True)


def test_smoke_writes_elsewhere() -> None:
    """--smoke runs once and never touches the committed results."""
    config, write = make_config(parse_args(["--smoke"]))
    assert config.repeats == 1
    assert config.out != HERE
    assert not write


def test_variant_run_writes_elsewhere() -> None:
    """A single benchmark with a variant goes to a temporary directory."""
    config, write = make_config(parse_args(["peak_threads", "--hang", "--personas", "10"]))
    assert config.variant_chosen
    assert config.hang
    assert config.personas == 10
    assert config.out != HERE
    assert not write


@pytest.mark.parametrize(
    "argv", [["--repeats", "2"], ["nonesuch"], ["--personas", "-1"], ["--smoke", "--full"]]
)
def test_bad_arguments_exit(argv: list[str]) -> None:
    """Too few repeats, unknown names, negative personas, and smoke with full are refused."""
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_all_variants_when_none_chosen(tmp_path: Path) -> None:
    """A full run covers the base scenario, --hang and --personas 10."""
    shapes = [(s.hang, s.personas) for s in variants(Config(out=tmp_path))]
    assert shapes == [(False, 0), (True, 0), (False, 10)]


def test_plan_is_reproducible() -> None:
    """Every peer sleeps the same durations: the plan comes from a fixed seed."""
    first, second = Plan(Scenario()), Plan(Scenario())
    assert [leaf.seconds for leaf in first.leaves] == [leaf.seconds for leaf in second.leaves]
    assert len(first.leaves) == 50 * 7
    assert all(0.2 <= leaf.seconds <= 0.5 for leaf in first.leaves)


def test_plan_variants() -> None:
    """--hang hangs every tenth call; --personas turns the seventh job into N children."""
    hung = Plan(Scenario(hang=True))
    assert hung.hung == 35
    assert all(leaf.hangs == (leaf.index % 10 == 9) for leaf in hung.leaves)
    fanned = Plan(Scenario(personas=10))
    assert len(fanned.leaves) == 50 * 16
    assert len(fanned.jobs[0][6]) == 10


def test_percentile_and_table() -> None:
    """The statistics and the markdown table the results are built from."""
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert table(["a", "b"], [["x", "1.5"]]).splitlines()[1] == "|---|---:|"
