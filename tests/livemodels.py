"""Models and helpers shared by the live-query and watcher tests (``test_live``, ``test_watch``).

``Base`` holds a to-do list with its todos (a relationship both ways) and an unrelated
``Note`` table; ``live_writer.py``, the second process of the watcher tests, writes the same
``todo`` table. :class:`Recorder` is a subscription callback a test can wait on. Fixtures
``engine`` (a SQLite file) and ``db`` (a ``DimpleDb`` tracking ``Base`` on it, tables
created, live queries and watchers closed afterwards): import ``engine_fixture`` and
``db_fixture`` into a test module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import dimpledb_sa as dimple

__all__ = ["WAIT", "Base", "Note", "Recorder", "Todo", "TodoList", "add", "db_fixture",
           "engine_fixture", "make_engine"]

WAIT = 20.0  # generous: waiting for an event, never a speed assertion


class Base(DeclarativeBase):
    pass


class TodoList(Base):
    __tablename__ = "todo_list"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    name: Mapped[str]
    todos: Mapped[list[Todo]] = relationship(back_populates="list")


class Todo(Base):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)
    list_id: Mapped[str | None] = mapped_column(ForeignKey("todo_list.id"))
    list: Mapped[TodoList | None] = relationship(back_populates="todos")


class Note(Base):
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


def add(engine: Engine, *objs: Any) -> list[str]:
    with Session(engine) as s:
        s.add_all(objs)
        s.commit()
        return [o.id for o in objs]
