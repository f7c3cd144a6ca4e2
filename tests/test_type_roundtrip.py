"""Type round trips across databases (``dimpledb_sa.core.values`` and the merge), as a property: a
row holding every common column type, written on device A and pulled by device B, reads back on
B as the same Python values, of the same types, as A reads back itself, and as what was written
(after the documented normalisation), for every pair of databases: SQLite to SQLite, SQLite to
PostgreSQL, PostgreSQL to SQLite, PostgreSQL to PostgreSQL.

The two devices of a pair live for the whole test (one remote, plaintext); each example writes
a new row on A (an insert, then an update of every column to other values), syncs A then B, and
compares. Normalisation: ``DateTime(timezone=True)`` reads back aware, in UTC, on both
databases (a naive value is taken as UTC); naive ``DateTime`` stays naive; ``Numeric(12, 2)``
compares as a ``Decimal`` (scale may differ: ``1.5`` reads ``1.50``); floats round-trip
exactly. A ``JSON`` value that is a bare float is left out: SQLite stores it by its NUMERIC
affinity (``0.0`` reads back ``0``, with plain SQLAlchemy too). Strings hold no NUL
(PostgreSQL's text cannot), ``Interval`` stays within about 137 years (its JSON is a float of
seconds, exact to the microsecond there) and dates within 1900-2200 (aware values are converted
to UTC)."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from databases import Databases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    Interval,
    LargeBinary,
    Numeric,
    String,
    Text,
    Time,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from syncworld import Device, Devices, device_set

import dimpledb_sa as dimple

__all__: list[str] = []


class Base(DeclarativeBase):
    pass


class Mood(enum.Enum):
    CALM = "calm"
    WILD = "wild"


class Every(Base):
    __tablename__ = "every"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=dimple.new_id)
    s: Mapped[str | None] = mapped_column(String(200))
    t: Mapped[str | None] = mapped_column(Text)
    i: Mapped[int | None] = mapped_column(Integer)
    bi: Mapped[int | None] = mapped_column(BigInteger)
    f: Mapped[float | None] = mapped_column(Float)
    n: Mapped[decimal.Decimal | None] = mapped_column(Numeric(12, 2))
    b: Mapped[bool | None]
    d: Mapped[dt.date | None] = mapped_column(Date)
    dtn: Mapped[dt.datetime | None] = mapped_column(DateTime)
    dta: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    tm: Mapped[dt.time | None] = mapped_column(Time)
    iv: Mapped[dt.timedelta | None] = mapped_column(Interval)
    u: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    js: Mapped[Any] = mapped_column(JSON, nullable=True)
    bin: Mapped[bytes | None] = mapped_column(LargeBinary)
    en: Mapped[Mood | None] = mapped_column(Enum(Mood, name="mood_rt"))


COLUMNS = [c.key for c in Every.__table__.columns if c.key != "id"]  # type: ignore[attr-defined]
UTC = dt.UTC
OFFSETS = [UTC, dt.timezone(dt.timedelta(hours=2)), dt.timezone(dt.timedelta(hours=-5,
                                                                             minutes=-30))]
texts = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                max_size=30)
json_leaf = st.none() | st.booleans() | st.integers(-2**53, 2**53) | texts | st.floats(
    allow_nan=False, allow_infinity=False)
json_values = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(texts, kids, max_size=3), max_leaves=8).filter(
    lambda v: not isinstance(v, float))  # SQLite's NUMERIC affinity: a bare 0.0 reads 0
naive = st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1))
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "s": texts,
    "t": st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                 max_size=200),
    "i": st.integers(-2**31, 2**31 - 1),
    "bi": st.integers(-2**63, 2**63 - 1),
    "f": st.floats(allow_nan=False, allow_infinity=False),
    "n": st.decimals(min_value=-10**9, max_value=10**9, places=2, allow_nan=False,
                     allow_infinity=False),
    "b": st.booleans(),
    "d": st.dates(dt.date(1900, 1, 1), dt.date(2200, 1, 1)),
    "dtn": naive,
    "dta": st.builds(lambda d, tz: d.replace(tzinfo=tz), naive, st.sampled_from(OFFSETS)),
    "tm": st.times(),
    "iv": st.timedeltas(dt.timedelta(days=-50_000), dt.timedelta(days=50_000)),
    "u": st.uuids(),
    "js": json_values,
    "bin": st.binary(max_size=40),
    "en": st.sampled_from(Mood),
}
rows = st.fixed_dictionaries({k: st.none() | v for k, v in VALUES.items()})

PAIRS = [("sqlite", "sqlite"), ("sqlite", "postgresql"), ("postgresql", "sqlite"),
         ("postgresql", "postgresql")]


def normalised(column: str, value: Any) -> Any:
    """What a replica reads back for a written ``value`` (see the module docstring)."""
    if value is None:
        return None
    if column == "dta":
        return value.astimezone(UTC)
    return value


@pytest.fixture(params=[pytest.param(p, id="-".join(p), marks=[pytest.mark.postgresql]
                                      if "postgresql" in p else []) for p in PAIRS])
def pair(request: pytest.FixtureRequest, tmp_path: Path,
         databases: Databases) -> Iterator[tuple[Device, Device]]:
    kinds: tuple[str, str] = request.param
    if "postgresql" in kinds:
        request.getfixturevalue("pg_server")
    url = f"memory://roundtrip-{uuid.uuid4().hex}/remote"
    with device_set(tmp_path, url, encryption=False, databases=databases) as devs:
        yield _device(devs, "a", kinds[0]), _device(devs, "b", kinds[1])


def _device(devs: Devices, name: str, kind: str) -> Device:
    return devs.new(name, models=Base, database=kind)


def read(dev: Device, entity_id: str) -> dict[str, Any]:
    with Session(dev.db.engine) as s:
        row = s.get(Every, entity_id)
        assert row is not None, f"{dev.name} has no row {entity_id}"
        return {c: getattr(row, c) for c in COLUMNS}


def same(column: str, a: Any, b: Any) -> bool:
    """Equal values of equal types (``-0.0`` and ``0.0`` are one float value)."""
    return type(a) is type(b) and a == b


def check(a: Device, b: Device, entity_id: str, written: dict[str, Any]) -> None:
    a.sync()
    report = b.sync()
    assert report.errors == {} and report.held == 0
    on_a, on_b = read(a, entity_id), read(b, entity_id)
    for column in COLUMNS:
        want = normalised(column, written[column])
        assert same(column, on_a[column], want), (column, a.name, on_a[column], want)
        assert same(column, on_b[column], on_a[column]), (column, on_b[column], on_a[column])


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(first=rows, second=rows)
def test_every_type_reads_back_the_same_on_every_replica(
        pair: tuple[Device, Device], first: dict[str, Any], second: dict[str, Any]) -> None:
    a, b = pair
    row = Every(**first)
    a.add(row)
    check(a, b, row.id, first)
    a.edit(Every, row.id, **second)
    check(a, b, row.id, second)
