"""The afterwork command: serve (with its drain on SIGTERM), demo and bench."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest

from afterwork import cli
from afterwork.conversations import ServiceSettings

COMMAND = str(Path(sys.executable).parent / "afterwork")


def test_bench_passes_its_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """'afterwork bench ARGS' runs 'python -m benchmarks ARGS' and returns its status."""
    calls: list[Sequence[str]] = []

    def fake_call(command: Sequence[str]) -> int:
        calls.append(command)
        return 5

    monkeypatch.setattr(subprocess, "call", fake_call)
    assert cli.main(["bench", "--smoke", "--help"]) == 5
    assert calls == [[sys.executable, "-m", "benchmarks", "--smoke", "--help"]]


def test_a_bad_setting_stops_serve_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """AFTERWORK_MAX_THREADS=0 exits 2 before anything starts, naming the variable."""
    monkeypatch.setenv("AFTERWORK_MAX_THREADS", "0")
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err == (
        "afterwork serve: invalid setting AFTERWORK_MAX_THREADS='0': "
        "Input should be greater than or equal to 1\n"
    )


def test_a_bad_flag_is_named_as_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """A flag's bad value is reported under the flag's name."""
    assert cli.main(["serve", "--port", "70000"]) == 2
    assert capsys.readouterr().err == (
        "afterwork serve: invalid setting --port=70000: Input should be less than or equal "
        "to 65535\n"
    )


def test_lanes_that_are_not_json_are_explained(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """AFTERWORK_LANES must be JSON; the message says so, with an example."""
    monkeypatch.setenv("AFTERWORK_LANES", "llm=6")
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err == (
        'afterwork serve: invalid setting: error parsing value for field "lanes" from source '
        '"EnvSettingsSource"; AFTERWORK_LANES, AFTERWORK_LLM_LATENCY_S and '
        'AFTERWORK_WEBHOOK_RETRY_DELAYS_S take JSON, e.g. {"llm": 6} or [1, 5, 30]\n'
    )


def test_a_journal_setting_that_is_not_a_boolean_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """AFTERWORK_JOURNAL=maybe exits 2 at start, naming the variable and the value."""
    monkeypatch.setenv("AFTERWORK_JOURNAL", "maybe")
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err == (
        "afterwork serve: invalid setting AFTERWORK_JOURNAL='maybe': Input should be a valid "
        "boolean, unable to interpret input\n"
    )


def test_request_threads_must_be_at_least_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """AFTERWORK_REQUEST_THREADS=0 would leave requests no thread: refused at start."""
    monkeypatch.setenv("AFTERWORK_REQUEST_THREADS", "0")
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err == (
        "afterwork serve: invalid setting AFTERWORK_REQUEST_THREADS='0': "
        "Input should be greater than or equal to 1\n"
    )


def test_no_journal_flag_turns_the_journal_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--no-journal reaches the settings; without it the journal is on, beside the db."""
    seen: list[ServiceSettings] = []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()

    def run_server(settings: ServiceSettings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(cli, "_run_server", run_server)
    assert cli.main(["serve", "--no-journal", "--db", "var/s.db"]) == 0
    assert cli.main(["serve", "--db", "var/s.db"]) == 0
    assert [s.journal for s in seen] == [False, True]
    assert seen[1].journal_path == Path("var/s.journal.db")


def test_demo_refuses_zero_conversations(capsys: pytest.CaptureFixture[str]) -> None:
    """--conversations 0 is a usage error that names the value."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--conversations", "0"])
    assert exit_info.value.code == 2
    assert "argument --conversations: must be a whole number >= 1, got '0'" in (
        capsys.readouterr().err
    )


def test_the_demo_runs_and_checks_itself(tmp_path: Path) -> None:
    """'afterwork demo' at a small size passes its own checks and writes the plot."""
    result = subprocess.run(
        [COMMAND, "demo", "--conversations", "20", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo passed: 18 expectations held" in result.stdout
    assert (tmp_path / "threads.png").stat().st_size > 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(
    url: str, ready: Callable[[httpx.Response], bool], limit: float = 15.0
) -> httpx.Response:
    """Poll ``url`` until ``ready(response)``: the server is another process."""
    deadline = time.monotonic() + limit
    while True:
        try:
            response = httpx.get(url, timeout=1)
            if ready(response):
                return response
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} was not ready within {limit} s")
        time.sleep(0.05)


def test_sigterm_drains_and_names_what_was_left(tmp_path: Path) -> None:
    """On SIGTERM the service drains for drain_timeout, then names each unfinished job."""
    port = _free_port()
    env = {
        **os.environ,
        "AFTERWORK_DRAIN_TIMEOUT": "0.2",
        "AFTERWORK_LLM_LATENCY_S": "[30, 30]",  # the model never answers in time
    }
    server = subprocess.Popen(
        [COMMAND, "serve", "--port", str(port), "--db", str(tmp_path / "s.db")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/healthz", lambda r: r.status_code == 200)
        event = {"conversation": {"id": "c1", "uid": "u1", "created_at": "2026-03-14T09:30:00Z"}}
        accepted = httpx.post(f"{base}/v1/conversations/completed", json=event, timeout=5)
        assert accepted.status_code == 202
        _wait_for(
            f"{base}/v1/stats", lambda r: r.json()["completed"] == 0 and r.json()["running"] == 3
        )
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    # uvicorn re-raises the SIGTERM it caught once shutdown is done, as a process should.
    assert server.returncode == -signal.SIGTERM, stderr
    # Not a terminal: every line is JSON, uvicorn's own records included.
    events = [json.loads(line) for line in stderr.splitlines()]
    assert any(e["event"] == "Shutting down" and e["level"] == "info" for e in events)
    (unfinished,) = [e for e in events if e["event"] == "dispatcher.unfinished"]
    assert unfinished["jobs"] == [
        "conversation.completed:c1:extract_memories",
        "conversation.completed:c1:extract_trends",
        "conversation.completed:c1:save_action_items",
    ]
    # The three threads sleep on (30 s): the dispatcher says so before it closes.
    assert [e["event"] for e in events if e["event"].startswith("dispatcher.")] == [
        "dispatcher.draining",
        "dispatcher.unfinished",
        "dispatcher.threads_abandoned",
        "dispatcher.closed",
    ]
