"""Tests for ``dimpledb_sa.core.tracking``: which tables are tracked: the models argument,
``exclude``, and the key checks."""

from __future__ import annotations

import uuid

import pytest
from models import Base, Child, Kinds, Parent, Todo
from sqlalchemy import (
    Column,
    Engine,
    Enum,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa.core import schema
from dimpledb_sa.core.tracking import mapper_plan, resolve_tables


@pytest.fixture
def engine() -> Engine:
    return create_engine("sqlite://")


def make_bad_base() -> tuple[type[DeclarativeBase], type, type]:
    class Bad(DeclarativeBase):
        pass

    class Counter(Bad):
        __tablename__ = "counter"
        id: Mapped[int] = mapped_column(primary_key=True)  # autoincrement

    class Pair(Bad):
        __tablename__ = "pair"
        a: Mapped[str] = mapped_column(primary_key=True)
        b: Mapped[str] = mapped_column(primary_key=True)

    Table("loose", Bad.metadata, Column("x", String))  # no primary key
    return Bad, Counter, Pair


def test_integer_key_is_refused_with_the_fix(engine: Engine) -> None:
    _, counter, _ = make_bad_base()
    with pytest.raises(dimple.ConfigurationError) as err:
        dimple.DimpleDb(engine, [counter])
    msg = str(err.value)
    assert "'counter'" in msg and "autoincrement" in msg
    assert "default=dimple.new_id" in msg and "exclude=['counter']" in msg


def test_composite_key_is_refused(engine: Engine) -> None:
    _, _, pair = make_bad_base()
    with pytest.raises(dimple.ConfigurationError, match=r"'pair' has a composite primary key "
                                                        r"\(a, b\).*default=dimple.new_id"):
        dimple.DimpleDb(engine, [pair])


def test_missing_key_is_refused(engine: Engine) -> None:
    bad, _, _ = make_bad_base()
    with pytest.raises(dimple.ConfigurationError, match=r"'loose' has no primary key.*exclude"):
        dimple.DimpleDb(engine, bad.metadata.tables["loose"])


def test_enum_key_is_refused(engine: Engine) -> None:
    t = Table("e", MetaData(), Column("id", Enum("a", "b", name="ab"), primary_key=True))
    with pytest.raises(dimple.ConfigurationError, match="'e'"):
        dimple.DimpleDb(engine, [t])


def test_whole_base_fails_on_first_bad_table_unless_excluded(engine: Engine) -> None:
    bad, counter, _ = make_bad_base()
    with pytest.raises(dimple.ConfigurationError):
        dimple.DimpleDb(engine, bad)

    class Good(bad):  # type: ignore[valid-type, misc]
        __tablename__ = "good"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)

    db = dimple.DimpleDb(engine, bad, exclude=[counter, "pair", bad.metadata.tables["loose"]])
    try:
        assert sorted(db.tracked) == ["good"]
    finally:
        db.close()


def test_models_forms(engine: Engine) -> None:
    every = ["child", "kinds", "parent", "todo"]
    for models in (Base, Base.metadata, [Todo, Parent, Child, Kinds],
                   [Todo.__table__, Parent, Child.__table__, Kinds], iter([Base])):
        db = dimple.DimpleDb(engine, models)
        try:
            assert sorted(db.tracked) == every, models
        finally:
            db.close()
    db = dimple.DimpleDb(engine, Todo)
    try:
        assert sorted(db.tracked) == ["todo"]
        assert db.tracked_table(Todo).pk.name == "id"
        assert db.tracked_table("todo") is db.tracked_table(Todo.__table__)
        with pytest.raises(dimple.ConfigurationError):
            db.tracked_table(Parent)
    finally:
        db.close()


def test_bookkeeping_tables_are_never_tracked(engine: Engine) -> None:
    md = MetaData()
    Table("notes", md, Column("id", String, primary_key=True))
    for t in schema.metadata.tables.values():
        t.to_metadata(md)
    assert sorted(resolve_tables(md)) == ["notes"]


def test_nothing_to_track(engine: Engine) -> None:
    with pytest.raises(dimple.ConfigurationError, match="no tables"):
        dimple.DimpleDb(engine, Base, exclude=[Base])
    with pytest.raises(dimple.ConfigurationError, match="cannot track"):
        dimple.DimpleDb(engine, [object()])
    with pytest.raises(dimple.ConfigurationError, match="Engine"):
        dimple.DimpleDb("sqlite://", Base)  # type: ignore[arg-type]


def test_mapper_plan_reads_attribute_keys_and_column_names() -> None:
    tracked = resolve_tables(Base)
    plan = mapper_plan(Todo.__mapper__, tracked)
    assert plan is not None
    assert plan.pk_key == "id" and plan.insert_names[0] == "id"
    assert ("label", "label_col") in plan.value_columns
    assert plan.by_key["label"][2] == "label_col" and "id" not in plan.by_key
    assert plan.names_json(("text", "label_col")) == '["text", "label_col"]'
    other = resolve_tables([Parent])
    assert mapper_plan(Todo.__mapper__, other) is None


def test_integer_columns_that_are_not_keys_are_fine(engine: Engine) -> None:
    t = Table("scores", MetaData(), Column("id", String(36), primary_key=True),
              Column("points", Integer, autoincrement=True))
    db = dimple.DimpleDb(engine, [t])
    db.close()
