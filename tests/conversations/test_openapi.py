"""The OpenAPI document tells the truth (issue 10, item 16), checked two ways over real HTTP:

- read: every status each route answers is documented with its content type, and the
  validators' constraints (id pattern, lengths, item counts, finite number bounds, the
  timestamp pattern) are in the schema;
- fuzzed: ``schemathesis run --checks all`` against the running service, with the token and
  the repository's ``schemathesis.toml``, finds no server error, dropped connection,
  undocumented status or content type, schema-valid request refused, or schema-violating
  request accepted.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from afterwork.conversations import MAX_SEGMENTS, ServiceSettings, create_app
from afterwork.conversations._metrics import CONTENT_TYPE
from afterwork.conversations._models import ID_PATTERN, MAX_OFFSET_S, TIMESTAMP_PATTERN
from afterwork.conversations._server import protocol
from afterwork.testing import base_url, serving

TOKEN = "openapi-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COMPLETED = "/v1/conversations/completed"
PROCESSING = "/v1/conversations/{conversation_id}/processing"
ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
#: The fuzzer's time budget; the whole run (loading, teardown) stays well under 90 s.
FUZZ_S = 50


@asynccontextmanager
async def documented(tmp_path: Path, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The service with docs on and a token, and a client that carries the token."""
    settings = ServiceSettings(
        db=tmp_path / "service.db", port=0, docs=True, api_token=TOKEN, **options
    )
    async with (
        serving(create_app(settings), http=protocol(settings)) as server,
        httpx.AsyncClient(base_url=base_url(server), headers=AUTH, timeout=30) as client,
    ):
        yield client


async def document(tmp_path: Path) -> dict[str, Any]:
    async with documented(tmp_path) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = doc["components"]["schemas"][name]
    return found


async def test_the_document_is_behind_the_token(tmp_path: Path) -> None:
    """/openapi.json and /docs answer 401 without the token, 200 with it."""
    async with documented(tmp_path) as client:
        anonymous = {"Authorization": ""}
        paths = ("/openapi.json", "/docs")
        without = [(await client.get(p, headers=anonymous)).status_code for p in paths]
        with_token = [(await client.get(p)).status_code for p in paths]
    assert (without, with_token) == ([401, 401], [200, 200])


async def test_the_post_documents_every_status_it_answers(tmp_path: Path) -> None:
    """POST /v1/conversations/completed documents 200, 202, 401, 409, 413, 415, 422 and 503
    (with Retry-After), each as application/json, and the bearer scheme."""
    doc = await document(tmp_path)
    post = doc["paths"][COMPLETED]["post"]
    responses = post["responses"]
    wanted = {"200", "202", "401", "409", "413", "415", "422", "503"}
    assert wanted <= set(responses), sorted(responses)
    for status in wanted:
        assert list(responses[status]["content"]) == ["application/json"], status
    assert "Retry-After" in responses["503"]["headers"]
    assert list(post["requestBody"]["content"]) == ["application/json"]
    assert post["security"] == [{"HTTPBearer": []}]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_metrics_are_documented_as_text(tmp_path: Path) -> None:
    """GET /metrics documents its 200 as the Prometheus text format, not JSON."""
    doc = await document(tmp_path)
    content = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == [CONTENT_TYPE]
    assert CONTENT_TYPE.startswith("text/plain")


async def test_processing_documents_its_statuses_and_the_id_pattern(tmp_path: Path) -> None:
    """GET .../processing documents 200, 401, 404 and 422 as JSON, and the id's pattern."""
    doc = await document(tmp_path)
    get = doc["paths"][PROCESSING]["get"]
    responses = get["responses"]
    assert {"200", "401", "404", "422"} <= set(responses), sorted(responses)
    for status in ("200", "401", "404", "422"):
        assert list(responses[status]["content"]) == ["application/json"], status
    (parameter,) = get["parameters"]
    assert (parameter["name"], parameter["in"], parameter["required"]) == (
        "conversation_id",
        "path",
        True,
    )
    assert parameter["schema"]["pattern"] == ID_PATTERN


async def test_the_conversation_schema_states_the_validators_constraints(tmp_path: Path) -> None:
    """The request schema carries the id pattern, maxLength/maxItems, finite number bounds
    and the created_at pattern, and forbids unknown fields."""
    doc = await document(tmp_path)
    conversation = schema(doc, "Conversation")
    fields = conversation["properties"]
    assert fields["id"]["pattern"] == fields["uid"]["pattern"] == ID_PATTERN
    assert fields["created_at"]["pattern"] == TIMESTAMP_PATTERN
    assert fields["transcript_segments"]["maxItems"] == MAX_SEGMENTS
    assert (fields["language"]["minLength"], fields["language"]["maxLength"]) == (2, 35)
    segment = schema(doc, "TranscriptSegment")["properties"]
    for bound in ("start", "end"):
        assert segment[bound]["type"] == "number"
        assert (segment[bound]["minimum"], segment[bound]["maximum"]) == (0, MAX_OFFSET_S)
    assert (segment["speaker"]["minLength"], segment["speaker"]["maxLength"]) == (1, 100)
    assert segment["text"]["maxLength"] == 100_000
    structured = schema(doc, "Structured")["properties"]
    assert structured["action_items"]["maxItems"] == 500
    assert structured["action_items"]["items"]["maxLength"] == 1_000
    assert structured["title"]["maxLength"] == 500
    for name in ("ConversationCompleted", "Conversation", "TranscriptSegment", "Structured"):
        assert schema(doc, name)["additionalProperties"] is False, name


def conversation_body(**changes: Any) -> dict[str, Any]:
    """A valid event, with ``changes`` to the event (reprocess) or its conversation."""
    segment = {"speaker": "user", "text": "hi", "start": 0.0, "end": 1.0}
    conversation: dict[str, Any] = {
        "id": "c1",
        "uid": "u1",
        "created_at": "2026-03-14T09:30:00Z",
        "transcript_segments": [segment],
    }
    event: dict[str, Any] = {"conversation": conversation, "reprocess": False}
    for name, value in changes.items():
        if name == "reprocess":
            event[name] = value
        elif name in segment:
            conversation["transcript_segments"] = [{**segment, name: value}]
        else:
            conversation[name] = value
    return event


# What schemathesis found, pinned: the schema says boolean, number and string, and the
# service took 0, "yes", "1", true and a Unix timestamp for them (pydantic's lax coercion).
WRONG_TYPES = [
    ("reprocess", 0),
    ("reprocess", "yes"),
    ("start", "1"),
    ("end", True),
    ("created_at", 1773480600),
]


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES)
async def test_a_value_of_another_json_type_than_documented_is_refused(
    tmp_path: Path, field: str, value: object
) -> None:
    """A field sent with a JSON type its schema does not allow gets a 422 naming it, and
    nothing is stored; the same body with the right type is admitted."""
    async with documented(tmp_path) as client:
        wrong = await client.post(COMPLETED, json=conversation_body(**{field: value}))
        stored = await client.get("/v1/conversations/c1/processing")
        right = await client.post(COMPLETED, json=conversation_body())
    assert (wrong.status_code, stored.status_code, right.status_code) == (422, 404, 202), wrong.text
    assert field in wrong.json()["detail"][0]["loc"]


async def test_a_body_that_is_not_utf8_gets_a_documented_client_error(tmp_path: Path) -> None:
    """A JSON-declared body that is not UTF-8 gets a 4xx the document lists for the POST,
    as JSON (it got an undocumented 400)."""
    async with documented(tmp_path) as client:
        doc = (await client.get("/openapi.json")).json()
        response = await client.post(
            COMPLETED, content=b"\xff{", headers={"Content-Type": "application/json"}
        )
    documented_statuses = set(doc["paths"][COMPLETED]["post"]["responses"])
    assert str(response.status_code) in documented_statuses, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    assert (response.status_code, response.json()) == (
        422,
        {
            "detail": [
                {
                    "loc": ["body"],
                    "msg": "the body is not UTF-8; send the JSON encoded as UTF-8",
                    "type": "json_invalid",
                }
            ]
        },
    )


@pytest.mark.timeout(180)
async def test_schemathesis_finds_no_failure(tmp_path: Path) -> None:
    """``schemathesis run --checks all`` with the token, every phase, finds no failure."""
    async with documented(tmp_path) as client:
        command = [
            SCHEMATHESIS,
            "--config-file", str(ROOT / "schemathesis.toml"),
            "run", f"{client.base_url}/openapi.json",
            "--checks", "all",
            "--header", f"Authorization: Bearer {TOKEN}",
            "--max-examples", "25",
            "--max-time", str(FUZZ_S),
            "--request-timeout", "20",
            "--no-color",
        ]  # fmt: skip
        with anyio.fail_after(FUZZ_S + 60):  # a hung run fails here rather than at the timeout
            result = await anyio.run_process(command, check=False, cwd=tmp_path)
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    failures = output[output.find("FAILURES") :] if "FAILURES" in output else output[-3000:]
    print(output[-1500:])
    assert result.returncode == 0, failures[:20_000]
    assert "Tested: 6" in output, output[-3000:]
