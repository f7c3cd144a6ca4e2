"""Tests for ``dimpledb_sa.core.values``: values round trip exactly: ORM write -> change
log -> ``codec_for(column).from_json``."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import Base, Color, Kinds
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    Interval,
    MetaData,
    Numeric,
    PickleType,
    String,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

import dimpledb_sa as dimple
from dimpledb_sa.core.values import codec_for, decode_column, json_texts

COLUMNS = {c.name: c for c in Kinds.__table__.columns}
UTC2 = dt.timezone(dt.timedelta(hours=2))

SAMPLE: dict[str, Any] = {
    "s": "héllo \"wörld\" \\ \n \U0001f600",
    "t": "x" * 3000,
    "i": -42,
    "bi": 2**62 + 1,
    "f": 0.1 + 0.2,
    "n": decimal.Decimal("12.50"),
    "b": True,
    "d": dt.date(2024, 2, 29),
    "dtn": dt.datetime(2024, 7, 11, 10, 30, 45, 123456),
    "dta": dt.datetime(2024, 7, 11, 10, 30, 45, 123456, tzinfo=UTC2),
    "tm": dt.time(23, 59, 58, 999999),
    "bin": bytes(range(256)),
    "js": {"a": [1, 2.5, None, True, "x"], "b": {"c": []}},
    "en": Color.GREEN,
    "es": "high",
    "u1": uuid.UUID("01933b2e-1111-7777-8888-999999999999"),
    "u2": "01933b2e-2222-7777-8888-999999999999",
}


@pytest.fixture(scope="module")
def mem_db() -> Iterator[dimple.DimpleDb]:
    engine = create_engine("sqlite://", poolclass=StaticPool,
                           connect_args={"check_same_thread": False})
    db = dimple.DimpleDb(engine, Base)
    db.create_all()
    yield db
    db.close()
    engine.dispose()


def decode(column: str, value: Any) -> Any:
    return None if value is None else codec_for(COLUMNS[column]).from_json(value)


def logged(db: dimple.DimpleDb, kid: uuid.UUID) -> dict[str, tuple[Any, Any]]:
    """attribute -> (old, new) of the latest change of each attribute, decoded."""
    out: dict[str, tuple[Any, Any]] = {}
    for c in db.history(Kinds, kid):
        json.dumps(c.new_value)  # JSON-compatible, as a bundle needs
        out[c.attribute] = (decode(c.attribute, c.old_value), decode(c.attribute, c.new_value))
    return out


def write(db: dimple.DimpleDb, **values: Any) -> uuid.UUID:
    with Session(db.engine) as session:
        k = Kinds(**values)
        session.add(k)
        session.commit()
        return k.id


def test_every_type_round_trips_on_insert(mem_db: dimple.DimpleDb) -> None:
    kid = write(mem_db, **SAMPLE)
    got = logged(mem_db, kid)
    assert got["id"] == (None, kid)
    for name, value in SAMPLE.items():
        old, new = got[name]
        assert old is None
        assert new == value and type(new) is type(value), name
    assert got["dta"][1].utcoffset() == dt.timedelta(0)  # the same instant, logged in UTC


def test_every_type_round_trips_on_update(mem_db: dimple.DimpleDb) -> None:
    kid = write(mem_db, **SAMPLE)
    changed: dict[str, Any] = {
        "s": "", "t": "y", "i": 0, "bi": -(2**63), "f": -1e308, "n": decimal.Decimal("-0.01"),
        "b": False, "d": dt.date(1, 1, 1), "dtn": dt.datetime(1999, 12, 31, 23, 59, 59),
        "dta": dt.datetime(2000, 1, 1, tzinfo=dt.UTC), "tm": dt.time(0, 0),
        "bin": b"", "js": [1, "two"], "en": Color.RED, "es": "low",
        "u1": uuid.UUID(int=1), "u2": str(uuid.UUID(int=2)),
    }
    with Session(mem_db.engine) as session:
        k = session.get_one(Kinds, kid)
        for name, value in changed.items():
            setattr(k, name, value)
        session.commit()
    got = logged(mem_db, kid)
    loaded = {**SAMPLE, "dta": SAMPLE["dta"].astimezone(dt.UTC)}  # read back aware, in UTC
    for name, value in changed.items():
        old, new = got[name]
        assert new == value and type(new) is type(value), name
        assert old == loaded[name] and type(old) is type(loaded[name]), name


def test_null_round_trips(mem_db: dimple.DimpleDb) -> None:
    kid = write(mem_db, **SAMPLE)
    with Session(mem_db.engine) as session:
        k = session.get_one(Kinds, kid)
        for name in SAMPLE:
            setattr(k, name, None)
        session.commit()
    got = logged(mem_db, kid)
    assert {name: got[name][1] for name in SAMPLE} == dict.fromkeys(SAMPLE)
    empty = write(mem_db)
    assert {name: v[1] for name, v in logged(mem_db, empty).items() if name != "id"} == (
        dict.fromkeys(SAMPLE))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(
        blacklist_characters="\x00")),  # no text holds NUL (test_limits)
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(st.characters(blacklist_characters="\x00")), inner, max_size=4),
    max_leaves=10,
)
safe_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(s=safe_text, bi=st.integers(-(2**63), 2**63 - 1),
       f=st.floats(allow_nan=False, allow_infinity=False),
       n=st.decimals(min_value=-(10**9), max_value=10**9, places=2),
       dtn=st.datetimes(),
       dta=st.datetimes(timezones=st.sampled_from([dt.UTC, UTC2])),
       tm=st.times(), bin=st.binary(max_size=64), js=json_values)
def test_values_round_trip_property(mem_db: dimple.DimpleDb, s: str, bi: int, f: float,
                                    n: decimal.Decimal, dtn: dt.datetime, dta: dt.datetime,
                                    tm: dt.time, bin: bytes, js: Any) -> None:
    values = {"s": s, "bi": bi, "f": f, "n": n, "dtn": dtn, "dta": dta, "tm": tm,
              "bin": bin, "js": js}
    got = logged(mem_db, write(mem_db, **values))
    for name, value in values.items():
        assert got[name][1] == value, name
        if name == "dta" and dt.datetime(1, 1, 2) < value.replace(tzinfo=None) < dt.datetime(
                9999, 12, 30):
            assert got[name][1].utcoffset() == dt.timedelta(0)  # logged in UTC


# ----------------------------------------------------------------------------- codecs


class Tagged(TypeDecorator[dict[str, Any]]):
    """A dict stored as JSON text: the log holds the text, as the database does."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else json.dumps(value, sort_keys=True)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else json.loads(value)


class UTCDateTime(TypeDecorator[dt.datetime]):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else value.replace(tzinfo=dt.UTC)


class Plain(TypeDecorator[str]):
    impl = String
    cache_ok = True


extra = Table("extra", MetaData(), Column("id", String, primary_key=True),
              Column("tagged", Tagged), Column("when", UTCDateTime), Column("plain", Plain),
              Column("span", Interval),
              Column("pickled", PickleType, info={"dimpledb_allow_pickle": True}),
              Column("js", JSON), Column("i", Integer),
              Column("fd", Float(asdecimal=True)), Column("num", Numeric(10, 2)))


@pytest.mark.parametrize(("column", "value", "as_json"), [
    ("tagged", {"b": 1, "a": [2]}, '{"a": [2], "b": 1}'),
    ("when", dt.datetime(2024, 1, 1, 12, tzinfo=UTC2), "2024-01-01T10:00:00"),
    ("plain", "text", "text"),
    ("span", dt.timedelta(days=2, seconds=3, microseconds=7), 172803.000007),
    ("pickled", {"set": {1, 2}}, None),
    ("js", {"k": [None]}, {"k": [None]}),
    ("i", 7, 7),
    ("fd", decimal.Decimal("1.5"), "1.5"),  # Float is no Numeric since SQLAlchemy 2.1
    ("num", decimal.Decimal("12.50"), "12.50"),
])
def test_codecs(column: str, value: Any, as_json: Any) -> None:
    codec = codec_for(extra.c[column])
    j = codec.to_json(value)
    if as_json is not None:
        assert j == as_json
    assert json.loads(json.dumps(j)) == j
    back = codec.from_json(j)
    assert back == value
    text = codec.encode(value)
    assert text is not None and json.loads(text) == j
    assert codec.decode(text) == value
    assert codec.encode(None) is None and codec.decode(None) is None


def test_decorated_round_trip_through_the_database() -> None:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    db = dimple.DimpleDb(engine, [extra])
    db.create_all()
    when = dt.datetime(2024, 1, 1, 12, tzinfo=UTC2)
    with engine.begin() as conn:
        conn.execute(extra.insert().values(id="x"))
    from sqlalchemy.orm import registry

    class Extra:
        id: str
        when: dt.datetime

    reg = registry()
    reg.map_imperatively(Extra, extra)
    try:
        with Session(engine) as session:
            e = session.get_one(Extra, "x")
            e.when = when
            session.commit()
        change = db.history(extra, "x")[-1]
        assert change.new_value == "2024-01-01T10:00:00"
        assert codec_for(extra.c.when).from_json(change.new_value) == when
    finally:
        reg.dispose()
        db.close()
        engine.dispose()


def test_a_decimal_float_column_is_captured_and_synced(tmp_path: Any) -> None:
    """``Float(asdecimal=True)`` holds ``Decimal`` values: logged as decimal digits (as a
    ``Numeric``), merged into another device as the same value."""
    class B(DeclarativeBase):
        pass

    class Reading(B):
        __tablename__ = "reading"
        id: Mapped[str] = mapped_column(primary_key=True)
        f: Mapped[decimal.Decimal | None] = mapped_column(Float(asdecimal=True))

    remote = f"memory://decimal-float-{uuid.uuid4().hex}"
    dbs = []
    for name in ("a", "b"):
        db = dimple.DimpleDb(create_engine(f"sqlite:///{tmp_path / name}.db"), B,
                             remote=remote, encryption=False)
        db.create_all()
        dbs.append(db)
    a, b = dbs
    try:
        with Session(a.engine) as s:
            s.add(Reading(id="r", f=decimal.Decimal("1.5")))
            s.commit()
        assert [c.new_value for c in a.history(Reading, "r")] == ["r", "1.5"]
        a.sync()
        b.sync()
        with Session(b.engine) as s:
            assert s.scalars(select(Reading.f)).one() == decimal.Decimal("1.5")
    finally:
        for db in dbs:
            db.close()
            db.engine.dispose()


def test_json_texts_are_json_dumps() -> None:
    values = [None, "", "a", 'é\n"\\', "\U0001f600", 0, -5, 2**70, True, False, 1.5, -0.0, 1e300,
              float("nan"), float("inf"), float("-inf"), [1, "x", None], {"a": [True]},
              Color.RED.name]
    assert json_texts(values) == [None if v is None else json.dumps(v) for v in values]


@pytest.mark.parametrize("kind", [String, Integer, Float, Boolean])
def test_a_column_decoded_at_once_is_decoded_one_by_one(kind: Any) -> None:
    codec = codec_for(Column("c", kind))
    texts: list[str | None] = [None, '"a"', '"\\u00e9\\n"', '""', "0", "-5", "12345678901234567890",
                               "1.5", "1e400", "true", "false", "[1, 2]", '{"a": null}', "NaN"]
    if kind is Float:  # only what a float can be made of
        texts = [None, "0", "-5", "12345678901234567890", "1.5", "1e400", "true", "NaN",
                 "1" + "0" * 400]  # an integer no float holds: inf, one by one
    got = decode_column(codec, texts)
    assert got == [codec.decode(t) for t in texts] or kind is Float  # NaN != NaN
    assert [type(v) for v in got] == [type(codec.decode(t)) for t in texts]
    # no array of as many values; the text null
    for bad in (['"x"', "1,2"], ["[1", "2]"], ['"a\tb"'], ["null", "1"]):
        assert _outcome(lambda b=bad: decode_column(codec, b)) == _outcome(
            lambda b=bad: [codec.decode(t) for t in b])
    if kind is Float:
        with pytest.raises(ValueError):
            decode_column(codec, ['"not a number"'])


def _outcome(f: Any) -> Any:
    try:
        return f()
    except (ValueError, TypeError) as exc:
        return type(exc)
