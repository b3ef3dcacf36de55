"""The service's security over real HTTP (issue 10, items 1-3 and 14): the bearer token, who
may serve without one, who owns a conversation, and what stays out of outcomes and logs.

Each test runs uvicorn on 127.0.0.1 (``afterwork.testing.serving``), or ``afterwork serve`` as
a subprocess where the command line itself is what is tested.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from structlog.typing import EventDict

import afterwork as aw
from afterwork.conversations import (
    Extractor,
    ServiceSettings,
    SettingsError,
    Store,
    _outcomes,
    configure_logging,
    load_settings,
)
from afterwork.conversations._receiver import Receiver
from afterwork.conversations._schema import TABLES
from afterwork.conversations._service import Service
from afterwork.testing import wait_until
from tests.conftest import named

from .conftest import GateExtractor, completed, conversation, running_service

URL = "/v1/conversations/completed"
COMMAND = str(Path(sys.executable).parent / "afterwork")
TOKEN = "s3cret-api-token-7Hq2mZ9xW4"
MISSING = "this route needs 'Authorization: Bearer <token>' (AFTERWORK_API_TOKEN)"
WRONG = "the bearer token is not valid for this service"
CHALLENGE = 'Bearer realm="afterwork"'
INVALID_CHALLENGE = 'Bearer realm="afterwork", error="invalid_token"'
CONFLICT = (
    "conversation 'c1' belongs to another user; a conversation belongs to the uid that first "
    "posted it: post it with that uid, or use a new id"
)


def authorized(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def service(
    tmp_path: Path, extractor: Extractor | None = None, **options: Any
) -> AbstractAsyncContextManager[tuple[httpx.AsyncClient, Service]]:
    """The service on a fresh database; a client for it (no token sent), and its parts."""
    return running_service(tmp_path, extractor, **options)


def body(
    cid: str = "c1",
    uid: str = "u1",
    reprocess: bool = False,
    said: str = "I love tea. I need to call mom.",
) -> dict[str, Any]:
    conv = conversation(cid, uid, user=(said,), action_items=["Buy milk"])
    return completed(conv, reprocess).model_dump(mode="json")


def body_of(response: httpx.Response) -> Any:
    """The response's JSON body, or its text when it is not JSON (so a surprise is shown, not
    raised inside the server's block)."""
    try:
        return response.json()
    except ValueError:
        return response.text


def clean_env() -> dict[str, str]:
    """This process's environment without any AFTERWORK_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AFTERWORK_")}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parse_log(text: str) -> list[dict[str, Any]]:
    """Every JSON object in a log, in order. Decoded object by object rather than line by
    line: two writers sharing the stream may put a line break after the wrong object."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return found
        event, index = decoder.raw_decode(text, index)
        found.append(event)


def keys_anywhere(value: Any) -> set[str]:
    """Every dict key at any depth of ``value``."""
    if isinstance(value, dict):
        return set(value).union(*(keys_anywhere(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys_anywhere(v) for v in value))
    return set()


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The service's logging as ``afterwork serve`` sets it up (JSON, debug) into a buffer."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging(json=True, stream=stream, level=logging.DEBUG)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


# -- authentication ---------------------------------------------------------------------------

#: Every route under /v1, an unknown one included, and the docs (off by default).
PROTECTED = [
    ("POST", URL),
    ("POST", URL + "?wait=true"),
    ("GET", "/v1/conversations/c1/processing"),
    ("GET", "/v1/conversations/nope/processing"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/unknown"),
    ("DELETE", "/v1/stats"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
]
#: Authorization headers that must not get in, with the challenge and detail each gets.
REFUSED_CREDENTIALS: list[tuple[str | None, str, str]] = [
    (None, CHALLENGE, MISSING),
    ("Basic " + base64.b64encode(f"alice:{TOKEN}".encode()).decode(), CHALLENGE, MISSING),
    ("Bearer", CHALLENGE, MISSING),
    (TOKEN, CHALLENGE, MISSING),
    ("Bearer wrong-token-0123456789", INVALID_CHALLENGE, WRONG),
    (f"Bearer {TOKEN[:-1]}", INVALID_CHALLENGE, WRONG),
    (f"Bearer {TOKEN}x", INVALID_CHALLENGE, WRONG),
    (f"Bearer x{TOKEN}", INVALID_CHALLENGE, WRONG),
]


async def test_every_v1_route_needs_the_bearer_token(tmp_path: Path) -> None:
    """Without the token, with a wrong one, with Basic or an empty Bearer: 401, the challenge
    and the JSON detail, and nothing is stored or admitted."""
    answers = {}
    async with service(tmp_path, api_token=TOKEN) as (client, running):
        for method, path in PROTECTED:
            for credentials, _, _ in REFUSED_CREDENTIALS:
                headers = {} if credentials is None else {"Authorization": credentials}
                response = await client.request(method, path, json=body(), headers=headers)
                answers[(method, path, credentials)] = (
                    response.status_code,
                    response.headers.get("WWW-Authenticate"),
                    response.headers.get("Content-Type"),
                    body_of(response),
                    "X-Request-ID" in response.headers,
                )
        stored = running.store.count("conversations")
        admitted = running.dispatcher.stats().admitted
    expected = {
        (method, path, credentials): (401, challenge, "application/json", {"detail": detail}, True)
        for method, path in PROTECTED
        for credentials, challenge, detail in REFUSED_CREDENTIALS
    }
    assert answers == expected
    assert (stored, admitted) == (0, 0)


async def test_the_right_token_gets_in(tmp_path: Path) -> None:
    """With the token every /v1 route answers; the scheme's case does not matter."""
    async with service(tmp_path, api_token=TOKEN) as (client, _):
        posted = await client.post(URL, json=body(), headers=authorized())
        waited = await client.post(
            URL,
            params={"wait": "true"},
            json=body("c2"),
            headers={"Authorization": f"bearer {TOKEN}"},
        )
        status = await client.get("/v1/conversations/c1/processing", headers=authorized())
        stats = await client.get("/v1/stats", headers={"Authorization": f"BEARER  {TOKEN}"})
        unknown = await client.get("/v1/conversations/nope/processing", headers=authorized())
    assert (posted.status_code, waited.status_code) == (202, 200)
    assert (status.status_code, status.json()["id"]) == (200, "c1")
    assert (stats.status_code, stats.json()["admitted"]) == (200, 2)
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"detail": "no conversation 'nope'; POST it to /v1/conversations/completed first"},
    )


async def test_health_readiness_and_metrics_stay_open(tmp_path: Path) -> None:
    """/healthz, /readyz and /metrics answer without a token (metrics_token is off)."""
    async with service(tmp_path, api_token=TOKEN) as (client, _):
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "reasons": []})
    assert metrics.status_code == 200
    assert "afterwork_build_info{" in metrics.text


async def test_metrics_token_guards_metrics_only(tmp_path: Path) -> None:
    """With metrics_token=True /metrics needs the token; /healthz and /readyz stay open."""
    async with service(tmp_path, api_token=TOKEN, metrics_token=True) as (client, _):
        bare = await client.get("/metrics")
        wrong = await client.get("/metrics", headers=authorized("wrong-token-0123456789"))
        right = await client.get("/metrics", headers=authorized())
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert (bare.status_code, bare.headers["WWW-Authenticate"], bare.json()) == (
        401,
        CHALLENGE,
        {"detail": MISSING},
    )
    assert (wrong.status_code, wrong.headers["WWW-Authenticate"], wrong.json()) == (
        401,
        INVALID_CHALLENGE,
        {"detail": WRONG},
    )
    assert right.status_code == 200
    assert "afterwork_build_info{" in right.text
    assert (health.status_code, ready.status_code) == (200, 200)


async def test_docs_are_off_by_default(tmp_path: Path) -> None:
    """Without docs=True, /docs and /openapi.json do not exist, even with the token."""
    async with service(tmp_path, api_token=TOKEN) as (client, _):
        docs = await client.get("/docs", headers=authorized())
        schema = await client.get("/openapi.json", headers=authorized())
        redoc = await client.get("/redoc", headers=authorized())
    assert (docs.status_code, schema.status_code, redoc.status_code) == (404, 404, 404)


async def test_docs_when_enabled_are_behind_the_token(tmp_path: Path) -> None:
    """With docs=True, /docs and /openapi.json answer 401 without the token, 200 with it."""
    async with service(tmp_path, api_token=TOKEN, docs=True) as (client, _):
        bare = [await client.get(path) for path in ("/docs", "/openapi.json")]
        wrong = [
            await client.get(path, headers=authorized("wrong-token-0123456789"))
            for path in ("/docs", "/openapi.json")
        ]
        docs = await client.get("/docs", headers=authorized())
        schema = await client.get("/openapi.json", headers=authorized())
    assert [(r.status_code, r.headers["WWW-Authenticate"]) for r in bare] == [(401, CHALLENGE)] * 2
    assert [(r.status_code, r.headers["WWW-Authenticate"]) for r in wrong] == [
        (401, INVALID_CHALLENGE)
    ] * 2
    assert docs.status_code == 200
    assert "text/html" in docs.headers["Content-Type"]
    assert schema.status_code == 200
    assert URL in schema.json()["paths"]


async def test_a_401_comes_before_the_body_limit(tmp_path: Path) -> None:
    """A body over max_body_bytes without the token is a 401, not a 413: the token is
    checked before the body is read (with the token, the same body is a 413)."""
    oversized = b"{" + b" " * 4096 + b"}"
    headers = {"Content-Type": "application/json"}
    async with service(tmp_path, api_token=TOKEN, max_body_bytes=1024) as (client, _):
        bare = await client.post(URL, content=oversized, headers=headers)
        wrong = await client.post(
            URL, content=oversized, headers={**headers, **authorized("wrong-token-0123456789")}
        )
        right = await client.post(URL, content=oversized, headers={**headers, **authorized()})
    assert (bare.status_code, bare.json()) == (401, {"detail": MISSING})
    assert (wrong.status_code, wrong.json()) == (401, {"detail": WRONG})
    assert right.status_code == 413


async def raw_exchange(client: httpx.AsyncClient, request: bytes) -> tuple[bytes, bytes, bytes]:
    """Send ``request`` as raw bytes (what httpx would refuse to send); return the status
    line, the header block and the body of the one response. Bounded at 20 s."""
    port = int(str(client.base_url).rsplit(":", 1)[1])
    received = b""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        with anyio.move_on_after(20):
            while True:
                head, found, payload = received.partition(b"\r\n\r\n")
                if found:
                    fields = dict(
                        line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
                    )
                    length = int(fields.get(b"content-length", b"0"))
                    if len(payload) >= length:
                        status, _, headers = head.partition(b"\r\n")
                        return status, headers.lower(), payload[:length]
                received += await stream.receive()
    return b"no complete response within 20 s: " + received, b"", b"null"


async def test_an_empty_bearer_on_the_wire_is_refused(tmp_path: Path) -> None:
    """'Authorization: Bearer ' (trailing space, no token), sent as raw bytes, is a 401 with
    the plain challenge."""
    async with service(tmp_path, api_token=TOKEN) as (client, _):
        answers = []
        for credentials in (b"Bearer ", b"Bearer    ", b"Bearer \t "):
            request = (
                b"GET /v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                + credentials
                + b"\r\nConnection: close\r\n\r\n"
            )
            status, headers, payload = await raw_exchange(client, request)
            answers.append((status, b"www-authenticate: " + CHALLENGE.lower().encode() in headers,
                            json.loads(payload)))  # fmt: skip
    assert answers == [(b"HTTP/1.1 401 Unauthorized", True, {"detail": MISSING})] * 3


async def test_a_401_does_not_wait_for_the_body(tmp_path: Path) -> None:
    """Headers announcing a body that never comes get their 401 at once: the service does not
    read (or wait for) the body of a request without the token."""
    async with service(tmp_path, api_token=TOKEN, body_timeout_s=120) as (client, _):
        request = (
            f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 500\r\n\r\n"
        ).encode()
        # The body timeout is 120 s: a service waiting for the body answers nothing in 20 s.
        status, _, payload = await raw_exchange(client, request)
    assert status == b"HTTP/1.1 401 Unauthorized"
    assert json.loads(payload) == {"detail": MISSING}


async def test_without_a_token_every_route_is_open_on_loopback(tmp_path: Path) -> None:
    """No token configured (loopback only): the routes answer without Authorization."""
    async with service(tmp_path) as (client, _):
        posted = await client.post(URL, json=body())
        stats = await client.get("/v1/stats")
    assert (posted.status_code, stats.status_code) == (202, 200)


# -- serving without a token ----------------------------------------------------------------


def exposure_message(host: str) -> str:
    return (
        f"refusing to serve on {host} without an API token: anyone who can reach it could "
        "post and read every user's conversations; set AFTERWORK_API_TOKEN (or pass "
        "--token-file FILE), or serve on 127.0.0.1"
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_no_token_refuses_a_non_loopback_host(tmp_path: Path, host: str) -> None:
    """Without a token, any host but a loopback one is refused, with a message saying why."""
    with pytest.raises(SettingsError) as info:
        load_settings(host=host, db=tmp_path / "service.db")
    assert str(info.value) == exposure_message(host)
    with pytest.raises(SettingsError) as checked:
        ServiceSettings(host=host, db=tmp_path / "service.db").check_exposure()
    assert str(checked.value) == exposure_message(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_no_token_allows_a_loopback_host(tmp_path: Path, host: str) -> None:
    """Without a token, loopback hosts are allowed; with a token, any host is."""
    assert load_settings(host=host, db=tmp_path / "service.db").api_token is None
    settings = load_settings(host="0.0.0.0", db=tmp_path / "service.db", api_token=TOKEN)
    assert settings.api_token is not None


def test_serve_on_all_interfaces_without_a_token_exits_2(tmp_path: Path) -> None:
    """`afterwork serve --host 0.0.0.0` without a token exits 2, saying why, and serves
    nothing."""
    port, db = free_port(), tmp_path / "s.db"
    result = subprocess.run(
        [COMMAND, "serve", "--host", "0.0.0.0", "--port", str(port), "--db", str(db)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"afterwork serve: {exposure_message('0.0.0.0')}\n"
    assert not db.exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "missing"),
        ("short-token\n", "short"),
        ("\n\n", "empty"),
    ],
)
def test_a_bad_token_file_exits_2_with_one_line(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    """A missing, short or empty token file stops `serve` with exit 2 and a one-line message
    that names the file and never shows the token."""
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    result = subprocess.run(
        [COMMAND, "serve", "--port", str(free_port()), "--db", str(tmp_path / "s.db"),
         "--token-file", str(token_file)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.endswith("\n")
    assert result.stderr.count("\n") == 1, result.stderr
    hint = "use a random one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if problem == "missing":
        assert result.stderr.startswith(
            f"afterwork serve: cannot read the token file {str(token_file)!r}: "
        )
        assert "No such file or directory" in result.stderr
    elif problem == "short":
        assert result.stderr == (
            f"afterwork serve: the token file {str(token_file)!r}: the token has 11 "
            f"characters, fewer than 16; {hint}\n"
        )
        assert "short-token" not in result.stderr
    else:
        assert result.stderr == (
            f"afterwork serve: the token file {str(token_file)!r}: the token has 0 "
            f"characters, fewer than 16; {hint}\n"
        )


def test_a_short_token_in_the_environment_exits_2_without_showing_it(tmp_path: Path) -> None:
    """AFTERWORK_API_TOKEN shorter than 16 characters stops `serve` (exit 2); the message
    names the variable but hides the value."""
    result = subprocess.run(
        [COMMAND, "serve", "--port", str(free_port()), "--db", str(tmp_path / "s.db")],
        env={**clean_env(), "AFTERWORK_API_TOKEN": "tiny-secret"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "afterwork serve: invalid setting AFTERWORK_API_TOKEN=<hidden>: the token has 11 "
        "characters, fewer than 16; use a random one, e.g. python -c 'import secrets; "
        "print(secrets.token_urlsafe(32))'\n"
    )


def wait_for(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll another process's state until ``condition`` holds, or fail after ``limit`` s."""
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"waited {limit} s for {what}")
        time.sleep(0.05)


def test_serve_with_a_token_file_requires_that_token(tmp_path: Path) -> None:
    """`serve --token-file F` serves, and every /v1 request needs the file's token (its line
    stripped); it logs no unauthenticated warning and never the token."""
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}  \nsecond line is ignored\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [COMMAND, "serve", "--port", str(port), "--db", str(tmp_path / "s.db"),
             "--token-file", str(token_file)],
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"serve exited {process.returncode}: {log.read_text()}")
            try:
                return httpx.get(base + "/healthz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, f"{base} to start")
        with httpx.Client(base_url=base, timeout=10) as client:
            bare = client.get("/v1/stats")
            wrong = client.get("/v1/stats", headers=authorized("second line is ignored"))
            right = client.get("/v1/stats", headers=authorized())
            posted = client.post(URL, json=body(), headers=authorized())
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert (bare.status_code, bare.headers["WWW-Authenticate"]) == (401, CHALLENGE)
    assert (wrong.status_code, wrong.headers["WWW-Authenticate"]) == (401, INVALID_CHALLENGE)
    assert (right.status_code, posted.status_code) == (200, 202)
    assert code == -signal.SIGTERM  # a clean shutdown; uvicorn re-raises the signal at exit
    text = log.read_text()
    assert TOKEN not in text
    events = [e.get("event") for e in parse_log(text)]
    assert "service.started" in events
    assert "service.unauthenticated" not in events


async def test_serving_without_a_token_logs_a_warning(
    tmp_path: Path, events: list[EventDict]
) -> None:
    """On loopback without a token the service starts, and says once that it is
    unauthenticated; with a token it does not."""
    async with service(tmp_path):
        pass
    with_token = tmp_path / "with-token"
    with_token.mkdir()
    warned = [(e["log_level"], e["host"]) for e in named(events, "service.unauthenticated")]
    async with service(with_token, api_token=TOKEN):
        pass
    warned_again = named(events, "service.unauthenticated")
    assert warned == [("warning", "127.0.0.1")]
    assert len(warned_again) == 1


# -- ownership --------------------------------------------------------------------------------


def snapshot(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the store."""
    return {table: store.query(f"SELECT * FROM {table} ORDER BY rowid") for table in TABLES}


async def test_another_uid_cannot_take_a_conversation(tmp_path: Path) -> None:
    """Mallory posting alice's conversation id (reprocess or not, waiting or not) gets a 409
    naming the conflict, and nothing changes: rows, outcomes, journal, admissions."""
    async with service(tmp_path) as (client, running):
        store = running.store
        store.add_goal("g1", "alice", "Drink tea", ["tea"], 3)
        store.add_persona("p1", "alice", "Coach", "{name} knows: {memories}")
        first = await client.post(URL, params={"wait": "true"}, json=body("c1", "alice"))
        await wait_until(lambda: running.dispatcher.stats().pending == 0, "alice's c1 to finish")
        before = snapshot(store)
        stats_before = running.dispatcher.stats()
        status_before = body_of(await client.get("/v1/conversations/c1/processing"))
        attempts = []
        for reprocess in (True, False):
            for params in ({}, {"wait": "true"}):
                stolen = body("c1", "mallory", reprocess, said="I love coffee. Delete it all.")
                response = await client.post(URL, params=params, json=stolen)
                attempts.append((response.status_code, body_of(response)))
        after = snapshot(store)
        stats_after = running.dispatcher.stats()
        status_after = body_of(await client.get("/v1/conversations/c1/processing"))
        journal = aw.SqliteJournal(running.settings.journal_path).unfinished()
        # The owner may still reprocess it.
        again = await client.post(URL, json=body("c1", "alice", reprocess=True))
    assert first.status_code == 200
    assert attempts == [(409, {"detail": CONFLICT})] * 4
    assert before["conversations"][0]["uid"] == "alice"
    assert [len(before[t]) > 0 for t in ("memories", "trends", "job_outcomes")] == [True] * 3
    assert after == before
    assert status_after == status_before
    assert (stats_before.admitted, stats_before.completed) == (1, 1)
    assert (stats_after.admitted, stats_after.completed) == (1, 1)
    assert journal == []
    assert store.count("memories", "uid = ?", "mallory") == 0
    assert again.status_code == 202


async def test_racing_posts_of_a_new_id_by_two_uids_one_wins(tmp_path: Path) -> None:
    """Two uids posting the same new id at once: exactly one 202 and one 409, and the
    conversation belongs to the winner."""
    ids = [f"race-{i}" for i in range(12)]
    answers: dict[tuple[str, str], int] = {}
    async with service(tmp_path, request_threads=8) as (client, running):

        async def post(cid: str, uid: str) -> None:
            response = await client.post(URL, json=body(cid, uid))
            answers[(cid, uid)] = response.status_code

        async with anyio.create_task_group() as group:
            for cid in ids:
                for uid in ("alice", "mallory"):
                    group.start_soon(post, cid, uid)
        owners = {cid: running.store.owner(cid) for cid in ids}
        admitted = running.dispatcher.stats().admitted
    for cid in ids:
        statuses = {uid: answers[(cid, uid)] for uid in ("alice", "mallory")}
        assert sorted(statuses.values()) == [202, 409], (cid, statuses)
        winner = next(uid for uid, status in statuses.items() if status == 202)
        assert owners[cid] == winner
    assert admitted == len(ids)


# -- secrets and personal data ----------------------------------------------------------------

QUERY_TOKEN = "qtok-5b1f9d0c7e2a"
PASSWORD = "pw-8c3e1a9f6d4b"
PRIVATE_WORDS = "my pancreas results came back 7c1d"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()


async def test_failing_urls_leak_no_credentials_into_outcomes_or_logs(
    tmp_path: Path, receiver: tuple[Receiver, str], json_log: io.StringIO
) -> None:
    """A webhook URL with ?token= and a task URL with user:password@ that fail: the report,
    the processing endpoint and every log line show them redacted; job.failed carries a
    traceback without locals, and the transcript appears nowhere in the log."""
    hooks, hooks_url = receiver
    port = closed_port()
    webhook = f"{hooks_url}/hooks/down/alice?token={QUERY_TOKEN}"
    tasks = f"http://sync-user:{PASSWORD}@127.0.0.1:{port}/tasks/alice?sig={QUERY_TOKEN}"
    said = f"I love tea. I need to call mom. {PRIVATE_WORDS}."
    async with service(tmp_path, webhook_retry_delays_s=(0.0, 0.0)) as (client, running):
        running.store.set_webhook("alice", "conversation_created", webhook)
        running.store.set_webhook("alice", "tasks", tasks)
        report = await client.post(
            URL, params={"wait": "true"}, json=body("c1", "alice", said=said)
        )
        status = await client.get("/v1/conversations/c1/processing")
        stats = await client.get("/v1/stats")
        metrics = await client.get("/metrics")
    log = json_log.getvalue()
    events = parse_log(log)
    assert report.status_code == 200
    errors = {o["job"]: (o["status"], o["error"]) for o in status.json()["outcomes"]}
    assert sum(hooks.attempts.values()) == 3  # the webhook really was tried, three times
    redacted_hook = f"{hooks_url}/hooks/down/alice?***"
    assert errors["conversation_created_webhook"][0] == "failed"
    assert redacted_hook in errors["conversation_created_webhook"][1]
    sync = [(s, e) for job, (s, e) in errors.items() if "auto_sync" in job]
    assert len(sync) == 1
    assert sync[0][0] == "failed"
    assert f"http://***@127.0.0.1:{port}/tasks/alice?***" in sync[0][1]
    basic = base64.b64encode(f"sync-user:{PASSWORD}".encode()).decode()
    for text in (report.text, status.text, stats.text, metrics.text, log):
        for secret in (QUERY_TOKEN, PASSWORD, basic, "sync-user"):
            assert secret not in text
    assert PRIVATE_WORDS not in log
    failed = [e for e in events if e.get("event") == "job.failed"]
    assert {e.get("job") for e in failed} >= {"conversation_created_webhook"}
    assert len(failed) >= 2
    assert all(e["exception"] for e in failed)
    assert "frames" in keys_anywhere([e["exception"] for e in failed])
    assert "locals" not in keys_anywhere(events)
    assert "exc_info" not in keys_anywhere(events)


async def test_a_500_is_logged_without_headers_and_carries_the_request_id(
    tmp_path: Path, json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A route that raises answers 500 with X-Request-ID; it is logged (the error and the
    access line, both with the id, route template and status), with no request header value
    and no locals."""

    def broken(store: Store, conversation_id: str) -> None:
        raise RuntimeError("the store broke")

    monkeypatch.setattr(_outcomes, "processing", broken)
    private = {
        "X-Private-Note": "hdr-value-3e7a9c1b",
        "Cookie": "session=cookie-value-6f2d8b4a",
        "User-Agent": "agent-value-1b9e4c7d",
        "X-Forwarded-For": "203.0.113.77",
    }
    path = "/v1/conversations/c1/processing"
    async with service(tmp_path, api_token=TOKEN) as (client, _):
        given = await client.get(
            path, headers={**authorized(), **private, "X-Request-ID": "req-500.a:b_c-d"}
        )
        made = await client.get(path, headers={**authorized(), **private})
        bad_id = await client.get(
            path, headers={**authorized(), **private, "X-Request-ID": "not valid/id"}
        )
    log = json_log.getvalue()
    events = parse_log(log)
    assert (given.status_code, given.headers["X-Request-ID"]) == (500, "req-500.a:b_c-d")
    made_id, bad_given_id = made.headers["X-Request-ID"], bad_id.headers["X-Request-ID"]
    assert (made.status_code, bad_id.status_code) == (500, 500)
    assert len(made_id) == len(bad_given_id) == 32
    assert made_id != bad_given_id
    access = [
        (e["request_id"], e["method"], e["route"], e["status"], type(e["duration_s"]))
        for e in events
        if e.get("event") == "http.request"
    ]
    route = "/v1/conversations/{conversation_id}/processing"
    assert access == [
        ("req-500.a:b_c-d", "GET", route, 500, float),
        (made_id, "GET", route, 500, float),
        (bad_given_id, "GET", route, 500, float),
    ]
    errors = [e for e in events if e.get("exception") and e.get("request_id") == made_id]
    assert errors, "the 500's exception is not in the log"
    assert "the store broke" in json.dumps(errors)
    for secret in (TOKEN, "not valid/id", *private.values()):
        assert secret not in log
    assert "locals" not in keys_anywhere(events)


async def test_a_full_service_refuses_before_claiming(tmp_path: Path) -> None:
    """With no room left, mallory's post of alice's id (and of a new id) is refused with a 503
    before any claim: alice still owns c1 and mallory has no row."""
    gate = GateExtractor()
    async with service(tmp_path, gate, max_pending=1) as (client, running):
        first = await client.post(URL, json=body("c1", "alice"))
        stolen = await client.post(URL, json=body("c1", "mallory", reprocess=True))
        other = await client.post(URL, json=body("c2", "mallory"))
        owner = running.store.owner("c1")
        rows = running.store.count("conversations")
        gate.gate.set()
    assert first.status_code == 202
    # Room is checked first: with none left, mallory's post is refused before the claim.
    assert stolen.status_code == 503
    assert other.status_code == 503
    assert (owner, rows) == ("alice", 1)
