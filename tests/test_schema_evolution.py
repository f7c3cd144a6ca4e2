"""Tests for devices on different schema versions: held changes (``dimpledb_sa.sync.merge``)
and ``alembic_ext.replay``.

A newer device adds a table and a column and writes to them; an older device keeps those
changes held (counted in its sync report) while it goes on syncing everything else, and
after its upgrade (Alembic operations plus ``alembic_ext.replay_held``, or plain DDL and the
next ``sync()``) holds exactly the newer device's rows. A column renamed or dropped by a
migration crashes nothing: older devices' changes to it stay held (and in the log), and
``alembic_ext.rename_held`` carries a renamed column's changes over, last write winning
across both names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from databases import Databases
from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import alembic_ext
import dimpledb_sa as dimple
from dimpledb_sa.core import schema

__all__: list[str] = []


class V1(DeclarativeBase):
    pass


class TodoV1(V1):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)


class V2(DeclarativeBase):
    """V1 plus ``todo.priority`` and the ``tag`` table."""


class TodoV2(V2):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)
    priority: Mapped[int | None]


class TagV2(V2):
    __tablename__ = "tag"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    todo_id: Mapped[str] = mapped_column(ForeignKey("todo.id"))
    word: Mapped[str]


class V3(DeclarativeBase):
    """V1 with ``todo.text`` renamed to ``title`` and ``todo.done`` dropped."""


class TodoV3(V3):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    title: Mapped[str | None]


class Device:
    """One database (a SQLite file with foreign keys on, or a PostgreSQL schema) with a
    ``DimpleDb`` on the shared remote."""

    def __init__(self, engine: Engine, remote: Path, models: type[DeclarativeBase]) -> None:
        self.engine = engine
        self.remote = remote
        self.db = self.open(models)
        self.db.create_all()

    def open(self, models: type[DeclarativeBase]) -> dimple.DimpleDb:
        self.db = dimple.DimpleDb(self.engine, models, remote=str(self.remote),
                                  encryption=False)
        return self.db

    def upgrade(self, models: type[DeclarativeBase], migrate: Any) -> int:
        """Close, run ``migrate(op, conn)`` in one transaction, reopen on ``models``.
        Returns what ``migrate`` returned."""
        self.db.close()
        with self.engine.begin() as conn:
            result = migrate(Operations(MigrationContext.configure(conn)), conn)
        self.open(models)
        return int(result or 0)

    def add(self, *objs: Any) -> None:
        with self.db.sessionmaker(expire_on_commit=False)() as s:
            s.add_all(objs)
            s.commit()

    def edit(self, model: type[Any], entity_id: str, **values: Any) -> None:
        with self.db.sessionmaker()() as s:
            obj = s.get(model, entity_id)
            assert obj is not None
            for k, v in values.items():
                setattr(obj, k, v)
            s.commit()

    def rows(self, name: str) -> list[tuple[Any, ...]]:
        """The table's rows as stored, every column, sorted by key."""
        with self.engine.connect() as conn:
            table = Table(name, MetaData(), autoload_with=conn)
            return sorted(tuple(r) for r in conn.execute(select(table)))

    def row(self, name: str, entity_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            table = Table(name, MetaData(), autoload_with=conn)
            found = conn.execute(select(table).where(table.c.id == entity_id)).mappings()
            return dict(found.one())

    def held(self) -> set[tuple[str, str, str]]:
        with self.engine.connect() as conn:
            h = schema.held
            return {(t, e, a) for t, e, a in conn.execute(
                select(h.c.entity_type, h.c.entity_id, h.c.attribute))}

    def close(self) -> None:
        self.db.close()
        self.engine.dispose()


@pytest.fixture
def devices(tmp_path: Path, database: str, databases: Databases) -> Iterator[Any]:
    made: list[Device] = []

    def make(name: str, models: type[DeclarativeBase]) -> Device:
        d = Device(databases.engine(database, name), tmp_path / "remote", models)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def _to_v2_with_alembic(op: Operations, conn: Any) -> int:
    """The migration an Alembic user would write, then what ``env.py`` does after it."""
    op.add_column("todo", Column("priority", Integer, nullable=True))
    op.create_table("tag",
                    Column("id", String, primary_key=True),
                    Column("todo_id", String, ForeignKey("todo.id"), nullable=False),
                    Column("word", String, nullable=False))
    return alembic_ext.replay_held(conn, V2.metadata)


def _to_v2_with_ddl(op: Operations, conn: Any) -> int:
    conn.exec_driver_sql("ALTER TABLE todo ADD COLUMN priority INTEGER")
    V2.metadata.tables["tag"].create(conn)
    return 0


@pytest.mark.parametrize("upgrade", [_to_v2_with_alembic, _to_v2_with_ddl],
                         ids=["alembic_ext", "ddl-then-sync"])
def test_older_device_holds_then_converges_after_upgrade(devices: Any, upgrade: Any) -> None:
    old: Device = devices("old", V1)
    new: Device = devices("new", V2)
    a, b = TodoV1(id=dimple.new_id(), text="a"), TodoV1(id=dimple.new_id(), text="b")
    old.add(a, b)
    old.db.sync()
    new.db.sync()

    # the newer device writes to its new column and its new table, and to old columns
    c = TodoV2(id=dimple.new_id(), text="c", priority=2)
    new.add(c)
    new.add(TagV2(id=dimple.new_id(), todo_id=a.id, word="urgent"),
            TagV2(id=dimple.new_id(), todo_id=c.id, word="later"))
    new.edit(TodoV2, a.id, priority=1)
    new.edit(TodoV2, b.id, text="b, edited on the newer device")
    new.db.sync()

    report = old.db.sync()
    assert report.pulled == 4 and report.errors == {}
    assert report.applied > 0 and report.held > 0
    assert old.row("todo", b.id)["text"] == "b, edited on the newer device"
    assert old.row("todo", c.id) == {"id": c.id, "text": "c", "done": False}
    held = old.held()
    assert {(t, a_) for t, _, a_ in held} == {("todo", "priority"), ("tag", "id"),
                                             ("tag", "todo_id"), ("tag", "word")}

    # the older device keeps syncing everything else, its held changes still counted
    old.edit(TodoV1, a.id, done=True)
    report = old.db.sync()
    assert report.pushed == 1 and report.held == len(held)
    new.db.sync()
    assert new.row("todo", a.id)["done"] is True or new.row("todo", a.id)["done"] == 1

    replayed = old.upgrade(V2, upgrade)
    if upgrade is _to_v2_with_alembic:
        assert replayed == 2 + 2 * 3  # a's and c's priority, two tags of 3 columns
        assert old.held() == set()
    report = old.db.sync()
    assert report.held == 0 and report.errors == {}
    new.db.sync()
    for table in ("todo", "tag"):
        assert old.rows(table) == new.rows(table)
    assert len(old.rows("tag")) == 2
    assert old.row("todo", a.id)["priority"] == 1

    # after the upgrade both devices write the new column both ways
    old.edit(TodoV2, b.id, priority=5)
    old.db.sync()
    new.db.sync()
    assert new.row("todo", b.id)["priority"] == 5


def _to_v3(op: Operations, conn: Any) -> int:
    # a renamed column takes older devices' inserts without it: nullable (or a default)
    with op.batch_alter_table("todo") as batch:
        batch.alter_column("text", new_column_name="title", existing_type=String,
                           nullable=True)
        batch.drop_column("done")
    renamed = alembic_ext.rename_held(conn, "todo", "text", "title")
    alembic_ext.replay_held(conn, V3.metadata)
    return renamed


def test_renamed_and_dropped_columns_stay_held_and_crash_nothing(devices: Any) -> None:
    old: Device = devices("old", V1)
    new: Device = devices("new", V1)
    a, b = TodoV1(id=dimple.new_id(), text="a"), TodoV1(id=dimple.new_id(), text="b")
    old.add(a, b)
    old.db.sync()
    new.db.sync()
    assert new.upgrade(V3, _to_v3) == 2  # the two inserts' ``text`` changes

    # the migrated device edits the renamed column; the old one sees an unknown column
    new.edit(TodoV3, a.id, title="a, titled on the migrated device")
    new.db.sync()
    report = old.db.sync()
    assert report.errors == {} and report.held == 1
    assert old.held() == {("todo", a.id, "title")}

    # the old device (having seen that edit) writes both columns and inserts a row
    old.edit(TodoV1, a.id, text="a, edited later on the old device")
    old.edit(TodoV1, b.id, done=True)
    d = TodoV1(id=dimple.new_id(), text="d")
    old.add(d)
    old.db.sync()
    report = new.db.sync()  # nothing crashes: unknown columns are held
    assert report.errors == {} and report.pulled == 3
    assert report.held > 0
    assert new.row("todo", d.id) == {"id": d.id, "title": None}  # inserted without them
    assert new.row("todo", a.id)["title"] == "a, titled on the migrated device"
    held = new.held()
    assert ("todo", b.id, "done") in held and ("todo", a.id, "text") in held
    again = new.db.sync()
    assert again.held == report.held  # still held, still counted, still no error

    # dropped: its changes stay in the log for good
    assert [ch.attribute for ch in new.db.history(TodoV3, b.id)][-1] == "done"

    # renamed: re-labelling the late arrivals applies them, last write wins across names
    with new.engine.begin() as conn:
        assert alembic_ext.rename_held(conn, "todo", "text", "title") == 2
        assert alembic_ext.rename_held(conn, "todo", "text", "title") == 0  # idempotent
    assert new.db.replay_held() == 2
    assert new.row("todo", a.id)["title"] == "a, edited later on the old device"
    assert new.row("todo", d.id)["title"] == "d"
    assert {attr for _, _, attr in new.held()} == {"done"}
    assert new.db.sync().errors == {}


class V4(DeclarativeBase):
    """V1 with ``todo.text`` renamed to ``title``, still NOT NULL without a default."""


class TodoV4(V4):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    title: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)


def test_insert_lacking_a_required_renamed_column_is_held(devices: Any) -> None:
    old: Device = devices("old", V1)
    new: Device = devices("new", V1)

    def to_v4(op: Operations, conn: Any) -> int:
        op.alter_column("todo", "text", new_column_name="title")
        return 0

    new.upgrade(V4, to_v4)
    d = TodoV1(id=dimple.new_id(), text="d")
    old.add(d)
    old.db.sync()
    report = new.db.sync()
    assert report.errors == {} and report.held > 0
    with new.engine.begin() as conn:
        alembic_ext.rename_held(conn, "todo", "text", "title")
    new.db.replay_held()
    assert new.row("todo", d.id)["title"] == "d"
