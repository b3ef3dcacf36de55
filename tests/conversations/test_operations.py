"""The service as an operator runs it, end to end over real HTTP on 127.0.0.1 (issue 10).

- 9: task-integration calls have a lane of their own: a hanging endpoint never holds the LLM's;
- 10: long webhook waits park (deferred, no pending place), Retry-After honoured up to its cap;
- 11: SIGTERM with a ``?wait=true`` request open: out within the drain, the client gets a 503;
- 12-14: readiness, version, metrics and the JSON access log;
- 15: header and body deadlines cut slow clients off, and spare a normal keep-alive client;
- 17: ``ok`` only once finished, ``serve --help`` lists the settings, a missing db folder.

In-process services run under uvicorn (``afterwork.testing.serving``) with the service's own
h11 protocol (the header deadline); ``afterwork serve`` runs as a subprocess where a test needs
a signal or the command line.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Receive, Scope, Send
from structlog.typing import EventDict

import afterwork as aw
from afterwork.conversations import (
    JOBS,
    Conversation,
    Extractor,
    RuleExtractor,
    ServiceSettings,
    Store,
    configure_logging,
    create_app,
)
from afterwork.conversations._receiver import Receiver
from afterwork.conversations._server import protocol
from afterwork.conversations._service import Service
from afterwork.testing import base_url, serving, wait_until

from .conftest import GateExtractor, threaded_server

URL = "/v1/conversations/completed"
PROCESSING = "/v1/conversations/{conversation_id}/processing"
TOKEN = "operations-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COMMAND = str(Path(sys.executable).parent / "afterwork")
ROOT = Path(__file__).resolve().parents[2]
#: The events of a job's final outcome.
FINAL = {f"job.{status.value}" for status in aw.JobStatus if status.is_final}


@asynccontextmanager
async def service(
    tmp_path: Path, extractor: Extractor | None = None, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Service]]:
    """The service on ``tmp_path/service.db`` under uvicorn with its own h11 protocol (the
    header deadline), and a client that carries the token when one is configured."""
    defaults: dict[str, Any] = {"max_threads": 8, "lanes": {"llm": 2, "http": 4}}
    settings = ServiceSettings(db=tmp_path / "service.db", port=0, **{**defaults, **options})
    app = create_app(settings, extractor=extractor)
    headers = AUTH if settings.api_token is not None else {}
    async with (
        serving(app, http=protocol(settings)) as server,
        httpx.AsyncClient(base_url=base_url(server), timeout=30, headers=headers) as client,
    ):
        yield client, app.state.service


def body(cid: str, uid: str = "u1", reprocess: bool = False) -> dict[str, Any]:
    """A conversation with a detected task and an action item (so ``auto_sync`` has work)."""
    return {
        "conversation": {
            "id": cid,
            "uid": uid,
            "created_at": "2026-03-14T09:30:00Z",
            "transcript_segments": [
                {"speaker": "user", "text": "I love tea. I need to call mom.", "start": 0, "end": 1}
            ],
            "structured": {"title": "A chat", "category": "personal", "action_items": ["Buy milk"]},
        },
        "reprocess": reprocess,
    }


def seeded(tmp_path: Path, webhooks: dict[tuple[str, str], str]) -> None:
    """The service's database, created ahead with ``(uid, kind) -> url`` integrations."""
    store = Store(tmp_path / "service.db")
    store.initialise()
    for (uid, kind), url in webhooks.items():
        store.set_webhook(uid, kind, url)
    store.close()


def finished(running: Service, cids: list[str]) -> list[str]:
    """Which of ``cids`` the dispatcher holds no unfinished work for."""
    return [cid for cid in cids if not running.dispatcher.unfinished(running.pipeline, cid)]


# -- 9: HTTP calls have a lane of their own ---------------------------------------------------


class Hanging:
    """A task integration that takes each request and answers nothing until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = 0
        self.answered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        while message.get("more_body", False):
            message = await receive()
        self.arrived += 1
        # Bounded, so a failing test cannot hang the suite; the test releases it long before.
        await anyio.to_thread.run_sync(self.release.wait, 60)
        payload = b'{"synced": 1}'
        headers = [(b"content-type", b"application/json"), (b"content-length", b"13")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        self.answered += 1


async def test_a_hanging_task_integration_never_holds_the_llm_lane(
    tmp_path: Path, events: list[EventDict]
) -> None:
    """With every HTTP token held by hanging task-integration calls, other users' LLM jobs
    run, and their conversations finish, while the hanging ones are still stuck."""
    hang = Hanging()
    hung = [f"hung-{n}" for n in range(4)]
    healthy = [f"ok-{user}-{n}" for user in range(10) for n in range(2)]
    llm_jobs = {"extract_memories", "extract_trends", "save_action_items"}

    def final(cids: list[str], jobs: set[str]) -> set[tuple[str, str]]:
        """The (conversation, job) pairs among ``cids`` x ``jobs`` that logged an outcome."""
        return {
            (e["key"], e["job"])
            for e in events
            if e["event"] in FINAL and e.get("key") in cids and e.get("job") in jobs
        }

    with threaded_server(hang) as tasks:
        seeded(tmp_path, {(cid, "tasks"): f"{tasks}/tasks/{cid}" for cid in hung})
        options: dict[str, Any] = {
            "lanes": {"llm": 2, "http": 2},
            "webhook_read_timeout_s": 600.0,
            "job_timeout_s": 600.0,
            "drain_timeout": 10.0,
        }
        async with service(tmp_path, **options) as (client, running):
            try:
                for cid in hung:  # each is its own user, with a task integration that hangs
                    assert (await client.post(URL, json=body(cid, uid=cid))).status_code == 202
                await wait_until(lambda: hang.arrived == 2, "both HTTP tokens held by the hang")
                for cid in healthy:  # users without a task integration or a webhook
                    user = cid.rsplit("-", 1)[0]
                    assert (await client.post(URL, json=body(cid, uid=user))).status_code == 202
                await wait_until(
                    lambda: len(final(healthy, llm_jobs)) == len(healthy) * len(llm_jobs),
                    "the healthy conversations' LLM jobs to finish",
                )
                with contextlib.suppress(AssertionError):  # counted below, with the details
                    await wait_until(
                        lambda: len(finished(running, healthy)) == len(healthy),
                        "every healthy conversation to finish",
                        limit=20,
                    )
                done = finished(running, healthy)
                stuck = [cid for cid in hung if cid not in finished(running, hung)]
                calls = (hang.arrived, hang.answered)
                seen = final(healthy, set(JOBS))
                missing = Counter(job for cid in healthy for job in JOBS if (cid, job) not in seen)
                answers = [
                    (await client.get(f"/v1/conversations/{cid}/processing")).json() for cid in done
                ]
            finally:
                hang.release.set()
    print(
        f"\n{len(final(healthy, llm_jobs))} of {len(healthy) * len(llm_jobs)} healthy LLM jobs "
        f"and {len(done)} of {len(healthy)} healthy conversations finished while {len(stuck)} of "
        f"{len(hung)} hung ones were stuck ({calls[0]} task calls hanging, the rest queued); "
        f"jobs the unfinished healthy ones still wait for: {dict(missing)}"
    )
    assert stuck == hung
    assert calls == (2, 0)  # the HTTP lane's cap: two calls in flight, none answered
    assert len(done) == len(healthy), f"healthy conversations held back by: {dict(missing)}"
    for answer in answers:
        assert (answer["state"], answer["ok"]) == ("finished", True), answer


# -- 10: long webhook waits park, holding no admission room ----------------------------------


async def test_throttled_webhooks_park_and_healthy_users_keep_getting_202(tmp_path: Path) -> None:
    """60 conversations whose webhook answers 429 (Retry-After: 60) park without holding a
    pending place (max_pending=20); the processing endpoint says deferred until ~60 s on, and
    another user's conversations still get 202 and finish."""
    hooks = Receiver(retry_after_s=60)
    with threaded_server(hooks.app) as url:
        seeded(
            tmp_path,
            {("alice", "conversation_created"): f"{url}/hooks/throttle/alice",
             ("bob", "conversation_created"): f"{url}/hooks/ok/bob"},
        )  # fmt: skip
        async with service(tmp_path, park_after=0.5, max_pending=20) as (client, running):
            stats = running.dispatcher.stats
            alice: Counter[int] = Counter()
            before = datetime.now(UTC)
            for batch in range(6):  # 10 at a time, fewer than max_pending: each batch must park
                for n in range(10):
                    response = await client.post(URL, json=body(f"a{batch}-{n}", uid="alice"))
                    alice[response.status_code] += 1
                await wait_until(lambda: stats().pending == 0, f"alice's batch {batch} to park")
            after = datetime.now(UTC)
            parked = stats()
            deferred = (await client.get("/v1/conversations/a0-0/processing")).json()
            bob: Counter[int] = Counter()
            bobs = [f"b{n}" for n in range(20)]
            for cid in bobs:
                bob[(await client.post(URL, json=body(cid, uid="bob"))).status_code] += 1
            await wait_until(lambda: len(finished(running, bobs)) == len(bobs), "bob's to finish")
            answers = [
                (await client.get(f"/v1/conversations/{cid}/processing")).json() for cid in bobs
            ]
            still = stats()
    print(
        f"\nthrottled user: {alice[202]} x 202, {alice[503]} x 503, {parked.delayed} parked, "
        f"{parked.pending} pending (max_pending=20); healthy user: {bob[202]} x 202, "
        f"{bob[503]} x 503, {sum(a['ok'] for a in answers)} of {len(bobs)} finished ok"
    )
    assert alice == {202: 60}
    assert (parked.pending, parked.delayed, parked.deferred) == (0, 60, 60)
    assert (deferred["state"], deferred["ok"]) == ("deferred", False)
    retry_at = datetime.fromisoformat(deferred["retry_at"])
    second = timedelta(seconds=1)
    assert before + timedelta(seconds=60) - second <= retry_at <= after + timedelta(seconds=60)
    (webhook,) = [o for o in deferred["outcomes"] if o["job"] == "conversation_created_webhook"]
    assert webhook["status"] == "deferred"
    assert bob == {202: 20}
    assert all((a["state"], a["ok"]) == ("finished", True) for a in answers), answers
    assert (still.pending, still.delayed) == (0, 60)  # alice's still wait their 60 s
    assert len(hooks.delivered) == 20  # bob's webhooks, once each; alice's not retried yet


async def test_a_retry_after_above_the_cap_waits_only_the_cap(tmp_path: Path) -> None:
    """Retry-After: 3600 with webhook_max_retry_after_s=30 defers the webhook by 30 s."""
    hooks = Receiver(retry_after_s=3600)
    with threaded_server(hooks.app) as url:
        seeded(tmp_path, {("alice", "conversation_created"): f"{url}/hooks/throttle/alice"})
        options: dict[str, Any] = {"park_after": 0.5, "webhook_max_retry_after_s": 30.0}
        async with service(tmp_path, **options) as (client, running):
            stats = running.dispatcher.stats
            before = datetime.now(UTC)
            assert (await client.post(URL, json=body("c1", uid="alice"))).status_code == 202
            await wait_until(lambda: (stats().pending, stats().delayed) == (0, 1), "c1 to park")
            after = datetime.now(UTC)
            answer = (await client.get("/v1/conversations/c1/processing")).json()
    assert answer["state"] == "deferred"
    retry_at = datetime.fromisoformat(answer["retry_at"])
    cap, second = timedelta(seconds=30), timedelta(seconds=1)
    assert before + cap - second <= retry_at <= after + cap + second


# -- 11: SIGTERM with a ?wait=true request open ----------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(**env: str) -> dict[str, str]:
    """This process's environment without any AFTERWORK_* setting, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AFTERWORK_")}
    return {**clean, **env}


class Served:
    """``afterwork serve`` as a subprocess on a free port; its output goes to a file."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.log"
        command = [COMMAND, "serve", "--port", str(self.port), "--db", str(tmp_path / "s.db")]
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                command, env=environment(**env), stdout=out, stderr=subprocess.STDOUT
            )

    async def started(self, client: httpx.AsyncClient) -> None:
        with anyio.fail_after(30):
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"serve exited: {self.log.read_text()}")
                try:
                    if (await client.get(f"{self.base}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.05)


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Start ``afterwork serve`` processes; any still running at the end is killed."""
    started: list[Served] = []

    def start(tmp_path: Path, **env: str) -> Served:
        started.append(Served(tmp_path, **env))
        return started[-1]

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
        served.process.wait(timeout=30)


DRAIN_S = 2.0


async def test_sigterm_with_a_waiting_request_exits_within_the_drain_and_answers_503(
    tmp_path: Path, serve: Callable[..., Served]
) -> None:
    """SIGTERM while a ?wait=true request waits on 30 s jobs: the process is gone within
    drain_timeout + 2 s (+ slack), and the client gets a 503 with Retry-After."""
    served = serve(
        tmp_path, AFTERWORK_DRAIN_TIMEOUT=str(DRAIN_S), AFTERWORK_LLM_LATENCY_S="[30, 30]"
    )
    answer: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=served.base, timeout=60) as client:
        await served.started(client)

        async def wait_for_report() -> None:
            try:
                answer["response"] = await client.post(
                    URL, params={"wait": "true"}, json=body("c1")
                )
            except httpx.TransportError as error:  # a dropped connection: the test says so
                answer["error"] = repr(error)

        async with anyio.create_task_group() as group:
            group.start_soon(wait_for_report)
            with anyio.fail_after(30):  # until the three LLM jobs are in their 30 s calls
                while True:
                    if (await client.get("/v1/stats")).json()["threads_busy"] >= 3:
                        break
                    await anyio.sleep(0.05)
            served.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            code = await anyio.to_thread.run_sync(served.process.wait, 30)
            took = time.monotonic() - signalled
    print(f"\nSIGTERM with drain_timeout={DRAIN_S:g}: exited after {took:.2f} s, rc={code}")
    assert "error" not in answer, answer
    response: httpx.Response = answer["response"]
    assert (response.status_code, response.headers.get("Retry-After")) == (503, "1")
    assert response.json()["reason"] == "draining"
    assert took < DRAIN_S + 2 + 3  # drain_timeout + 2 s, and 3 s for a busy machine
    assert code in (0, -signal.SIGTERM), served.log.read_text()


# -- 12: readiness, version, build info -------------------------------------------------------


class HeldModel(RuleExtractor):
    """A model whose ``memories`` blocks for the conversations the test holds."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, threading.Event] = {}
        self.entered: set[str] = set()

    def hold(self, cid: str) -> threading.Event:
        self.held[cid] = threading.Event()
        return self.held[cid]

    def memories(self, conversation: Conversation) -> list[str]:
        gate = self.held.get(conversation.id)
        self.entered.add(conversation.id)
        if gate is not None and not gate.wait(timeout=20):  # bounded: a failing test ends
            raise RuntimeError("the test never let the conversation go")
        return super().memories(conversation)


async def test_readyz_says_why_it_is_not_ready(tmp_path: Path) -> None:
    """/readyz: 200 when a POST would be admitted; 503 with Retry-After and the reasons when
    max_pending is full, and while draining; 200 again once there is room."""
    model = HeldModel()
    first, second = model.hold("c1"), model.hold("c2")
    async with service(tmp_path, model, max_pending=1, retry_after_s=3) as (client, running):
        ready = await client.get("/readyz")
        assert (await client.post(URL, json=body("c1"))).status_code == 202
        await wait_until(lambda: "c1" in model.entered, "c1 to be processing")
        full = await client.get("/readyz")
        first.set()
        await wait_until(lambda: running.dispatcher.stats().pending == 0, "c1 to finish")
        again = await client.get("/readyz")
        assert (await client.post(URL, json=body("c2"))).status_code == 202
        await wait_until(lambda: "c2" in model.entered, "c2 to be processing")
        async with anyio.create_task_group() as group:
            group.start_soon(running.dispatcher.aclose)
            await wait_until(lambda: running.dispatcher.stats().state == "draining", "draining")
            draining = await client.get("/readyz")
            second.set()
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "reasons": []})
    assert "Retry-After" not in ready.headers
    assert (full.status_code, full.headers["Retry-After"]) == (503, "3")
    assert full.json() == {
        "ready": False,
        "reasons": ["no room: 1 completions pending (max_pending)"],
    }
    assert (again.status_code, again.json()) == (200, {"ready": True, "reasons": []})
    assert (draining.status_code, draining.headers["Retry-After"]) == (503, "3")
    assert draining.json() == {
        "ready": False,
        "reasons": ["the dispatcher is draining", "no room: 1 completions pending (max_pending)"],
    }


def test_readyz_is_503_before_the_service_has_started(tmp_path: Path) -> None:
    """Served without its lifespan (nothing opened yet), /readyz and /healthz answer 503."""
    app = create_app(ServiceSettings(db=tmp_path / "service.db", port=0))
    with threaded_server(app) as url:
        ready = httpx.get(f"{url}/readyz", timeout=10)
        health = httpx.get(f"{url}/healthz", timeout=10)
    assert (ready.status_code, ready.json()) == (
        503,
        {"ready": False, "reasons": ["the service is not running"]},
    )
    assert (health.status_code, health.json()) == (503, {"status": "new"})


def test_version_prints_the_version() -> None:
    """``afterwork --version`` prints ``afterwork <version>`` and exits 0."""
    result = subprocess.run(
        [COMMAND, "--version"], capture_output=True, text=True, timeout=30, env=environment()
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"afterwork {aw.__version__}\n",
        "",
    )


def test_the_version_has_one_source() -> None:
    """pyproject takes the version from ``afterwork.__version__`` (shown by --version and
    build info), so the two cannot disagree; the installed metadata says the same."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/afterwork/__init__.py"
    assert importlib.metadata.version("afterwork") == aw.__version__


async def test_metrics_carry_the_build_info(tmp_path: Path) -> None:
    """/metrics has afterwork_build_info{version, python} 1."""
    async with service(tmp_path) as (client, _):
        text = (await client.get("/metrics")).text
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name == "afterwork_build_info"
    ]
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        (
            "afterwork_build_info",
            {"version": aw.__version__, "python": platform.python_version()},
            1.0,
        )
    ]


# -- 13: metrics after traffic ----------------------------------------------------------------


async def test_metrics_count_requests_by_route_template_and_refusals_by_reason(
    tmp_path: Path,
) -> None:
    """After real traffic, the request histogram is labelled by route template (never an id),
    method and status; refusals are counted by reason; no *_created series."""
    model = HeldModel()
    gate = model.hold("c1")
    options: dict[str, Any] = {"api_token": TOKEN, "max_pending": 1}
    async with service(tmp_path, model, **options) as (client, running):
        assert (await client.post(URL, json=body("c1"))).status_code == 202
        assert (await client.post(URL, json=body("c2"))).status_code == 503
        assert (await client.get("/v1/conversations/c1/processing")).status_code == 200
        assert (await client.get("/v1/conversations/nope/processing")).status_code == 404
        anonymous = {"Authorization": ""}
        assert (await client.get("/v1/stats", headers=anonymous)).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token-at-all"}
        assert (
            await client.get("/v1/conversations/c1/processing", headers=wrong)
        ).status_code == 401
        gate.set()
        await wait_until(lambda: finished(running, ["c1"]) == ["c1"], "c1 to finish")
        assert (await client.post(URL, json=body("c1", uid="mallory"))).status_code == 409
        assert (await client.get("/v1/conversations/c1/processing")).status_code == 200
        text = (await client.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["http_request_duration_seconds"]
    counts = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in requests.samples
        if s.name == "http_request_duration_seconds_count"
    }
    assert counts[(URL, "POST", "202")] == 1
    assert counts[(URL, "POST", "503")] == 1
    assert counts[(URL, "POST", "409")] == 1
    assert counts[(PROCESSING, "GET", "200")] == 2
    assert counts[(PROCESSING, "GET", "404")] == 1
    assert sum(n for (_, _, status), n in counts.items() if status == "401") == 2
    labels = ("route", "method", "status")
    buckets = [
        s
        for s in requests.samples
        if s.name == "http_request_duration_seconds_bucket"
        and tuple(s.labels[name] for name in labels) == (PROCESSING, "GET", "200")
    ]
    assert [s.value for s in buckets if s.labels["le"] == "+Inf"] == [2.0]
    routes = {route for route, _, _ in counts}
    assert not any(cid in route for route in routes for cid in ("c1", "c2", "nope")), routes
    refusals = {
        s.labels["reason"]: s.value
        for s in families["afterwork_refusals"].samples
        if s.name == "afterwork_refusals_total"
    }
    assert refusals == {"overloaded": 1, "unauthorized": 2, "not_found": 1, "conflict": 1}
    names = [s.name for f in families.values() for s in f.samples]
    assert not [name for name in names if name.endswith("_created")]
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert not [line for line in lines if line.split("{")[0].split(" ")[0].endswith("_created")]


# -- 14: the JSON access log ------------------------------------------------------------------


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[Path]:
    """The service's logging configured as JSON lines into a file; restored afterwards."""
    path = tmp_path / "service.log"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with path.open("w") as stream:
        configure_logging(json=True, stream=stream)
        try:
            yield path
        finally:
            root.handlers, root.level = handlers, level


async def test_the_access_log_has_one_json_line_per_request(tmp_path: Path, json_log: Path) -> None:
    """Each request writes one "http.request" JSON line: route template, method, status,
    duration_s and the request id it answered with; no header (the token) is logged."""
    sent: list[tuple[str, str, str, int]] = []
    async with service(tmp_path, api_token=TOKEN) as (client, _):
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", URL, {"json": body("c1")}),
            ("GET", "/v1/conversations/c1/processing", {}),
            ("GET", "/v1/conversations/nope/processing", {}),
            ("POST", URL, {"content": b"{}", "headers": {"Content-Type": "text/plain"}}),
            ("GET", "/healthz", {}),
            ("GET", "/v1/stats", {"headers": {"Authorization": "Bearer wrong-token-0000000"}}),
        ]
        for n, (method, path, extra) in enumerate(calls):
            headers = {"X-Request-ID": f"req-{n}", **extra.pop("headers", {})}
            response = await client.request(method, path, headers=headers, **extra)
            assert response.headers["X-Request-ID"] == f"req-{n}"
            sent.append((f"req-{n}", method, path, response.status_code))
        invalid = await client.get("/v1/stats", headers={"X-Request-ID": "not valid!"})
        made = invalid.headers["X-Request-ID"]
        sent.append((made, "GET", "/v1/stats", invalid.status_code))
    text = json_log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    logged = [line for line in lines if line.get("event") == "http.request"]
    assert len(made) == 32
    assert Counter(e["request_id"] for e in logged) == Counter(rid for rid, *_ in sent)
    by_id = {e["request_id"]: e for e in logged}
    templates = {URL: URL, "/healthz": "/healthz", "/v1/stats": "/v1/stats"}
    for request_id, method, path, status in sent:
        entry = by_id[request_id]
        assert (entry["method"], entry["status"]) == (method, status), entry
        assert isinstance(entry["duration_s"], float), entry
        assert 0 <= entry["duration_s"] < 30, entry
        if status != 401:  # a 401 is answered before routing
            assert entry["route"] == templates.get(path, PROCESSING), entry
        assert not {"c1", "nope"} & set(entry["route"].split("/")), entry
    assert [status for *_, status in sent] == [202, 200, 404, 415, 200, 401, 200]
    assert TOKEN not in text
    assert "authorization" not in text.lower()


# -- 15: slow clients -------------------------------------------------------------------------

SLOW: dict[str, Any] = {"header_timeout_s": 1.0, "body_timeout_s": 1.0}
HEAD = (
    b"POST /v1/conversations/completed HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
)
BODY = b"{" + b" " * 198 + b"}"
#: A slow client must be cut off within this; sending everything would take far longer.
CUT_OFF_S = 10.0


async def trickle(port: int, at_once: bytes, slowly: bytes) -> tuple[bytes, int]:
    """Send ``at_once``, then ``slowly`` a byte every 0.3 s; read until the server closes.
    Returns what the server sent and how many of the slow bytes went out."""
    assert len(slowly) * 0.3 > 3 * CUT_OFF_S  # the client alone would never finish in time
    received = bytearray()
    sent = 0
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        if at_once:
            await stream.send(at_once)

        async def send_slowly() -> None:
            nonlocal sent
            for byte in slowly:
                try:
                    await stream.send(bytes([byte]))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
                sent += 1
                await anyio.sleep(0.3)

        with anyio.fail_after(CUT_OFF_S):
            async with anyio.create_task_group() as group:
                group.start_soon(send_slowly)
                while True:
                    try:
                        received += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        break
                group.cancel_scope.cancel()
    return bytes(received), sent


def port_of(client: httpx.AsyncClient) -> int:
    port = client.base_url.port
    assert port is not None
    return port


async def test_a_client_trickling_its_headers_gets_408_and_is_closed(tmp_path: Path) -> None:
    """A request line and headers sent a byte every 0.3 s get a 408 and the connection
    closes (within header_timeout_s=1, long before the client would have finished)."""
    async with service(tmp_path, **SLOW) as (client, _):
        answer, sent = await trickle(port_of(client), b"", HEAD + BODY)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert answer.endswith(b"(AFTERWORK_HEADER_TIMEOUT_S)\n"), answer
    assert sent < len(HEAD)


async def test_a_client_trickling_its_body_gets_one_408_and_is_closed(tmp_path: Path) -> None:
    """Full headers, then the body a byte every 0.3 s: one 408 naming the body deadline, and
    the connection is closed (no second, unsolicited response)."""
    async with service(tmp_path, **SLOW) as (client, _):
        answer, sent = await trickle(port_of(client), HEAD, BODY)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert dict(_headers(head))["connection"] == "close", head
    assert json.loads(rest[: int(dict(_headers(head))["content-length"])]) == {
        "detail": "the request body did not arrive within 1 s; send it at once "
        "(AFTERWORK_BODY_TIMEOUT_S)"
    }
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert sent < len(BODY)


def _headers(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    fields = [line.partition(":") for line in lines]
    return [(name.strip().lower(), value.strip()) for name, _, value in fields]


async def test_fifty_slow_clients_at_once_are_all_cut_off(tmp_path: Path) -> None:
    """25 clients trickling headers and 25 trickling bodies, all at once: every one gets a 408
    and is closed, and the service still answers."""
    results: list[tuple[bytes, int]] = []
    async with service(tmp_path, **SLOW) as (client, _):
        port = port_of(client)

        async def one(at_once: bytes, slowly: bytes) -> None:
            results.append(await trickle(port, at_once, slowly))

        async with anyio.create_task_group() as group:
            for _ in range(25):
                group.start_soon(one, b"", HEAD + BODY)
                group.start_soon(one, HEAD, BODY)
        health = await client.get("/healthz")
    assert len(results) == 50
    assert [answer[:30] for answer, _ in results] == [b"HTTP/1.1 408 Request Timeout\r\n"] * 50
    assert health.status_code == 200


async def test_a_keep_alive_client_is_not_cut_off(tmp_path: Path) -> None:
    """Six requests on one connection, 0.3 s apart (so the connection lives longer than the
    1 s header deadline): each is answered 200 and the connection stays open."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    statuses = []
    async with (
        service(tmp_path, **SLOW) as (client, _),
        await anyio.connect_tcp("127.0.0.1", port_of(client)) as stream,
    ):
        for _ in range(6):
            await stream.send(request)
            head = await read_response(stream)
            statuses.append(head.split(b" ")[1])
            assert dict(_headers(head)).get("connection") != "close", head
            await anyio.sleep(0.3)
    assert statuses == [b"200"] * 6


async def test_an_idle_kept_alive_connection_gets_no_408(tmp_path: Path) -> None:
    """A connection idle between requests for longer than the header deadline (1 s) but less
    than uvicorn's keep-alive timeout (5 s) receives nothing unasked, and its next request is
    answered: the deadline starts with a request's first byte, not when the last one ended."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    async with (
        service(tmp_path, **SLOW) as (client, _),
        await anyio.connect_tcp("127.0.0.1", port_of(client)) as stream,
    ):
        await stream.send(request)
        first = await read_response(stream)
        unasked = b""
        with anyio.move_on_after(2.0):  # the idle time: twice the header deadline
            unasked = await stream.receive()
        await stream.send(request)
        second = await read_response(stream)
    assert unasked == b""
    assert (first.split(b" ")[1], second.split(b" ")[1]) == (b"200", b"200")


async def read_response(stream: anyio.abc.ByteStream) -> bytes:
    """One whole response (head and body) from ``stream``; its head is returned."""
    buffer = bytearray()
    with anyio.fail_after(CUT_OFF_S):
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive()
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        length = int(dict(_headers(head))["content-length"])
        while len(rest) < length:
            rest += await stream.receive()
    assert len(rest) == length, "a second response arrived unasked"
    return head


# -- 17: small fixes --------------------------------------------------------------------------


async def test_ok_is_false_until_processing_has_finished(tmp_path: Path) -> None:
    """While its jobs run, a conversation's processing answers ok=false; true once finished."""
    gate = GateExtractor()
    async with service(tmp_path, gate) as (client, running):
        assert (await client.post(URL, json=body("c1"))).status_code == 202
        await anyio.to_thread.run_sync(gate.entered.wait, 20)
        during = (await client.get("/v1/conversations/c1/processing")).json()
        gate.gate.set()
        await wait_until(lambda: finished(running, ["c1"]) == ["c1"], "c1 to finish")
        after = (await client.get("/v1/conversations/c1/processing")).json()
    assert (during["state"], during["ok"], during["retry_at"]) == ("processing", False, None)
    assert (after["state"], after["ok"], len(after["outcomes"])) == ("finished", True, 7)


class BrokenTopics(RuleExtractor):
    def topics(self, conversation: Conversation) -> list[str]:
        raise RuntimeError("the model is down")


async def test_ok_is_false_when_a_job_failed(tmp_path: Path) -> None:
    """A finished conversation with a failed job answers ok=false."""
    async with service(tmp_path, BrokenTopics()) as (client, running):
        assert (await client.post(URL, json=body("c1"))).status_code == 202
        await wait_until(lambda: finished(running, ["c1"]) == ["c1"], "c1 to finish")
        answer = (await client.get("/v1/conversations/c1/processing")).json()
    assert (answer["state"], answer["ok"]) == ("finished", False)
    failed = [o["job"] for o in answer["outcomes"] if o["status"] == "failed"]
    assert failed == ["extract_trends"]


def serve_help() -> dict[str, str]:
    """``afterwork serve --help``'s settings: AFTERWORK_NAME -> the default it shows."""
    result = subprocess.run(
        [COMMAND, "serve", "--help"], capture_output=True, text=True, timeout=30,
        env={**environment(), "COLUMNS": "100"},
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    shown = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if words and words[0].startswith("AFTERWORK_") and "(default: " in line:
            shown[words[0]] = line.rsplit("(default: ", 1)[1].removesuffix(")")
    return shown


def test_serve_help_lists_every_setting_with_its_default() -> None:
    """``serve --help`` lists each ServiceSettings field as AFTERWORK_<NAME> with a default."""
    shown = serve_help()
    assert sorted(shown) == sorted(
        f"AFTERWORK_{name.upper()}" for name in ServiceSettings.model_fields
    )
    assert all(shown.values()), shown
    assert shown["AFTERWORK_API_TOKEN"] == "unset"
    assert shown["AFTERWORK_PORT"] == "8000"
    assert shown["AFTERWORK_LOG_LEVEL"] == "info"


def test_each_default_serve_help_shows_is_a_value_its_variable_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Setting AFTERWORK_<NAME> to the default ``serve --help`` shows gives that default
    (a dict or a list is shown as the JSON the variable takes, not as a Python repr)."""
    shown = serve_help()
    for name in list(os.environ):
        if name.startswith("AFTERWORK_"):
            monkeypatch.delenv(name)
    wrong = {}
    for name, field in ServiceSettings.model_fields.items():
        variable = f"AFTERWORK_{name.upper()}"
        default = field.get_default(call_default_factory=True)
        if default is None:
            continue
        with monkeypatch.context() as env:
            env.setenv(variable, shown[variable])
            try:
                value = getattr(ServiceSettings(), name)
            except Exception as error:  # what an operator pasting the default would see
                value = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        if value != default:
            wrong[variable] = f"shown {shown[variable]!r} gives {value!r}, not {default!r}"
    assert wrong == {}


def test_a_missing_database_folder_is_a_one_line_error() -> None:
    """``serve --db /nonexistent/x.db`` exits 2 with one line on stderr, no traceback."""
    result = subprocess.run(
        [COMMAND, "serve", "--port", "0", "--db", "/nonexistent/x.db"],
        capture_output=True, text=True, timeout=30, env=environment(),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.endswith("\n"), result.stderr
    assert result.stderr.startswith("afterwork serve: "), result.stderr
    assert "'/nonexistent' does not exist" in result.stderr
    assert "--db" in result.stderr
    assert "Traceback" not in result.stderr
