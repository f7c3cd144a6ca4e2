"""Tests for ``dimpledb_sa.capture.core_dml``: capture of Core DML on tracked tables.

Core writes (``connection.execute(insert/update/delete(table))``) are captured only on an
engine that opts in with ``execution_options(dimpledb_sa_capture=True)``; without it they
bypass capture, as raw SQL always does. Covered: the opt-in and the per-statement opt-out,
rollbacks and savepoints, a statement inside an ORM session's transaction, an insert whose key
cannot be known, ORM writes recorded once with the opt-in on, and the library's own writes
under the sync lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from databases import Databases
from models import Base, Received, Todo, changes_of, log_count, make_engine
from sqlalchemy import Column, Engine, MetaData, String, Table, delete, insert, select, text, update
from sqlalchemy.orm import Session

import dimpledb_sa as dimple
from dimpledb_sa.core.signals import changes_committed


def test_core_statements_are_not_captured_by_default(db: dimple.DimpleDb,
                                                     engine: Engine) -> None:
    """Without the engine's opt-in, Core and raw SQL writes bypass capture (adopt() them)."""
    with engine.begin() as conn:
        conn.execute(insert(Todo.__table__).values(id="core", text="x"))
        conn.execute(update(Todo.__table__).values(text="y"))
    assert log_count(db) == 0
    assert db.adopt() == 1
    assert len(changes_of(db, Todo, "core")) == 7


@pytest.fixture(name="core_db")
def core_db_fixture(tmp_path: Path, database: str,
                    databases: Databases) -> Iterator[dimple.DimpleDb]:
    engine = (make_engine(tmp_path / "core.db") if database == "sqlite"
              else databases.engine(database, "core")).execution_options(
                  dimpledb_sa_capture=True)
    db = dimple.DimpleDb(engine, Base)
    db.create_all()
    yield db
    db.close()
    engine.dispose()


@pytest.fixture(name="core_received")
def core_received_fixture(core_db: dimple.DimpleDb) -> Iterator[Received]:
    r = Received()
    with changes_committed.connected_to(r, sender=core_db):
        yield r


def test_core_statements_are_captured(core_db: dimple.DimpleDb,
                                      core_received: Received) -> None:
    todo = Todo.__table__
    with core_db.engine.begin() as conn:
        conn.execute(insert(todo), [{"text": "a", "count": 0}, {"text": "b", "count": 2}])
        conn.execute(insert(todo).values(id="core-1", text="c"))
    assert len(core_received.calls) == 1  # after the commit, once
    with core_db.engine.begin() as conn:
        ids = dict(conn.execute(select(todo.c.text, todo.c.id)).all())  # type: ignore[arg-type]
        conn.execute(update(todo).where(todo.c.text != "c").values(count=todo.c.count + 1))
        conn.execute(delete(todo).where(todo.c.id == "core-1"))
    assert changes_of(core_db, Todo, ids["a"])[0] == ("id", None, ids["a"])
    assert ("origin", None, "server") in changes_of(core_db, Todo, ids["a"])
    assert changes_of(core_db, Todo, ids["b"])[-1] == ("count", 2, 3)
    assert changes_of(core_db, Todo, "core-1")[-1] == ("id", "core-1", None)
    assert len(core_received.calls) == 2
    assert core_received.calls[1]["tables"] == frozenset({"todo"})
    assert len(core_received.calls[1]["changes"]) == 3
    assert len({c.transaction_id for c in core_received.calls[1]["changes"]}) == 2


def test_core_rollback_and_savepoints(core_db: dimple.DimpleDb,
                                      core_received: Received) -> None:
    todo = Todo.__table__
    with core_db.engine.connect() as conn:
        conn.execute(insert(todo).values(id="gone", text="x"))
        conn.rollback()
        conn.execute(insert(todo).values(id="kept", text="x"))
        sp = conn.begin_nested()
        conn.execute(insert(todo).values(id="dropped", text="x"))
        sp.rollback()
        with conn.begin_nested():
            conn.execute(insert(todo).values(id="released", text="x"))
        conn.commit()
        assert core_received.calls == []  # not until the connection moves on
        conn.execute(select(todo.c.id)).all()
        assert len(core_received.calls) == 1
    assert {c.entity_id for c in core_received.calls[0]["changes"]} == {"kept", "released"}
    assert changes_of(core_db, Todo, "gone") == changes_of(core_db, Todo, "dropped") == []
    assert len(changes_of(core_db, Todo, "kept")) == 7
    assert len(changes_of(core_db, Todo, "released")) == 7


def test_core_statement_joins_the_session_transaction(core_db: dimple.DimpleDb,
                                                      core_received: Received) -> None:
    with Session(core_db.engine) as session:
        t = Todo(text="orm")
        session.add(t)
        session.flush()
        session.connection().execute(
            update(Todo.__table__).where(Todo.__table__.c.id == t.id).values(text="core"))
        session.commit()
        tid = t.id
    hist = core_db.history(Todo, tid)
    assert hist[-1].new_value == "core" and hist[-1].old_value == "orm"
    assert len({c.transaction_id for c in hist}) == 1
    assert len(core_received.calls) == 1


def test_core_writes_can_opt_out_and_raw_sql_is_not_captured(
        core_db: dimple.DimpleDb) -> None:
    todo = Todo.__table__
    with core_db.engine.begin() as conn:
        conn.execute(insert(todo).values(id="quiet", text="x")
                     .execution_options(dimpledb_sa_capture=False))
        quiet = conn.execution_options(dimpledb_sa_capture=False)
        quiet.execute(update(todo).values(text="y"))
        conn.execute(text("INSERT INTO todo (id, text, done, count) VALUES ('raw', 'r', false, 0)"))
        conn.exec_driver_sql("UPDATE todo SET text = 'z'")
    assert log_count(core_db) == 0


def test_core_insert_without_a_knowable_key_is_refused(tmp_path: Path) -> None:
    plain = Table("plain", MetaData(), Column("id", String, primary_key=True),
                  Column("v", String))
    engine = make_engine(tmp_path / "plain.db").execution_options(dimpledb_sa_capture=True)
    db = dimple.DimpleDb(engine, [plain])
    db.create_all()
    try:
        with pytest.raises(dimple.DimpleError, match="'plain'"), engine.begin() as conn:
            conn.execute(insert(plain).values(v="x"))
        with engine.connect() as conn:
            assert conn.execute(select(plain)).all() == []
    finally:
        db.close()
        engine.dispose()


def test_orm_writes_are_recorded_once_with_core_capture_on(core_db: dimple.DimpleDb) -> None:
    with Session(core_db.engine) as session:
        t = Todo(text="a")
        session.add(t)
        session.flush()
        t.text = "b"
        session.execute(insert(Todo), [{"id": "bulk", "text": "c"}])
        session.execute(update(Todo), [{"id": "bulk", "text": "d"}])
        session.execute(update(Todo).where(Todo.id == t.id).values(count=Todo.count + 1))
        session.commit()
        tid = t.id
    assert [a for a, _, _ in changes_of(core_db, Todo, tid)][7:] == ["text", "count"]
    assert [a for a, _, _ in changes_of(core_db, Todo, "bulk")][7:] == ["text"]
    assert log_count(core_db) == 7 + 2 + 7 + 1


def test_library_writes_under_the_sync_lock_are_not_captured(
        core_db: dimple.DimpleDb) -> None:
    with core_db.sync_lock, core_db.engine.begin() as conn:
        conn.execute(insert(Todo.__table__).values(id="merged", text="x"))
    assert log_count(core_db) == 0
