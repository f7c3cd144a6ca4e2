"""Models and helpers shared by the core tests (capture, bulk, values, tracking, clock, db).

``Base`` holds a to-do list (Python-side and server-side defaults, a deferred column, an
attribute whose key differs from its column name), a parent/child pair with an
``all, delete-orphan`` cascade, and ``Kinds``, one column of every supported type.
Fixtures ``engine`` (a SQLite file) and ``db`` (a ``DimpleDb`` tracking ``Base`` on it,
tables created): import ``engine_fixture`` and ``db_fixture`` into a test module.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Enum,
    Float,
    ForeignKey,
    LargeBinary,
    Numeric,
    String,
    Text,
    Uuid,
    create_engine,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import dimpledb_sa as dimple


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)
    count: Mapped[int] = mapped_column(default=0)
    note: Mapped[str | None] = mapped_column(Text, deferred=True)
    origin: Mapped[str] = mapped_column(String(20), server_default=text("'server'"))
    label: Mapped[str | None] = mapped_column("label_col", String(40))


class Parent(Base):
    __tablename__ = "parent"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    name: Mapped[str]
    children: Mapped[list[Child]] = relationship(
        back_populates="parent", cascade="all, delete-orphan", order_by="Child.name"
    )


class Child(Base):
    __tablename__ = "child"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    name: Mapped[str]
    parent_id: Mapped[str] = mapped_column(ForeignKey("parent.id"))
    parent: Mapped[Parent] = relationship(back_populates="children")


class Color(enum.Enum):
    RED = "r"
    GREEN = "g"


class Kinds(Base):
    """One column per supported type; the key is a ``uuid.UUID``."""

    __tablename__ = "kinds"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    s: Mapped[str | None] = mapped_column(String(200))
    t: Mapped[str | None] = mapped_column(Text)
    i: Mapped[int | None]
    bi: Mapped[int | None] = mapped_column(BigInteger)
    f: Mapped[float | None] = mapped_column(Float)
    n: Mapped[decimal.Decimal | None] = mapped_column(Numeric(12, 2))
    b: Mapped[bool | None]
    d: Mapped[dt.date | None]
    dtn: Mapped[dt.datetime | None]
    dta: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    tm: Mapped[dt.time | None]
    bin: Mapped[bytes | None] = mapped_column(LargeBinary)
    js: Mapped[Any] = mapped_column(JSON, nullable=True)
    en: Mapped[Color | None] = mapped_column(Enum(Color))
    es: Mapped[str | None] = mapped_column(Enum("low", "high", name="level"))
    u1: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    u2: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))


MODELS = (Todo, Parent, Child, Kinds)


def make_engine(path: Path) -> Engine:
    return create_engine(f"sqlite:///{path}")


@pytest.fixture(name="engine")
def engine_fixture(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(tmp_path / "app.db")
    yield eng
    eng.dispose()


@pytest.fixture(name="db")
def db_fixture(engine: Engine) -> Iterator[dimple.DimpleDb]:
    d = dimple.DimpleDb(engine, Base)
    d.create_all()
    yield d
    d.close()


class Received:
    """Collects ``changes_committed`` sends for one database."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, sender: Any, **kw: Any) -> None:
        self.calls.append({"sender": sender, **kw})


def changes_of(db: dimple.DimpleDb, model: Any, entity_id: Any) -> list[tuple[str, Any, Any]]:
    """(attribute, old, new) of every logged change of one entity, oldest first."""
    return [(c.attribute, c.old_value, c.new_value) for c in db.history(model, entity_id)]


def log_count(db: dimple.DimpleDb) -> int:
    """How many per-attribute changes the log holds."""
    from dimpledb_sa.core import changelog

    with db.engine.connect() as conn:
        rows = changelog.all_rows(conn)
    return len(changelog.expand_all(rows))


def tx_count(db: dimple.DimpleDb) -> int:
    from sqlalchemy import func, select

    from dimpledb_sa.core import schema

    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.transactions))
                   .scalar_one())
