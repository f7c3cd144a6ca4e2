"""Tests for ``dimpledb_sa.capture.adopt`` (``db.adopt()``): tracking an existing database.

A database filled with plain SQL before tracking began ("an app that has run for a year")
is adopted: every untracked row gets an insert in the log, a second call adopts nothing,
rows that already have history are left alone, batches keep large tables flat, and the
adopted rows sync to an empty device, which ends with exactly the same rows.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from databases import Databases
from sqlalchemy import (
    Engine,
    ForeignKey,
    MetaData,
    Numeric,
    Table,
    Uuid,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa.capture.adopt import adopt
from dimpledb_sa.core import changelog
from dimpledb_sa.core.signals import changes_committed

__all__: list[str] = []


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "project"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    name: Mapped[str]
    budget: Mapped[decimal.Decimal | None] = mapped_column(Numeric(10, 2))
    ref: Mapped[uuid.UUID] = mapped_column(Uuid, default=uuid.uuid4)


class Account(Base):
    """A ``uuid.UUID`` primary key (``Uuid(as_uuid=True)``)."""

    __tablename__ = "account"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner: Mapped[str]


class Task(Base):
    __tablename__ = "task"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("project.id"))
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)
    due: Mapped[dt.datetime | None]


PROJECT: Table = Base.metadata.tables["project"]
TASK: Table = Base.metadata.tables["task"]
ACCOUNT: Table = Base.metadata.tables["account"]


def _engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _fk(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    return engine


def _prefill(engine: Engine, projects: int, tasks_each: int) -> None:
    """The app's tables and rows, written with plain SQL before any tracking."""
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        for p in range(projects):
            pid = dimple.new_id()
            conn.execute(insert(PROJECT).values(
                id=pid, name=f"project {p}", ref=uuid.uuid4(),
                budget=None if p % 3 else decimal.Decimal(f"{p}.50")))
            conn.execute(insert(TASK), [
                {"id": dimple.new_id(), "project_id": pid, "text": f"task {p}.{t}",
                 "done": t % 2 == 0,
                 "due": dt.datetime(2024, 1, 1 + t % 28, 9, 30) if t % 4 else None}
                for t in range(tasks_each)])


def _rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the app's tables as the database stores them, sorted."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name in ("project", "task", "account"):
            table = Table(name, MetaData(), autoload_with=conn)
            out[name] = sorted(tuple(r) for r in conn.execute(select(table)))
    return out


def _log_size(engine: Engine) -> tuple[int, int]:
    """(packed change rows, transactions) in the log."""
    with engine.connect() as conn:
        changes = len(changelog.all_rows(conn))
        txs = len(changelog.all_transactions(conn))  # folded and pending
    return changes, txs


@pytest.fixture
def dbs(tmp_path: Path, database: str, databases: Databases
        ) -> Iterator[tuple[dimple.DimpleDb, dimple.DimpleDb]]:
    """A pre-filled device ``old`` (tracking just added) and an empty device ``new``."""
    remote = tmp_path / "remote"
    old_engine, new_engine = (databases.engine(database, n) for n in ("old", "new"))
    _prefill(old_engine, projects=6, tasks_each=9)
    old = dimple.DimpleDb(old_engine, Base, remote=str(remote), encryption=False)
    old.create_all()  # the bookkeeping tables; the app's tables exist already
    new = dimple.DimpleDb(new_engine, Base, remote=str(remote), encryption=False)
    new.create_all()
    yield old, new
    old.close()
    new.close()
    old_engine.dispose()
    new_engine.dispose()


def test_adopt_prefilled_database_and_sync_to_an_empty_one(
        dbs: tuple[dimple.DimpleDb, dimple.DimpleDb]) -> None:
    old, new = dbs
    before = _rows(old.engine)
    assert old.adopt() == 6 + 6 * 9
    assert old.adopt() == 0  # a second call records nothing
    assert _rows(old.engine) == before  # adoption never changes the rows themselves

    first = before["task"][0]
    history = old.history(Task, first[0])
    assert [(c.attribute, c.old_value) for c in history] == [
        ("id", None), ("project_id", None), ("text", None), ("done", None), ("due", None)]
    assert history[0].new_value == first[0]
    assert {c.author for c in history} == {old.author_id}

    assert old.sync().pushed >= 1
    report = new.sync()
    assert report.pulled >= 1 and report.held == 0
    assert _rows(new.engine) == before

    # adopted rows are ordinary tracked rows: an edit on the new device comes back
    with new.sessionmaker()() as s:
        task = s.get(Task, first[0])
        assert task is not None and task.text == "task 0.0"
        task.text = "edited on the new device"
        s.commit()
    new.sync()
    old.sync()
    assert _rows(old.engine) == _rows(new.engine)
    assert old.adopt() == 0 and new.adopt() == 0


def test_rows_with_history_are_left_alone(
        dbs: tuple[dimple.DimpleDb, dimple.DimpleDb]) -> None:
    old, _ = dbs
    with old.sessionmaker()() as s:
        project = s.execute(select(Project).limit(1)).scalar_one()
        project_id = project.id
        project.name = "renamed after tracking began"  # this row now has history
        s.add(Task(project_id=project_id, text="written after tracking began"))
        s.commit()
    changes, txs = _log_size(old.engine)
    assert (changes, txs) == (2, 1)
    assert old.adopt() == 6 + 6 * 9 - 1
    # the edited project kept its one update change: no insert was recorded for it
    history = old.history(Project, project_id)
    assert [c.attribute for c in history] == ["name"]
    assert old.adopt() == 0


def test_adopt_in_batches_parents_first(tmp_path: Path,
                                        dbs: tuple[dimple.DimpleDb, dimple.DimpleDb]) -> None:
    old, new = dbs
    got: list[dict[str, Any]] = []

    def receiver(sender: dimple.DimpleDb, **kw: Any) -> None:
        got.append(kw)

    with changes_committed.connected_to(receiver, sender=old):
        assert adopt(old.replica, batch_size=4) == 60
        assert adopt(old.replica, batch_size=4) == 0
    # one changes_committed for the whole adoption, with every adopted insert
    assert len(got) == 1
    assert got[0]["origin"] == "local"
    assert got[0]["tables"] == frozenset({"project", "task"})
    assert sum(1 for c in got[0]["changes"] if c.attribute == "id") == 60
    # one log transaction per batch (two for the projects, fourteen for the tasks)
    changes, txs = _log_size(old.engine)
    assert (changes, txs) == (60, 2 + 14)
    with old.engine.connect() as conn:
        order = [r[2] for r in sorted(changelog.all_rows(conn))]
    assert order == ["project"] * 6 + ["task"] * 54  # parents first

    old.sync()
    new.sync()  # foreign keys are on: the children need their parents
    assert _rows(new.engine) == _rows(old.engine)


def test_adopt_rejects_a_bad_batch_size(dbs: tuple[dimple.DimpleDb, dimple.DimpleDb]) -> None:
    with pytest.raises(ValueError):
        adopt(dbs[0].replica, batch_size=0)


def test_adopt_skips_tracked_tables_missing_from_the_database(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "partial.db")
    PROJECT.create(engine)  # the app has not created ``task`` yet
    with engine.begin() as conn:
        conn.execute(insert(PROJECT).values(id=dimple.new_id(), name="only one",
                                                      ref=uuid.uuid4()))
    db = dimple.DimpleDb(engine, Base)
    try:
        db.create_all(models=False)
        assert db.adopt() == 1
        assert db.adopt() == 0
    finally:
        db.close()
        engine.dispose()


def test_adopted_uuid_keys_sync(dbs: tuple[dimple.DimpleDb, dimple.DimpleDb]) -> None:
    """A ``uuid.UUID`` key (``Uuid(as_uuid=True)``): adopted under its canonical string."""
    old, new = dbs
    with old.engine.begin() as conn:
        conn.execute(insert(ACCOUNT), [{"id": uuid.uuid4(), "owner": f"o{i}"}
                                                 for i in range(3)])
    assert old.adopt() == 60 + 3
    old.sync()
    new.sync()
    assert _rows(new.engine) == _rows(old.engine)
