"""The models the tests share, one set per ``DeclarativeBase``, and small helpers on them.

``Base``, the capture tests' schema (``test_unit_of_work``, ``test_statements``,
``test_core_dml``, ``test_values``, ``test_tracking``, ``test_db``): a to-do list (Python-side
and server-side defaults, a deferred column, an attribute whose key differs from its column
name), a parent/child pair with an ``all, delete-orphan`` cascade, and ``Kinds``, one column
of every supported type.

``LiveBase``, the live-query and watcher tests' schema (``test_query``, ``test_tables``,
``test_watch``, which import its classes under their short names ``Base``, ``Todo`` and
``Note``): a to-do list with its todos (a relationship both ways) and an unrelated ``Note``
table; ``live_writer.py``, the second process of the watcher tests, writes ``LiveTodo``.
:class:`Recorder` is a subscription callback a test can wait on.

``SyncBase``, the sync tests' schema (``test_run``, ``test_run_faults``, ``test_merge``,
``test_convergence``; the devices that track it are in ``syncworld.py``): notes, a
folder/item pair with a cascade, and tags; ``OldSyncBase`` is an older version of the same
tables that lacks ``note.rank`` and the ``tag`` table (for held changes).

The fixtures on these models (``models``, ``engine``, ``db``, ``devs``) are in ``conftest.py``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import dimpledb_sa as dimple

# --------------------------------------------------------------------------- capture: Base


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



def make_engine(path: Path) -> Engine:
    return create_engine(f"sqlite:///{path}")


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
    from dimpledb_sa.core import changelog

    with db.engine.connect() as conn:  # folded and pending
        return len(changelog.all_transactions(conn))


# --------------------------------------------------------------------------- live: LiveBase

WAIT = 20.0  # generous: waiting for an event, never a speed assertion


class LiveBase(DeclarativeBase):
    pass


class TodoList(LiveBase):
    __tablename__ = "todo_list"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    name: Mapped[str]
    todos: Mapped[list[LiveTodo]] = relationship(back_populates="list")


class LiveTodo(LiveBase):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)
    list_id: Mapped[str | None] = mapped_column(ForeignKey("todo_list.id"))
    list: Mapped[TodoList | None] = relationship(back_populates="todos")


class LiveNote(LiveBase):
    __tablename__ = "note"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    body: Mapped[str]


class Recorder:
    """A callback that records what it got and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.threads: list[int] = []
        self._cond = threading.Condition()

    def __call__(self, rows: list[Any]) -> None:
        with self._cond:
            self.calls.append(list(rows))
            self.threads.append(threading.get_ident())
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[list[Any]]], bool], timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: pred(self.calls), timeout)

    @property
    def last(self) -> list[Any]:
        with self._cond:
            return self.calls[-1]


def add(engine: Engine, *objs: Any) -> list[str]:
    """Commit ``objs`` in a plain ORM session; returns their ids."""
    with Session(engine) as s:
        s.add_all(objs)
        s.commit()
        return [o.id for o in objs]


# --------------------------------------------------------------------------- sync: SyncBase


class SyncBase(DeclarativeBase):
    pass


class Note(SyncBase):
    __tablename__ = "note"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    title: Mapped[str]
    body: Mapped[str | None]
    done: Mapped[bool] = mapped_column(default=False)
    rank: Mapped[int | None]


class Folder(SyncBase):
    __tablename__ = "folder"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    name: Mapped[str]
    items: Mapped[list[Item]] = relationship(back_populates="folder",
                                             cascade="all, delete-orphan")


class Item(SyncBase):
    __tablename__ = "item"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    folder_id: Mapped[str] = mapped_column(ForeignKey("folder.id"))
    label: Mapped[str]
    folder: Mapped[Folder] = relationship(back_populates="items")


class Tag(SyncBase):
    __tablename__ = "tag"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    word: Mapped[str]


class OldSyncBase(DeclarativeBase):
    pass


class OldNote(OldSyncBase):
    """``note`` as an older version of the app had it: no ``rank``."""

    __tablename__ = "note"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    title: Mapped[str]
    body: Mapped[str | None]
    done: Mapped[bool] = mapped_column(default=False)


class OldFolder(OldSyncBase):
    __tablename__ = "folder"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    name: Mapped[str]


class OldItem(OldSyncBase):
    __tablename__ = "item"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    folder_id: Mapped[str] = mapped_column(ForeignKey("folder.id"))
    label: Mapped[str]


# --------------------------------------------------------------------------- background sync
# test_background, test_background_signals: one table of short texts

class TextBase(DeclarativeBase):
    pass


class TextNote(TextBase):
    __tablename__ = "note"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
