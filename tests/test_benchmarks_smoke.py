"""The benchmarks package imports and parses its arguments; CI runs it for real with --smoke."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks import BENCHMARKS
from benchmarks.__main__ import HERE, make_config, parse_args
from benchmarks._chaos import Plan, Scenario
from benchmarks._harness import Config, percentile, table
from benchmarks._loadgen import parse_head, post
from benchmarks.peak_threads import variants
from benchmarks.scaleout import Runs, at_fraction, ended, rate, running_on


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


def test_loadgen_reads_status_and_length() -> None:
    """The service benchmark's load generator frames requests and reads any header case."""
    request = post(8000, b'{"a": 1}')
    assert request.endswith(b'Content-Length: 8\r\n\r\n{"a": 1}')
    accepted = b"HTTP/1.1 202 Accepted\r\ncontent-type: x\r\ncontent-length: 57"
    assert parse_head(accepted) == (202, 57)
    assert parse_head(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0") == (503, 0)


def test_scaleout_reads_the_runs_file_as_it_grows(tmp_path: Path) -> None:
    """The scaleout benchmark parses the jobs' runs file incrementally, leaving a line still
    being written for the next read, and times rates over a window of job ends."""
    path = tmp_path / "runs.txt"
    runs = Runs(path)
    assert runs.marks() == []
    path.write_text("start w1-0 job0 7 1.0\nend w1-0 job0 7 1.1\nstart w1-1 jo")
    assert [(m.kind, m.burst, m.pid) for m in runs.marks()] == [
        ("start", "w1", 7),
        ("end", "w1", 7),
    ]
    with path.open("a") as runs_file:
        runs_file.write("b0 8 1.2\n")
    marks = runs.of("w1")
    assert marks[-1].item == ("w1-1", "job0")
    assert (ended(marks), running_on(marks, 8)) == (1, {("w1-1", "job0")})
    assert rate([1.0, 1.1, 1.2, 1.3], 1.0, 1.3) == pytest.approx(10.0)
    assert at_fraction([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
