"""Tests for ``db.as_of()`` (:mod:`dimpledb_sa.core.timeline`): an entity's values at a time.

Before creation, between edits, after deletion and after a restore; values decoded as the
ORM loads them (decimals, dates, UUIDs, enums, JSON, bytes, an attribute named differently
from its column, joined-table inheritance); the forms of the model argument; pulled
history; and the clear errors (a naive datetime, an untracked model, a row with no
history, pruned history).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from models import Note
from sqlalchemy import JSON, ForeignKey, LargeBinary, Numeric, String, Uuid, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from syncworld import (
    Device,
    Devices,
    device_set,
    sync_all,
)

import dimpledb_sa as dimple
from dimpledb_sa.core import meta
from dimpledb_sa.core.clock import HybridClock
from dimpledb_sa.core.timeline import id_bound

__all__: list[str] = []

MS = dt.timedelta(milliseconds=1)


class Mood(enum.Enum):
    HAPPY = "h"
    SAD = "s"


class TypedBase(DeclarativeBase):
    pass


class Record(TypedBase):
    __tablename__ = "record"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    label: Mapped[str] = mapped_column("label_text", String(40))  # key != column name
    price: Mapped[decimal.Decimal | None] = mapped_column(Numeric(10, 2))
    day: Mapped[dt.date | None]
    at: Mapped[dt.datetime | None]
    mood: Mapped[Mood | None]
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    blob: Mapped[bytes | None] = mapped_column(LargeBinary)
    flag: Mapped[bool] = mapped_column(default=False)


class Animal(TypedBase):
    __tablename__ = "animal"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    kind: Mapped[str]
    name: Mapped[str]
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_on": "kind",
                                                 "polymorphic_identity": "animal"}


class Dog(Animal):
    __tablename__ = "dog"
    id: Mapped[str] = mapped_column(ForeignKey("animal.id"), primary_key=True)
    barks: Mapped[bool] = mapped_column(default=True)
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "dog"}


@pytest.fixture(name="devs")
def devs_fixture(tmp_path: Path) -> Iterator[Devices]:
    with device_set(tmp_path, f"memory://as-of-{tmp_path.name}") as devs:
        yield devs


def note_values(**kw: Any) -> dict[str, Any]:
    return {"id": kw["id"], "title": kw["title"], "body": kw.get("body"),
            "done": kw.get("done", False), "rank": kw.get("rank")}


def test_before_creation_between_edits_and_after_deletion(devs: Devices) -> None:
    a = devs.new("a")
    note = Note(title="milk", body="2 l")
    a.add(note)
    a.edit(Note, note.id, title="oat milk")
    a.edit(Note, note.id, body="1 l", done=True)
    a.delete(Note, note.id)
    created, first, second, deleted = sorted({c.timestamp for c in a.db.history(Note, note.id)})
    db = a.db
    assert db.as_of(Note, note.id, created - MS) is None
    assert db.as_of(Note, note.id, created) == note_values(id=note.id, title="milk", body="2 l")
    assert db.as_of(Note, note.id, first) == note_values(id=note.id, title="oat milk",
                                                         body="2 l")
    assert db.as_of(Note, note.id, second - MS) == db.as_of(Note, note.id, first)
    assert db.as_of(Note, note.id, second) == note_values(id=note.id, title="oat milk",
                                                          body="1 l", done=True)
    assert db.as_of(Note, note.id, deleted) is None
    assert db.as_of(Note, note.id, deleted + dt.timedelta(days=365)) is None
    # in another time zone, the same moments
    tz = dt.timezone(dt.timedelta(hours=-7))
    assert db.as_of(Note, note.id, first.astimezone(tz)) == db.as_of(Note, note.id, first)
    # a restore brings it back from then on, with the values it had before the delete
    restore = db.revert(db.history(Note, note.id)[-1].transaction_id)
    assert restore is not None
    back = db.history(Note, note.id)[-1].timestamp
    assert db.as_of(Note, note.id, back - MS) is None
    assert db.as_of(Note, note.id, back) == db.as_of(Note, note.id, second)


def test_values_are_python_values_as_the_orm_loads_them(devs: Devices) -> None:
    a = devs.new("a", models=TypedBase)
    rec = Record(label="first", price=decimal.Decimal("12.50"), day=dt.date(2024, 7, 11),
                 at=dt.datetime(2024, 7, 11, 10, 30, 45, 123000), mood=Mood.HAPPY,
                 data={"tags": ["a", "b"], "n": 1}, blob=b"\x00\xffbin", flag=True)
    a.add(rec)
    with a.Session() as s:
        obj = s.get(Record, rec.id)
        assert obj is not None
        loaded = {k: getattr(obj, k) for k in
                  ("id", "label", "price", "day", "at", "mood", "data", "blob", "flag")}
        obj.price, obj.mood, obj.label = None, Mood.SAD, "second"
        s.commit()
    created = a.db.history(Record, rec.id)[0].timestamp
    assert a.db.as_of(Record, rec.id, created) == loaded  # attribute keys, ORM types
    assert type(a.db.as_of(Record, rec.id, created)["price"]) is decimal.Decimal  # type: ignore[index]
    now = a.db.as_of(Record, rec.id, dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert now is not None and (now["price"], now["mood"], now["label"]) == (
        None, Mood.SAD, "second")
    # a Table or a table name gives column names instead of attribute keys
    by_table = a.db.as_of(Record.__table__, rec.id, created)
    assert by_table is not None and by_table["label_text"] == "first" and "label" not in by_table
    assert a.db.as_of("record", str(rec.id), created) == by_table


def test_joined_table_inheritance(devs: Devices) -> None:
    a = devs.new("a", models=TypedBase)
    dog = Dog(name="rex", barks=True)
    a.add(dog)
    a.edit(Dog, dog.id, barks=False, name="rex II")
    created, edited = sorted({c.timestamp for c in a.db.history(Dog, dog.id)}
                             | {c.timestamp for c in a.db.history(Animal, dog.id)})
    assert a.db.as_of(Dog, dog.id, created) == {"id": dog.id, "kind": "dog", "name": "rex",
                                                "barks": True}
    assert a.db.as_of(Dog, dog.id, edited) == {"id": dog.id, "kind": "dog", "name": "rex II",
                                               "barks": False}
    assert a.db.as_of(Animal, dog.id, edited) == {"id": dog.id, "kind": "dog",
                                                  "name": "rex II"}


def test_pulled_history_reads_the_same(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    note = Note(title="milk")
    a.add(note)
    a.edit(Note, note.id, title="oat milk")
    sync_all(a, b)
    b.edit(Note, note.id, rank=2)
    sync_all(a, b)
    times = sorted({c.timestamp for c in a.db.history(Note, note.id)})
    for when in times:
        assert a.db.as_of(Note, note.id, when) == b.db.as_of(Note, note.id, when)
    assert b.db.as_of(Note, note.id, times[-1]) == b.get(Note, note.id)


def test_unknown_entity_is_none(devs: Devices) -> None:
    a = devs.new("a")
    assert a.db.as_of(Note, dimple.new_id(), dt.datetime.now(dt.UTC)) is None


def _raw_note(dev: Device) -> str:
    eid = dimple.new_id()
    with dev.db.engine.begin() as conn:  # Core, not captured: a row without history
        conn.execute(insert(Note.__table__).values(id=eid, title="raw", done=False))
    return eid


def test_errors(devs: Devices) -> None:
    a = devs.new("a")
    note = Note(title="milk")
    a.add(note)
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(ValueError, match="aware datetime"):
        a.db.as_of(Note, note.id, dt.datetime.now())
    with pytest.raises(dimple.ConfigurationError, match="not a tracked table"):
        a.db.as_of(Record, note.id, now)
    with pytest.raises(dimple.ConfigurationError, match="not a mapped class"):
        a.db.as_of(object(), note.id, now)
    with pytest.raises(dimple.HistoryError, match="no recorded history"):
        a.db.as_of(Note, _raw_note(a), now)
    raw = _raw_note(a)
    a.edit(Note, raw, title="edited")  # history that starts with an update
    with pytest.raises(dimple.HistoryError, match="no recorded insert"):
        a.db.as_of(Note, raw, now)


def test_pruned_history_cannot_be_viewed(devs: Devices) -> None:
    a = devs.new("a")
    note = Note(title="milk")
    a.add(note)
    a.edit(Note, note.id, title="oat milk")
    created, edited = sorted({c.timestamp for c in a.db.history(Note, note.id)})
    with a.db.engine.begin() as conn:  # what prune_history records when it drops changes
        meta.put(conn, meta.PRUNED_BEFORE, id_bound(edited))
    with pytest.raises(dimple.HistoryError, match="prune_history"):
        a.db.as_of(Note, note.id, created)
    assert a.db.as_of(Note, note.id, edited + MS) is not None


def test_id_bound() -> None:
    when = dt.datetime(2024, 7, 11, 10, 30, 45, 123999, tzinfo=dt.UTC)
    bound = id_bound(when)
    h = f"{int(when.timestamp() * 1000):012x}"  # the millisecond field of ids made then
    assert bound == f"{h[:8]}-{h[8:]}-ffff-ffff-ffffffffffff"
    clock = HybridClock(now_ns=lambda: int(when.timestamp() * 1000) * 1_000_000)
    made_then = clock.reserve(3)
    assert all(i <= bound for i in made_then)
    later = HybridClock(now_ns=lambda: (int(when.timestamp() * 1000) + 1) * 1_000_000)
    assert later.next() > bound
    assert id_bound(dt.datetime(1960, 1, 1, tzinfo=dt.UTC)) == ""
    with pytest.raises(ValueError):
        id_bound(dt.datetime(2024, 1, 1))


def test_as_of_reads_pending_and_folded_log_alike(devs: Devices) -> None:
    a = devs.new("a")
    note = Note(title="milk")
    a.add(note)
    when = a.db.history(Note, note.id)[0].timestamp
    pending = a.db.as_of(Note, note.id, when)
    assert pending is not None and pending["title"] == "milk"
    a.sync()  # folds the pending transaction into the indexed log
    assert a.db.as_of(Note, note.id, when) == pending
    with a.Session() as s:
        assert s.scalars(select(Note.title)).all() == ["milk"]
