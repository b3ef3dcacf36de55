"""G6, issue 9 item 1: a replayed event equals the submitted one, or it is refused on entry."""

from __future__ import annotations

import enum
import math
import operator
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import pytest
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Secret,
    SecretBytes,
    SecretStr,
)
from pydantic.alias_generators import to_camel

import afterwork as aw
from afterwork.testing import Gate, wait_until

FIX = "or run this pipeline without a journal"


# -- exact round trip ---------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    street_name: str
    zip_code: str | None = None


class Cat(BaseModel):
    type: Literal["cat"] = "cat"
    lives: int = 9


class Dog(BaseModel):
    type: Literal["dog"] = "dog"
    good: bool = True


class Rich(BaseModel):
    """Every kind of field whose JSON differs from its Python value."""

    model_config = ConfigDict(populate_by_name=True)

    user_id: int = Field(alias="userId")
    full_name: str = Field(
        validation_alias=AliasChoices("fullName", "name"), serialization_alias="fullName"
    )
    nick: str = Field(validation_alias="nickName", serialization_alias="nickName")
    at: datetime
    day: date
    clock: time
    span: timedelta
    amount: Decimal
    ref: uuid.UUID
    color: Color
    level: Level
    kind: Literal["a", "b"]
    pair: tuple[int, str]
    floats: tuple[float, ...]
    scores: dict[int, float]
    by_ref: dict[uuid.UUID, Address]
    by_day: dict[date, list[int]]
    home: Address
    others: list[Address]
    maybe: Address | None = None
    note: str | None = None
    count: int = 5
    tags: frozenset[str] = frozenset()
    anything: Any = None
    pets: list[Annotated[Cat | Dog, Field(discriminator="type")]] = []


IST = timezone(timedelta(hours=5, minutes=30))


def rich_events() -> list[Rich]:
    full = Rich.model_validate(
        {
            "userId": 1,
            "fullName": "Ada Lovelace",
            "nickName": "ada",
            "at": datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=IST),
            "day": date(2024, 2, 29),
            "clock": time(23, 59, 59, 999999),
            "span": timedelta(days=-1, microseconds=3),
            "amount": Decimal("1.10"),
            "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "color": Color.BLUE,
            "level": Level.HIGH,
            "kind": "b",
            "pair": (7, "seven"),
            "floats": (0.1, -0.0, 1e308, 5e-324),
            "scores": {1: 0.5, -2: 3.0},
            "by_ref": {uuid.UUID(int=5): {"streetName": "Main", "zipCode": "1010"}},
            "by_day": {date(2024, 1, 1): [1, 2]},
            "home": Address.model_validate({"street_name": "Elm"}),
            "others": [{"streetName": "Oak"}, {"street_name": "Ash", "zip_code": None}],
            "maybe": {"street_name": "Fir", "zip_code": "9"},
            "note": "ünïcødé ✓ \u2028 \x00 end",
            "count": 0,
            "tags": frozenset({"x", "y"}),
            "anything": {"nested": [1, "two", None, True, 1.5, {"k": []}]},
            "pets": [Dog(good=False), Cat(lives=3)],
        }
    )
    # Defaults left out, aliases by name: still the same after a restart.
    sparse = Rich.model_validate(
        {
            "user_id": 2,
            "name": "Grace",
            "nick": "g",
            "at": datetime(2000, 1, 1, tzinfo=UTC),
            "day": date(1970, 1, 1),
            "clock": time(0, 0),
            "span": timedelta(0),
            "amount": Decimal("-0.000"),
            "ref": uuid.UUID(int=0),
            "color": "red",
            "level": 1,
            "kind": "a",
            "pair": [0, ""],
            "floats": [],
            "scores": {},
            "by_ref": {},
            "by_day": {},
            "home": {"streetName": ""},
            "others": [],
        }
    )
    return [full, sparse]


@dataclass
class Capture:
    """A pipeline whose job hangs until ``restarted``, then keeps the event it was given."""

    pipeline: aw.Pipeline[Any]
    restarted: bool = False
    seen: dict[str, BaseModel] = field(default_factory=dict)


def capturing(model: type[BaseModel], key: str) -> Capture:
    capture = Capture(aw.Pipeline("rt", event=model, key=lambda e: getattr(e, key)))

    @capture.pipeline.job
    async def keep(event: BaseModel, ctx: aw.JobContext) -> None:
        if not capture.restarted:
            await anyio.sleep_forever()
        capture.seen[ctx.key] = event

    return capture


async def replayed(path: Path, capture: Capture, events: list[BaseModel]) -> dict[str, BaseModel]:
    """Submit ``events``, stop at a zero drain deadline (they stay in the journal), restart,
    and return the events the replayed jobs were given, by key."""
    async with aw.Dispatcher(drain_timeout=0, journal=path) as dispatcher:
        for event in events:
            await dispatcher.submit(capture.pipeline, event)
    assert capture.seen == {}
    capture.restarted = True
    async with aw.Dispatcher(journal=path, pipelines=[capture.pipeline]) as dispatcher:
        await wait_until(lambda: len(capture.seen) == len(events), "every event replayed")
        assert dispatcher.stats().admitted == len(events)
    return capture.seen


async def test_a_replayed_event_equals_the_submitted_one(tmp_path: Path) -> None:
    """Aliases, nested models, tz datetimes, Decimal, UUID, enums, tuples, typed dict keys,
    optionals and defaults: the job after a restart gets an event == the submitted one."""
    capture = capturing(Rich, "user_id")
    submitted = rich_events()
    seen = await replayed(tmp_path / "journal.db", capture, list(submitted))
    for original in submitted:
        back = seen[str(original.user_id)]
        assert type(back) is Rich
        assert back == original
        assert back is not original  # it really came from the journal
        assert back.model_dump() == original.model_dump()
        # What == does not look at: the offset, Decimal digits, container and key types.
        assert back.at.utcoffset() == original.at.utcoffset()
        assert str(back.amount) == str(original.amount)
        assert type(back.tags) is frozenset
        assert type(back.pair) is tuple
        assert all(type(k) is int for k in back.scores)
        assert all(type(k) is uuid.UUID for k in back.by_ref)
        assert all(type(k) is date for k in back.by_day)
        assert back.color is original.color
        assert back.level is original.level
    full = seen["1"]
    assert isinstance(full, Rich)
    assert math.copysign(1.0, full.floats[1]) == -1.0  # -0.0 kept its sign
    assert str(full.amount) == "1.10"
    assert full.pets == [Dog(good=False), Cat(lives=3)]
    assert full.at.utcoffset() == timedelta(hours=5, minutes=30)


class Account(BaseModel):
    """A model validated and written only under its aliases (no populate_by_name)."""

    account_id: str = Field(alias="accountId")
    plan: Literal["free", "pro"] = Field(alias="planName", default="free")


async def test_an_alias_only_model_replays_from_a_dict_submission(tmp_path: Path) -> None:
    """An event submitted as a dict under its aliases replays equal: the journal writes it
    under the aliases it is validated by."""
    capture = capturing(Account, "account_id")
    event = Account.model_validate({"accountId": "acc-1", "planName": "pro"})
    path = tmp_path / "journal.db"
    async with aw.Dispatcher(drain_timeout=0, journal=path) as dispatcher:
        await dispatcher.submit(capture.pipeline, {"accountId": "acc-1", "planName": "pro"})
    capture.restarted = True
    async with aw.Dispatcher(journal=path, pipelines=[capture.pipeline]):
        await wait_until(lambda: "acc-1" in capture.seen, "the event replayed")
    assert capture.seen["acc-1"] == event


# -- refused at registration ------------------------------------------------------------------


class Cache(BaseModel):
    warm: bool = True
    hits: int = Field(default=0, exclude=True)


class Creds(BaseModel):
    user: str
    api_key: SecretStr


class ExcludedTop(BaseModel):
    id: int
    internal: str = Field(default="", exclude=True)


class ExcludedNested(BaseModel):
    id: int
    cache: Cache


class ExcludedInOptionalList(BaseModel):
    id: int
    caches: list[Cache] | None = None


class SecretTop(BaseModel):
    id: int
    password: SecretStr


class SecretOptional(BaseModel):
    id: int
    token: SecretStr | None = None


class SecretBytesList(BaseModel):
    id: int
    keys: list[SecretBytes] = []


class SecretInDict(BaseModel):
    id: int
    tokens: dict[str, SecretStr] = {}


class SecretNested(BaseModel):
    id: int
    creds: Creds


class SecretNestedOptionalList(BaseModel):
    id: int
    creds: list[Creds] | None = None


class SecretGeneric(BaseModel):
    id: int
    pin: Secret[int]


def excluded(path: str) -> str:
    return (
        f"field {path} is declared with exclude=True, so its JSON leaves it out and a journal "
        f"could not keep it; drop exclude=True from the field, {FIX}"
    )


def secret(path: str, kind: str) -> str:
    return (
        f"field {path} is a secret ({kind}): a journal would have to store it on disk in clear; "
        f"keep secrets out of events (pass a reference, e.g. a vault key), {FIX}"
    )


REFUSED: list[tuple[type[BaseModel], str]] = [
    (ExcludedTop, excluded("ExcludedTop.internal")),
    (ExcludedNested, excluded("ExcludedNested.cache.hits")),
    (ExcludedInOptionalList, excluded("ExcludedInOptionalList.caches.hits")),
    (SecretTop, secret("SecretTop.password", "SecretStr")),
    (SecretOptional, secret("SecretOptional.token", "SecretStr")),
    (SecretBytesList, secret("SecretBytesList.keys", "SecretBytes")),
    (SecretInDict, secret("SecretInDict.tokens", "SecretStr")),
    (SecretNested, secret("SecretNested.creds.api_key", "SecretStr")),
    (SecretNestedOptionalList, secret("SecretNestedOptionalList.creds.api_key", "SecretStr")),
    (SecretGeneric, secret("SecretGeneric.pin", "Secret")),
]


@pytest.mark.parametrize(("model", "message"), REFUSED, ids=[m.__name__ for m, _ in REFUSED])
async def test_a_model_the_journal_cannot_keep_is_refused_at_registration(
    tmp_path: Path, model: type[BaseModel], message: str
) -> None:
    """exclude=True and secrets, at top level or nested in a submodel, an Optional, a list or
    a dict, are refused by Dispatcher(pipelines=[...]), register() and the first submit, with
    InvalidEvent naming the field; without a journal the same pipeline is accepted."""
    pipeline = aw.Pipeline("secretive", event=model, key=operator.attrgetter("id"))
    pipeline.job(name="noop")(lambda event: None)
    path = tmp_path / "journal.db"
    with pytest.raises(aw.InvalidEvent) as at_init:
        aw.Dispatcher(journal=path, pipelines=[pipeline])
    assert str(at_init.value) == message
    dispatcher = aw.Dispatcher(journal=path, max_pending=1)
    with pytest.raises(aw.InvalidEvent) as at_register:
        dispatcher.register(pipeline)
    assert str(at_register.value) == message
    async with dispatcher:
        with pytest.raises(aw.InvalidEvent) as at_submit:
            await dispatcher.submit(pipeline, {"id": 1})
        assert str(at_submit.value) == message
        with pytest.raises(aw.InvalidEvent) as at_submit_nowait:
            dispatcher.submit_nowait(pipeline, {"id": 1})
        assert str(at_submit_nowait.value) == message
        assert dispatcher.stats().pending == 0
        assert dispatcher.stats().admitted == 0
    assert aw.SqliteJournal(path).unfinished() == []
    # Without a journal nothing is written, so nothing is refused.
    async with aw.Dispatcher(pipelines=[pipeline]) as plain:
        report = await plain.run(pipeline, model.model_construct(id=3))
        assert report.ok


# -- refused on entry, taking no room ---------------------------------------------------------


class Blob:
    """A value pydantic cannot write as JSON."""


class Words(BaseModel):
    words: list[str] = []


class Circle(BaseModel):
    size: int


class Square(BaseModel):
    size: int


class Tinted(Circle):
    color: str = "red"


class Doc(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: int
    shape: Circle | Square | None = None
    anything: Any = None
    ratio: float = 0.0
    maybe: float | None = None
    text: str = ""
    inner: Words = Words()
    blob: Blob | None = None
    _note: str = PrivateAttr(default="")


def with_note(note: str) -> Doc:
    doc = Doc(id=1)
    doc._note = note
    return doc


def changes(where: str) -> str:
    return (
        f"{where} changes in its JSON round trip (it would not be the same after a restart); "
        "give it a type that JSON keeps exactly (e.g. list[str], not Any with a set; finite "
        f"floats), {FIX}"
    )


def unwritable(where: str, why: str) -> str:
    return (
        f"{where} cannot be written as JSON ({why}); give it a value JSON can hold (text "
        f"without lone surrogates, a pydantic-typed value), {FIX}"
    )


def surrogate(char: str) -> str:
    return (
        f"Error serializing to JSON: UnicodeEncodeError: 'utf-8' codec can't encode character "
        f"'\\u{ord(char):x}' in position 0: surrogates not allowed"
    )


@dataclass(frozen=True)
class Bad:
    name: str
    event: Doc
    #: The exact message, or (when the wording is the library's to choose) None.
    message: str | None
    #: What the message must name.
    names: str


BAD = [
    Bad("set_in_any", Doc(id=1, anything={1, 2}), changes("field Doc.anything (set becomes list)"),
        "field Doc.anything"),
    Bad("nan_in_optional_float", Doc(id=1, maybe=math.nan),
        changes("field Doc.maybe (float becomes NoneType)"), "field Doc.maybe"),
    Bad("inf_in_optional_float", Doc(id=1, maybe=math.inf),
        changes("field Doc.maybe (float becomes NoneType)"), "field Doc.maybe"),
    Bad("nan_in_float", Doc(id=1, ratio=math.nan), None, "field Doc.ratio"),
    Bad("private_attribute", with_note("set after construction"), None, "Doc._note"),
    Bad("model_read_back_as_another", Doc(id=1, shape=Square(size=2)), None, "field Doc.shape"),
    Bad("subclass_instance", Doc(id=1, shape=Tinted(size=1, color="blue")),
        changes("field Doc.shape (Tinted becomes Circle)"), "field Doc.shape"),
    Bad("lone_surrogate", Doc(id=1, text="\ud800"),
        unwritable("field Doc.text", surrogate("\ud800")), "field Doc.text"),
    Bad("nested_lone_surrogate", Doc(id=1, inner=Words(words=["ok", "\udfff"])),
        None, "field Doc.inner.words"),
    Bad("arbitrary_type", Doc(id=1, blob=Blob()),
        unwritable("field Doc.blob", f"Unable to serialize unknown type: {Blob!r}"),
        "field Doc.blob"),
]  # fmt: skip


def doc_pipeline(gate: Gate) -> tuple[aw.Pipeline[Doc], list[Doc]]:
    seen: list[Doc] = []
    pipeline = aw.Pipeline("docs", event=Doc, key=lambda d: d.id)

    @pipeline.job
    def block(doc: Doc) -> None:
        seen.append(doc)
        gate.block()

    return pipeline, seen


def good(i: int) -> Doc:
    return Doc(id=100 + i, text="fine", anything=[1, "a"], maybe=1.5)


@pytest.mark.parametrize("bad", BAD, ids=[b.name for b in BAD])
async def test_an_event_that_would_change_is_refused_on_entry_taking_no_room(
    tmp_path: Path, bad: Bad
) -> None:
    """An event that would change in the journal or cannot be written raises InvalidEvent
    naming the field, from submit and submit_nowait, and admits nothing: after 10 refusals
    with max_pending=2, exactly two good events still fit."""
    gate = Gate()
    pipeline, seen = doc_pipeline(gate)
    path = tmp_path / "journal.db"
    with anyio.fail_after(30):
        async with aw.Dispatcher(journal=path, max_pending=2, pipelines=[pipeline]) as dispatcher:
            errors: list[aw.InvalidEvent] = []
            for _ in range(5):
                with pytest.raises(aw.InvalidEvent) as info:
                    await dispatcher.submit(pipeline, bad.event, timeout=0)
                errors.append(info.value)
                with pytest.raises(aw.InvalidEvent) as info:
                    dispatcher.submit_nowait(pipeline, bad.event)
                errors.append(info.value)
            stats = dispatcher.stats()
            on_disk = await anyio.to_thread.run_sync(aw.SqliteJournal(path).unfinished)
            first = dispatcher.submit_nowait(pipeline, good(1))
            second = await dispatcher.submit(pipeline, good(2), timeout=0)
            with pytest.raises(aw.Overloaded):
                dispatcher.submit_nowait(pipeline, good(3))
            gate.open()
            reports = [await first.wait(), await second.wait()]
    for error in errors:
        if bad.message is not None:
            assert str(error) == bad.message
        assert bad.names in str(error), str(error)
    assert (stats.pending, stats.admitted, stats.queued) == (0, 0, 0)
    assert on_disk == []
    assert [r.ok for r in reports] == [True, True]
    assert sorted(seen, key=lambda d: d.id) == [good(1), good(2)]


async def test_without_a_journal_the_same_events_are_accepted_as_they_are() -> None:
    """No journal, no encoding: every event refused above runs, and the job gets the very
    object that was submitted."""
    gate = Gate()
    gate.open()
    pipeline, seen = doc_pipeline(gate)
    async with aw.Dispatcher(max_pending=2) as dispatcher:
        for bad in BAD:
            report = await dispatcher.run(pipeline, bad.event)
            assert report.ok, bad.name
    assert len(seen) == len(BAD)
    for bad, got in zip(BAD, seen, strict=True):
        assert got is bad.event


# -- the file ---------------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0, so only the journal's own choice of mode keeps its files private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
async def test_the_journal_files_are_private(tmp_path: Path) -> None:
    """The journal file and its -wal and -shm are created mode 0600, even under umask 0."""
    gate = Gate()
    pipeline, _ = doc_pipeline(gate)
    path = tmp_path / "journal.db"
    async with aw.Dispatcher(journal=path, pipelines=[pipeline]) as dispatcher:
        handle = await dispatcher.submit(pipeline, good(1))
        files = [path, path.with_name("journal.db-wal"), path.with_name("journal.db-shm")]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        gate.open()
        await handle.wait()
    assert modes == {"journal.db": 0o600, "journal.db-wal": 0o600, "journal.db-shm": 0o600}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
