"""Hostile input over real HTTP (issue 10, items 4-8): every bad request gets a 4xx that names
the problem, never a 500 or a dropped connection, and a refused request leaves nothing behind:
no row in the store, nothing in the journal, no admission.

Bodies are sent as raw bytes (``content=``), so they carry exactly what an attacker's client
would: JSON's ``Infinity`` and ``NaN``, escapes of NUL, CR, LF and lone surrogates.
"""

from __future__ import annotations

import json
import threading
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import afterwork as aw
from afterwork.conversations import (
    ConversationCompleted,
    Extractor,
    Store,
    _outcomes,
)
from afterwork.conversations._service import Service
from afterwork.testing import wait_until

from .conftest import GateExtractor, completed, conversation, running_service

URL = "/v1/conversations/completed"
JSON = {"Content-Type": "application/json"}
#: What a client gets back for one request: the status and the JSON body, or why not.
Answer = tuple[int, Any]


def service(
    tmp_path: Path, extractor: Extractor | None = None, **options: Any
) -> AbstractAsyncContextManager[tuple[httpx.AsyncClient, Service]]:
    """The service on a fresh database; a client for it (room for 250 connections at
    once), and its running parts."""
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
    return running_service(tmp_path, extractor, client={"limits": limits}, **options)


def valid(cid: str = "c1", uid: str = "u1") -> dict[str, Any]:
    conv = conversation(cid, uid, user=("I love tea. I need to call mom.",), action_items=["Milk"])
    return completed(conv).model_dump(mode="json")


def with_raw(document: dict[str, Any], placeholder: str, raw: str) -> bytes:
    """``document`` as JSON text with the string ``placeholder`` replaced by ``raw`` text."""
    text = json.dumps(document)
    quoted = json.dumps(placeholder)
    assert text.count(quoted) == 1
    return text.replace(quoted, raw).encode()


def body_of(response: httpx.Response) -> Any:
    """The response's JSON body, or its text when it is not JSON (so a surprise is shown, not
    raised inside the server's block)."""
    try:
        return response.json()
    except ValueError:
        return response.text


async def send(client: httpx.AsyncClient, content: bytes, **headers: str) -> Answer:
    """POST ``content``; a dropped connection or a body that is not JSON is an answer too."""
    try:
        response = await client.post(URL, content=content, headers={**JSON, **headers})
    except httpx.TransportError as error:
        return (0, f"no response: {error!r}")
    return (response.status_code, body_of(response))


def locations(answer: Answer) -> list[list[str | int]]:
    """The ``loc`` of each problem a 422 names (empty if the answer has none)."""
    detail = answer[1].get("detail") if isinstance(answer[1], dict) else None
    return [d["loc"] for d in detail] if isinstance(detail, list) else []


async def kept(running: Service, client: httpx.AsyncClient, *ids: str) -> dict[str, Any]:
    """What the service holds: stored ids, admissions, journal keys, and each id's answer
    to GET processing. After refusals only: ``{"rows": [], "admitted": 0, ...404s}``."""
    journal = await anyio.to_thread.run_sync(
        aw.SqliteJournal(running.settings.journal_path).unfinished
    )
    return {
        "rows": [row["id"] for row in running.store.query("SELECT id FROM conversations")],
        "admitted": running.dispatcher.stats().admitted,
        "journal": [entry.key for entry in journal],
        "processing": [
            (await client.get(f"/v1/conversations/{cid}/processing")).status_code for cid in ids
        ],
    }


def nothing(*ids: str) -> dict[str, Any]:
    """What ``kept`` says when nothing was kept."""
    return {"rows": [], "admitted": 0, "journal": [], "processing": [404] * len(ids)}


# -- item 4: numbers --------------------------------------------------------------------------

NON_FINITE = ["Infinity", "-Infinity", "NaN", "1e400", "-1e400", str(10**400), str(-(10**400))]


async def test_non_finite_numbers_get_422_naming_the_field(tmp_path: Path) -> None:
    """start/end of Infinity, -Infinity, NaN, 1e400 or a 401-digit integer: 422 naming that
    field, and nothing stored."""
    answers: dict[tuple[str, str], list[list[str | int]] | Answer] = {}
    async with service(tmp_path) as (client, running):
        for field in ("start", "end"):
            for raw in NON_FINITE:
                document = valid()
                document["conversation"]["transcript_segments"][0][field] = "@number@"
                answer = await send(client, with_raw(document, "@number@", raw))
                answers[(field, raw[:12])] = locations(answer) if answer[0] == 422 else answer
        held = await kept(running, client, "c1")
    assert answers == {
        (field, raw[:12]): [["body", "conversation", "transcript_segments", 0, field]]
        for field in ("start", "end")
        for raw in NON_FINITE
    }
    assert held == nothing("c1")


async def test_an_integer_too_long_to_parse_gets_a_documented_4xx(tmp_path: Path) -> None:
    """An integer of 5,000 digits (past Python's int parsing limit) is refused with a status
    the API documents for a bad body (422) that says what is wrong; nothing stored."""
    document = valid()
    document["conversation"]["transcript_segments"][0]["end"] = "@number@"
    async with service(tmp_path) as (client, running):
        answer = await send(client, with_raw(document, "@number@", "9" * 5000))
        held = await kept(running, client, "c1")
    assert held == nothing("c1")
    assert answer == (
        422,
        {
            "detail": [
                {
                    "loc": ["body"],
                    "msg": "the body holds a number of more than 4300 digits; send numbers "
                    "that fit",
                    "type": "json_invalid",
                }
            ]
        },
    ), answer


# -- item 5: timestamps -----------------------------------------------------------------------

BAD_TIMESTAMPS: list[Any] = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "2099-12-31T23:59:59-14:00",  # 2100 in UTC
    "1970-01-01T00:00:00Z",
    "2026-03-14T09:30:00",  # naive
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-03-14T25:00:00Z",
    "2026-03-14T09:30:00+24:00",
    "+002026-03-14T09:30:00Z",
    "",
    "now",
    -62135596800,  # 0001-01-01 as Unix seconds
    4102444800,  # 2100-01-01T00:00:00Z as Unix seconds
]


async def test_timestamps_outside_a_sane_range_get_422(tmp_path: Path) -> None:
    """created_at in year 1 or 9999, past 2099 in UTC, naive, or not a date: 422 naming
    created_at, and nothing stored."""
    answers = {}
    async with service(tmp_path) as (client, running):
        for stamp in BAD_TIMESTAMPS:
            document = valid()
            document["conversation"]["created_at"] = stamp
            answer = await send(client, json.dumps(document).encode())
            answers[repr(stamp)] = locations(answer) if answer[0] == 422 else answer
        held = await kept(running, client, "c1")
    assert answers == {repr(s): [["body", "conversation", "created_at"]] for s in BAD_TIMESTAMPS}
    assert held == nothing("c1")


async def test_a_timestamp_with_a_large_offset_in_range_is_accepted(tmp_path: Path) -> None:
    """The checks are not too strict: offsets of +14:00 and -12:00 within range get a 202 and
    their processing succeeds."""
    stamps = ["1971-01-01T00:00:00+14:00", "2099-12-31T00:00:00-12:00", "2026-03-14t09:30:00z"]
    async with service(tmp_path) as (client, running):
        answers = []
        for i, stamp in enumerate(stamps):
            document = valid(f"t{i}")
            document["conversation"]["created_at"] = stamp
            answers.append(await send(client, json.dumps(document).encode()))
        await wait_until(lambda: running.dispatcher.stats().completed == 3, "3 completions")
        oks = [body_of(await client.get(f"/v1/conversations/t{i}/processing")) for i in (0, 1, 2)]
    assert [a[0] for a in answers] == [202, 202, 202]
    assert [o["ok"] if isinstance(o, dict) else o for o in oks] == [True, True, True]


# -- item 6: ids ------------------------------------------------------------------------------

BAD_IDS = [
    "会話",  # CJK
    "chat-😀",  # emoji
    "abc\u202edef",  # RTL override
    "a\u0000b",  # NUL
    "a\rb",  # CR
    "a\nb",  # LF
    "a\r\nLocation: /evil",  # a header injection attempt
    "a/b",
    "a?b",
    "a#b",
    "../x",
    "..",
    ".",
    " c1",
    "c1 ",
    "c 1",
    "c1\t",
    "",
    "-c1",
    "_c1",
    "a%2Fb",
    "x" * 129,
]


@pytest.mark.parametrize("field", ["id", "uid"])
async def test_ids_outside_the_alphabet_get_422(tmp_path: Path, field: str) -> None:
    """Ids (and uids) with CJK, emoji, RTL, NUL, CR, LF, '/', '?', '#', '../', surrounding
    spaces or 129 characters: a 422 naming the field, always a response, nothing stored."""
    answers = {}
    async with service(tmp_path) as (client, running):
        for bad in BAD_IDS:
            document = valid()
            document["conversation"][field] = bad
            # ensure_ascii: the body carries \\u escapes, as a JSON client sends them.
            answer = await send(client, json.dumps(document, ensure_ascii=True).encode())
            answers[repr(bad)] = locations(answer) if answer[0] == 422 else answer
        held = await kept(running, client, "c1")
    assert answers == {repr(bad): [["body", "conversation", field]] for bad in BAD_IDS}
    assert held == nothing("c1")


async def test_ids_as_raw_utf8_get_422(tmp_path: Path) -> None:
    """The same non-ASCII ids sent as raw UTF-8 (not escaped): 422 too."""
    raw_ids = ["会話", "chat-😀", "abc\u202edef", "ünïcödé"]
    answers = {}
    async with service(tmp_path) as (client, running):
        for bad in raw_ids:
            document = valid()
            document["conversation"]["id"] = bad
            answer = await send(client, json.dumps(document, ensure_ascii=False).encode())
            answers[bad] = locations(answer) if answer[0] == 422 else answer
        held = await kept(running, client, "c1")
    assert answers == {bad: [["body", "conversation", "id"]] for bad in raw_ids}
    assert held == nothing("c1")


GOOD_IDS = ["Az09._:-", "0.._::--__zZ", "z" * 128, "a..", "user:42"]


async def test_ids_with_every_allowed_character_work_end_to_end(tmp_path: Path) -> None:
    """Ids using every allowed character (and 128 long) get a 202 whose status_url and
    Location answer 200 for that very id."""
    found: dict[str, tuple[Any, ...]] = {}
    async with service(tmp_path) as (client, running):
        for cid in GOOD_IDS:
            response = await client.post(URL, json=valid(cid, uid=cid))
            admitted = body_of(response)
            if response.status_code != 202:
                found[cid] = (response.status_code, admitted)
                continue
            location = response.headers.get("Location", "(no Location)")
            by_url = await client.get(admitted["status_url"])
            by_location = await client.get(location)
            found[cid] = (
                response.status_code,
                admitted["key"],
                admitted["status_url"] == location,
                by_url.status_code,
                body_of(by_url),
                by_location.status_code,
            )
        owners = {cid: running.store.owner(cid) for cid in GOOD_IDS}
    assert {cid: (*f[:4], f[4]["id"], *f[5:]) for cid, f in found.items()} == {
        cid: (202, cid, True, 200, cid, 200) for cid in GOOD_IDS
    }
    assert owners == {cid: cid for cid in GOOD_IDS}


BAD_PATH_IDS = [
    "%E4%BC%9A%E8%A9%B1",  # CJK
    "chat-%F0%9F%98%80",  # emoji
    "abc%E2%80%AEdef",  # RTL override
    "a%00b",
    "a%0Db",
    "a%0Ab",
    "a%20b",
    "%20c1",
    "c1%20",
    "a%3Fb",
    "a%23b",
    "-c1",
    "x" * 129,
]


async def test_a_bad_id_in_the_processing_path_gets_422(tmp_path: Path) -> None:
    """GET processing with an id outside the alphabet: 422 naming the path parameter; an
    unknown valid id: 404."""
    answers = {}
    async with service(tmp_path) as (client, _):
        for bad in BAD_PATH_IDS:
            response = await client.get(f"/v1/conversations/{bad}/processing")
            answer = (response.status_code, body_of(response))
            answers[bad] = locations(answer) if answer[0] == 422 else answer
        unknown = await client.get("/v1/conversations/Az09._:-/processing")
    assert answers == {bad: [["path", "conversation_id"]] for bad in BAD_PATH_IDS}
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"detail": "no conversation 'Az09._:-'; POST it to /v1/conversations/completed first"},
    )


# -- item 7: content type ---------------------------------------------------------------------


def unsupported(declared: str) -> dict[str, str]:
    return {
        "detail": "the body must be JSON, sent with 'Content-Type: application/json'; got "
        f"{declared!r}"
    }


WRONG_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "text/json",
    "application/jsonx",
    "application/xml",
]


async def test_a_body_not_declared_json_gets_415(tmp_path: Path) -> None:
    """text/plain, a form, multipart, other types, or no Content-Type at all: 415 with the
    exact detail, for a body that is itself valid JSON; nothing stored."""
    content = json.dumps(valid()).encode()
    answers = {}
    async with service(tmp_path) as (client, running):
        for declared in WRONG_TYPES:
            response = await client.post(URL, content=content, headers={"Content-Type": declared})
            answers[declared] = (response.status_code, body_of(response))
        bare = await client.post(URL, content=content)
        garbage = await client.post(
            URL, content=b"\xff\x00 not json", headers={"Content-Type": "text/plain"}
        )
        held = await kept(running, client, "c1")
    assert "content-type" not in bare.request.headers
    assert held == nothing("c1")
    assert answers == {declared: (415, unsupported(declared)) for declared in WRONG_TYPES}
    assert (bare.status_code, bare.json()) == (415, unsupported(""))
    assert (garbage.status_code, garbage.json()) == (415, unsupported("text/plain"))


async def test_json_content_types_are_accepted(tmp_path: Path) -> None:
    """application/json with a charset, any +json type, and any letter case: 202."""
    accepted = [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "Application/JSON",
        "application/problem+json; charset=UTF-8",
    ]
    answers = {}
    async with service(tmp_path) as (client, _):
        for i, declared in enumerate(accepted):
            content = json.dumps(valid(f"ct{i}")).encode()
            response = await client.post(URL, content=content, headers={"Content-Type": declared})
            answers[declared] = response.status_code
    assert answers == {declared: 202 for declared in accepted}


# -- item 8: a refusal costs nothing ----------------------------------------------------------


async def test_a_503_writes_nothing(tmp_path: Path) -> None:
    """With max_pending=1 held by a blocked job, a second POST gets 503 + Retry-After, and
    leaves no row, no journal entry and no admission behind."""
    gate = GateExtractor()
    async with service(tmp_path, gate, max_pending=1, retry_after_s=4) as (client, running):
        try:
            first = await client.post(URL, json=valid("c1"))
            second = await client.post(URL, json=valid("c2"))
            waited = await client.post(URL, params={"wait": "true"}, json=valid("c3"))
            unknown = await client.get("/v1/conversations/c2/processing")
            journal = await anyio.to_thread.run_sync(
                aw.SqliteJournal(running.settings.journal_path).unfinished
            )
            rows = running.store.query("SELECT id FROM conversations")
            admitted = running.dispatcher.stats().admitted
        finally:
            gate.gate.set()
    assert first.status_code == 202
    assert [(r.status_code, r.headers.get("Retry-After")) for r in (second, waited)] == [
        (503, "4"),
        (503, "4"),
    ]
    assert second.json() == {
        "detail": "cannot reserve room: no room within 0 s (1 pending, max_pending=1)",
        "reason": "overloaded",
    }
    assert unknown.status_code == 404
    assert rows == [{"id": "c1"}]
    assert [entry.key for entry in journal] == ["c1"]
    assert admitted == 1


async def test_a_burst_of_refusals_writes_nothing(tmp_path: Path) -> None:
    """200 concurrent POSTs of new ids with max_pending=5 held: 5 are admitted, the rest get
    503 + Retry-After, and the store and the journal hold exactly the admitted ones."""
    gate = GateExtractor()
    ids = [f"burst-{i}" for i in range(200)]
    answers: dict[str, Answer] = {}
    async with service(tmp_path, gate, max_pending=5, request_threads=8) as (client, running):
        try:

            async def post(cid: str) -> None:
                try:
                    response = await client.post(URL, json=valid(cid, uid=f"user-{cid}"))
                except httpx.TransportError as error:
                    answers[cid] = (0, repr(error))
                    return
                answers[cid] = (response.status_code, response.headers.get("Retry-After"))

            async with anyio.create_task_group() as group:
                for cid in ids:
                    group.start_soon(post, cid)
            stored = {row["id"] for row in running.store.query("SELECT id FROM conversations")}
            journal = await anyio.to_thread.run_sync(
                aw.SqliteJournal(running.settings.journal_path).unfinished
            )
            stats = running.dispatcher.stats()
            refused = [cid for cid, answer in answers.items() if answer[0] == 503]
            probes = [
                (await client.get(f"/v1/conversations/{cid}/processing")).status_code
                for cid in refused[:20]
            ]
        finally:
            gate.gate.set()
    admitted = {cid for cid, answer in answers.items() if answer[0] == 202}
    assert sorted(set(answers.values())) == [(202, None), (503, "1")]
    assert len(admitted) == 5
    assert stored == admitted
    assert {entry.key for entry in journal} == admitted
    assert (stats.admitted, stats.pending) == (5, 5)
    assert probes == [404] * len(probes)


class HeldClaim:
    """Wraps ``_outcomes.receive``: the claim is made, then held until the test releases it,
    so the test can start the drain between the claim and the submission."""

    def __init__(self) -> None:
        self.claimed = threading.Event()
        self.release = threading.Event()
        self.real = _outcomes.receive

    def __call__(self, store: Store, event: ConversationCompleted) -> _outcomes.Receipt:
        receipt = self.real(store, event)
        self.claimed.set()
        if not self.release.wait(timeout=20):  # bounded, so a failing test cannot hang
            raise RuntimeError("the test never released the claim")
        return receipt


async def refused_by_a_drain_after_the_claim(
    client: httpx.AsyncClient, running: Service, held: HeldClaim, document: dict[str, Any]
) -> httpx.Response:
    """POST ``document``; once its claim is made, begin the drain; then let it go on."""
    answer: list[httpx.Response] = []

    async def post() -> None:
        answer.append(await client.post(URL, json=document))

    async with anyio.create_task_group() as group:
        group.start_soon(post)
        await anyio.to_thread.run_sync(held.claimed.wait, 20)
        running.dispatcher.close()
        held.release.set()
    return answer[0]


async def test_a_drain_between_claim_and_submit_leaves_no_new_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new conversation claimed just before the drain begins is refused (503 draining) and
    its row is removed again: nothing half-done."""
    held = HeldClaim()
    monkeypatch.setattr(_outcomes, "receive", held)
    async with service(tmp_path) as (client, running):
        refused = await refused_by_a_drain_after_the_claim(client, running, held, valid("c1"))
        rows = running.store.count("conversations")
        journal = await anyio.to_thread.run_sync(
            aw.SqliteJournal(running.settings.journal_path).unfinished
        )
    assert (refused.status_code, body_of(refused)["reason"]) == (503, "draining")
    assert "Retry-After" in refused.headers
    assert (rows, journal) == (0, [])


async def test_a_drain_between_claim_and_submit_leaves_the_owners_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner re-posting a stored conversation with a new body, refused by a drain that
    began after the claim (503): the stored conversation is the one that was processed."""
    held = HeldClaim()
    async with service(tmp_path) as (client, running):
        first = await client.post(URL, params={"wait": "true"}, json=valid("c1"))
        before = running.store.query("SELECT * FROM conversations")
        monkeypatch.setattr(_outcomes, "receive", held)
        changed = completed(conversation("c1", "u1", user=("I hate tea now.",)), reprocess=True)
        document = changed.model_dump(mode="json")
        refused = await refused_by_a_drain_after_the_claim(client, running, held, document)
        after = running.store.query("SELECT * FROM conversations")
    assert first.status_code == 200
    assert (refused.status_code, body_of(refused)["reason"]) == (503, "draining")
    assert after == before


# -- lone surrogates --------------------------------------------------------------------------

#: Where a lone surrogate goes, and the location a 422 must name.
SURROGATE_PLACES: dict[str, list[str | int]] = {
    "text": ["body", "conversation", "transcript_segments", 0, "text"],
    "speaker": ["body", "conversation", "transcript_segments", 0, "speaker"],
    "title": ["body", "conversation", "structured", "title"],
    "overview": ["body", "conversation", "structured", "overview"],
    "action_item": ["body", "conversation", "structured", "action_items", 0],
    "language": ["body", "conversation", "language"],
    "id": ["body", "conversation", "id"],
}


def with_surrogate(place: str) -> bytes:
    """A valid body with the JSON escape of a lone surrogate in ``place``."""
    document = valid()
    conv = document["conversation"]
    marker = "@surrogate@"
    if place in ("text", "speaker"):
        conv["transcript_segments"][0][place] = f"hi {marker}"
    elif place == "action_item":
        conv["structured"]["action_items"] = [f"buy {marker}"]
    elif place in ("language", "id"):
        conv[place] = f"en{marker}"
    else:
        conv["structured"][place] = f"x {marker}"
    return json.dumps(document).replace(marker, "\\ud800").encode()


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
async def test_a_lone_surrogate_gets_422(tmp_path: Path, journal: bool) -> None:
    """A lone surrogate ('\\ud800' as a JSON escape) in a transcript text or any other text
    field: 422, not 500, and nothing stored, with or without the journal."""
    answers = {}
    async with service(tmp_path, journal=journal) as (client, running):
        for place in SURROGATE_PLACES:
            answer = await send(client, with_surrogate(place))
            answers[place] = locations(answer) if answer[0] == 422 else answer
        rows = running.store.count("conversations")
        admitted = running.dispatcher.stats().admitted
        unknown = (await client.get("/v1/conversations/c1/processing")).status_code
        healthy = (await client.post(URL, json=valid("after"))).status_code
    assert answers == {place: [loc] for place, loc in SURROGATE_PLACES.items()}
    assert (rows, admitted, unknown) == (0, 0, 404)
    assert healthy == 202


async def test_surrogate_pairs_and_unicode_text_are_accepted(tmp_path: Path) -> None:
    """A proper surrogate pair (an emoji) and other Unicode in texts are fine: 202, processed."""
    document = valid()
    document["conversation"]["transcript_segments"][0]["text"] = "I love tea @pair@ 会話"
    content = json.dumps(document, ensure_ascii=False).replace("@pair@", "\\ud83d\\ude00").encode()
    async with service(tmp_path) as (client, _):
        answer = await send(client, content)
        processed = await client.post(URL, params={"wait": "true"}, json=valid("c2"))
    assert answer[0] == 202
    assert processed.status_code == 200
