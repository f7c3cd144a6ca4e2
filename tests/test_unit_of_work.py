"""Tests for ``dimpledb_sa.capture.unit_of_work``: change capture through the unit of work.

Inserts, updates, deletes, cascades, transactions, savepoints, the kinds of session that are
captured (and the engines that are not: the dispatch of ``dimpledb_sa.capture.listeners``),
the signal, crash safety, large flushes and mapped inheritance. Core DML is tested in
``test_core_dml``, ORM-enabled statements in ``test_statements``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from models import (
    Base,
    Child,
    Parent,
    Received,
    Todo,
    changes_of,
    log_count,
    make_engine,
    tx_count,
)
from sqlalchemy import (
    Engine,
    ForeignKey,
    event,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

import dimpledb_sa as dimple
from dimpledb_sa.core.signals import changes_committed

# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def received(db: dimple.DimpleDb) -> Iterator[Received]:
    r = Received()
    with changes_committed.connected_to(r, sender=db):
        yield r


def add_todo(engine: Engine, **kw: Any) -> str:
    with Session(engine) as session:
        t = Todo(**{"text": "milk", **kw})
        session.add(t)
        session.commit()
        return t.id


# ----------------------------------------------------------------------------- inserts


def test_insert_records_every_column_key_first(db: dimple.DimpleDb, engine: Engine) -> None:
    tid = add_todo(engine, label="x")
    got = changes_of(db, Todo, tid)
    assert got[0] == ("id", None, tid)
    assert dict((a, (o, n)) for a, o, n in got) == {
        "id": (None, tid),
        "text": (None, "milk"),
        "done": (None, False),  # Python-side default
        "count": (None, 0),
        "note": (None, None),  # deferred, never set
        "origin": (None, "server"),  # server-side default, read back
        "label_col": (None, "x"),  # the column's name, not the attribute's key
    }
    hist = db.history(Todo, tid)
    assert len({c.transaction_id for c in hist}) == 1
    assert all(c.author == db.author_id and c.entity_type == "todo" for c in hist)
    ids = [c.id for c in hist]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_insert_with_explicit_key_and_sql_default_expression(db: dimple.DimpleDb,
                                                             engine: Engine) -> None:
    with Session(engine) as session:
        t = Todo(id="fixed-id", text="a", origin="client")
        session.add(t)
        session.commit()
    got = dict((a, n) for a, _, n in changes_of(db, Todo, "fixed-id"))
    assert got["id"] == "fixed-id" and got["origin"] == "client"


def test_history_of_an_object(db: dimple.DimpleDb, engine: Engine) -> None:
    with Session(engine) as session:
        t = Todo(text="a")
        session.add(t)
        session.commit()
        assert db.history(t)[0].attribute == "id"


# ----------------------------------------------------------------------------- updates


def test_update_records_only_changed_attributes(db: dimple.DimpleDb, engine: Engine) -> None:
    tid = add_todo(engine)
    with Session(engine) as session:
        t = session.get_one(Todo, tid)
        t.text = "oat milk"
        t.done = False  # unchanged value
        t.count = 0  # unchanged value
        session.commit()
    assert changes_of(db, Todo, tid)[-1:] == [("text", "milk", "oat milk")]
    assert len(changes_of(db, Todo, tid)) == 8


def test_sql_expressions_set_on_expired_or_new_attributes_record_the_stored_values(
        db: dimple.DimpleDb, engine: Engine) -> None:
    """An attribute set to a SQL expression records the value the database stored, also
    when it was expired before it was set (the flush then leaves the expression on it) and
    on a new row."""
    tid = add_todo(engine)
    with Session(engine) as session:
        t = session.get_one(Todo, tid)
        session.expire(t, ["text"])
        t.text = literal("oat milk")
        session.commit()  # the commit expires every attribute
        t.text = literal("soy") + literal(" milk")
        session.commit()
        new = Todo(text=literal("rice milk"))
        session.add(new)
        session.commit()
        new_id = new.id
    assert changes_of(db, Todo, tid)[-2:] == [("text", "milk", "oat milk"),
                                             ("text", "oat milk", "soy milk")]
    assert ("text", None, "rice milk") in changes_of(db, Todo, new_id)


def test_update_several_attributes_in_column_order(db: dimple.DimpleDb,
                                                   engine: Engine) -> None:
    tid = add_todo(engine)
    with Session(engine) as session:
        t = session.get_one(Todo, tid)
        t.label = "l"
        t.count = 3
        t.text = "t"
        session.commit()
    assert changes_of(db, Todo, tid)[7:] == [
        ("text", "milk", "t"), ("count", 0, 3), ("label_col", None, "l")]
    hist = db.history(Todo, tid)[7:]
    assert len({c.transaction_id for c in hist}) == 1


def test_update_of_expired_object_without_reading(db: dimple.DimpleDb, engine: Engine) -> None:
    tid = add_todo(engine)
    with Session(engine) as session:
        t = session.get_one(Todo, tid)
        session.expire(t)
        t.text = "expired"  # set without loading: the old value was never seen
        t.count = 0  # and one that does not change
        session.commit()
    assert changes_of(db, Todo, tid)[7:] == [("text", "milk", "expired")]


def test_update_after_commit_expiry(db: dimple.DimpleDb, engine: Engine) -> None:
    with Session(engine) as session:
        t = Todo(text="a")
        session.add(t)
        session.commit()  # expires t
        t.text = "b"
        session.commit()
        t.done = True
        session.commit()
        tid = t.id
    assert changes_of(db, Todo, tid)[7:] == [("text", "a", "b"), ("done", False, True)]


def test_update_of_deferred_column(db: dimple.DimpleDb, engine: Engine) -> None:
    tid = add_todo(engine, note="first")
    with Session(engine) as session:
        t = session.get_one(Todo, tid)
        assert "note" not in t.__dict__
        t.note = "second"
        session.commit()
    assert changes_of(db, Todo, tid)[7:] == [("note", "first", "second")]


def test_update_with_sql_expression_value(db: dimple.DimpleDb, engine: Engine) -> None:
    tid = add_todo(engine, count=4)
    with Session(engine) as session:
        t = session.get_one(Todo, tid)
        t.count = Todo.count + 1  # type: ignore[assignment]
        session.commit()
        assert t.count == 5
    assert changes_of(db, Todo, tid)[7:] == [("count", 4, 5)]


def test_setting_same_value_records_nothing(db: dimple.DimpleDb, engine: Engine,
                                            received: Received) -> None:
    tid = add_todo(engine)
    before_tx, before_changes = tx_count(db), log_count(db)
    received.calls.clear()
    with Session(engine) as session:
        t = session.get_one(Todo, tid)
        t.text = "milk"
        t.done = False
        session.flush()
        session.commit()
    assert (tx_count(db), log_count(db)) == (before_tx, before_changes)
    assert received.calls == []


def test_changing_then_restoring_in_one_transaction_records_each_flush(
        db: dimple.DimpleDb, engine: Engine) -> None:
    tid = add_todo(engine)
    with Session(engine) as session:
        t = session.get_one(Todo, tid)
        t.text = "other"
        t.text = "milk"  # back to the loaded value before any flush
        session.commit()
    assert len(changes_of(db, Todo, tid)) == 7


def test_changing_the_key_is_refused(db: dimple.DimpleDb, engine: Engine) -> None:
    tid = add_todo(engine)
    with Session(engine) as session:
        t = session.get_one(Todo, tid)
        t.id = "another"
        with pytest.raises(dimple.DimpleError, match="primary key"):
            session.commit()
        session.rollback()
    with Session(engine) as session:
        assert session.get(Todo, tid) is not None


# ----------------------------------------------------------------------------- deletes


def test_delete(db: dimple.DimpleDb, engine: Engine) -> None:
    tid = add_todo(engine)
    with Session(engine) as session:
        session.delete(session.get_one(Todo, tid))
        session.commit()
    assert changes_of(db, Todo, tid)[-1] == ("id", tid, None)


def test_delete_of_expired_object(db: dimple.DimpleDb, engine: Engine) -> None:
    with Session(engine) as session:
        t = Todo(text="a")
        session.add(t)
        session.commit()
        tid = t.id
        session.delete(t)  # t is expired: nothing loaded
        session.commit()
    assert changes_of(db, Todo, tid)[-1] == ("id", tid, None)


def make_family(engine: Engine) -> tuple[str, list[str]]:
    with Session(engine) as session:
        p = Parent(name="p", children=[Child(name="a"), Child(name="b"), Child(name="c")])
        session.add(p)
        session.commit()
        return p.id, [c.id for c in p.children]


def test_insert_of_related_objects(db: dimple.DimpleDb, engine: Engine) -> None:
    pid, kids = make_family(engine)
    got = changes_of(db, Child, kids[0])
    assert ("parent_id", None, pid) in got and ("name", None, "a") in got


def test_cascade_delete_records_children(db: dimple.DimpleDb, engine: Engine) -> None:
    pid, kids = make_family(engine)
    with Session(engine) as session:
        session.delete(session.get_one(Parent, pid))
        session.commit()
    assert changes_of(db, Parent, pid)[-1] == ("id", pid, None)
    tx = db.history(Parent, pid)[-1].transaction_id
    for k in kids:
        last = db.history(Child, k)[-1]
        assert (last.attribute, last.old_value, last.new_value) == ("id", k, None)
        assert last.transaction_id == tx


def test_orphan_removal_records_delete(db: dimple.DimpleDb, engine: Engine) -> None:
    pid, kids = make_family(engine)
    with Session(engine) as session:
        p = session.get_one(Parent, pid)
        gone = p.children.pop(0)
        p.children.append(Child(name="d"))
        session.commit()
        assert gone.id == kids[0]
        new_kid = p.children[-1].id
    assert changes_of(db, Child, kids[0])[-1] == ("id", kids[0], None)
    assert changes_of(db, Child, kids[1])[-1] == ("parent_id", None, pid)  # untouched
    assert ("parent_id", None, pid) in changes_of(db, Child, new_kid)
    with Session(engine) as session:
        assert session.get(Child, kids[0]) is None


def test_moving_a_child_records_its_new_parent(db: dimple.DimpleDb, engine: Engine) -> None:
    pid, kids = make_family(engine)
    with Session(engine) as session:
        other = Parent(name="q")
        session.add(other)
        child = session.get_one(Child, kids[1])
        child.parent = other
        session.commit()
        oid = other.id
    assert changes_of(db, Child, kids[1])[-1] == ("parent_id", pid, oid)


# ----------------------------------------------------------------------------- transactions


def test_several_flushes_are_one_transaction(db: dimple.DimpleDb, engine: Engine,
                                             received: Received) -> None:
    with Session(engine) as session:
        t = Todo(text="a")
        session.add(t)
        session.flush()
        t.text = "b"
        session.flush()
        u = Todo(text="c")
        session.add(u)
        session.commit()
        ids = (t.id, u.id)
    hist = db.history(Todo, ids[0]) + db.history(Todo, ids[1])
    assert len({c.transaction_id for c in hist}) == 1
    assert [(c.attribute, c.old_value, c.new_value) for c in hist][7] == ("text", "a", "b")
    assert len(received.calls) == 1
    assert len(received.calls[0]["changes"]) == 15


def test_rollback_records_nothing(db: dimple.DimpleDb, engine: Engine,
                                  received: Received) -> None:
    before = log_count(db)
    with Session(engine) as session:
        session.add(Todo(text="a"))
        session.flush()
        session.rollback()
        session.add(Todo(text="b"))
        session.flush()
    assert log_count(db) == before
    assert received.calls == []


def test_closed_session_forgets_flushed_changes(db: dimple.DimpleDb, engine: Engine) -> None:
    with Session(engine) as session:
        ghost = Todo(text="ghost")
        session.add(ghost)
        session.flush()
        gid = ghost.id
        session.close()  # rolls back without after_soft_rollback
        session.add(Todo(text="real"))
        session.commit()
    assert changes_of(db, Todo, gid) == []
    assert log_count(db) == 7


def test_savepoint_rolled_back_drops_only_its_changes(db: dimple.DimpleDb,
                                                      engine: Engine) -> None:
    with Session(engine) as session:
        keep = Todo(text="keep")
        session.add(keep)
        session.flush()
        nested = session.begin_nested()
        drop = Todo(text="drop")
        session.add(drop)
        keep.text = "changed in savepoint"
        session.flush()
        nested.rollback()
        after = Todo(text="after")
        session.add(after)
        session.commit()
        ids = keep.id, drop.id, after.id
    assert changes_of(db, Todo, ids[0])[1] == ("text", None, "keep")
    assert len(changes_of(db, Todo, ids[0])) == 7
    assert changes_of(db, Todo, ids[1]) == []
    assert len(changes_of(db, Todo, ids[2])) == 7


def test_savepoint_released_keeps_changes(db: dimple.DimpleDb, engine: Engine,
                                          received: Received) -> None:
    with Session(engine) as session:
        outer = Todo(text="outer")
        session.add(outer)
        with session.begin_nested():
            inner = Todo(text="inner")
            session.add(inner)
        with session.begin_nested():
            inner.text = "inner 2"
        session.commit()
        ids = outer.id, inner.id
    assert len(changes_of(db, Todo, ids[0])) == 7
    assert changes_of(db, Todo, ids[1])[-1] == ("text", "inner", "inner 2")
    assert len(received.calls) == 1
    assert len({c.transaction_id for c in received.calls[0]["changes"]}) == 1


def test_commit_with_a_savepoint_still_open(db: dimple.DimpleDb, engine: Engine) -> None:
    with Session(engine) as session:
        session.begin_nested()
        t = Todo(text="in savepoint")
        session.add(t)
        session.commit()  # releases the savepoint and commits the transaction
        tid = t.id
    assert len(changes_of(db, Todo, tid)) == 7


def test_nested_savepoints(db: dimple.DimpleDb, engine: Engine) -> None:
    with Session(engine) as session:
        with session.begin_nested():
            a = Todo(text="a")
            session.add(a)
            sp = session.begin_nested()
            b = Todo(text="b")
            session.add(b)
            session.flush()
            sp.rollback()
            c = Todo(text="c")
            session.add(c)
        session.commit()
        ids = a.id, b.id, c.id
    assert [len(changes_of(db, Todo, i)) for i in ids] == [7, 0, 7]


def test_failed_flush_in_savepoint(db: dimple.DimpleDb, engine: Engine) -> None:
    tid = add_todo(engine)
    with Session(engine) as session:
        ok = Todo(text="ok")
        session.add(ok)
        try:
            with session.begin_nested():
                session.add(Todo(id=tid, text="duplicate key"))
        except Exception:
            pass
        session.commit()
        ok_id = ok.id
    assert len(changes_of(db, Todo, ok_id)) == 7
    assert len(changes_of(db, Todo, tid)) == 7


def test_changes_in_a_before_commit_hook_are_recorded(db: dimple.DimpleDb,
                                                      engine: Engine) -> None:
    """A flush after capture wrote the transaction (another listener changed objects)."""
    made: list[str] = []

    def late(session: Session) -> None:
        if not made and session.get_nested_transaction() is None:
            t = Todo(text="late")
            session.add(t)
            session.flush()
            made.append(t.id)

    event.listen(Session, "before_commit", late)
    try:
        with Session(engine) as session:
            session.add(Todo(text="early"))
            session.commit()
    finally:
        event.remove(Session, "before_commit", late)
    assert len(changes_of(db, Todo, made[0])) == 7


# ----------------------------------------------------------------------------- sessions


def test_app_sessionmaker_and_scoped_session(db: dimple.DimpleDb, engine: Engine) -> None:
    factory = sessionmaker(bind=engine)
    with factory() as session:
        t = Todo(text="plain")
        session.add(t)
        session.commit()
        a = t.id
    scoped = scoped_session(sessionmaker(bind=engine))
    try:
        u = Todo(text="scoped")
        scoped.add(u)
        scoped.commit()
        b = u.id
    finally:
        scoped.remove()
    with db.sessionmaker()() as session:
        v = Todo(text="dimple")
        session.add(v)
        session.commit()
        c = v.id
    assert [len(changes_of(db, Todo, i)) for i in (a, b, c)] == [7, 7, 7]


def test_session_bound_to_a_connection(db: dimple.DimpleDb, engine: Engine) -> None:
    with engine.connect() as conn:
        with Session(bind=conn) as session:
            t = Todo(text="on a connection")
            session.add(t)
            session.commit()
            tid = t.id
        conn.commit()
    assert len(changes_of(db, Todo, tid)) == 7


def test_other_engines_are_not_captured(db: dimple.DimpleDb, tmp_path: Path) -> None:
    other = make_engine(tmp_path / "other.db")
    Base.metadata.create_all(other)
    with Session(other) as session:
        session.add(Todo(text="elsewhere"))
        session.commit()
    other.dispose()
    assert log_count(db) == 0


def test_two_databases_capture_their_own_engine(db: dimple.DimpleDb, tmp_path: Path) -> None:
    other = make_engine(tmp_path / "other.db")
    db2 = dimple.DimpleDb(other, Base)
    db2.create_all()
    try:
        with Session(other) as session:
            t = Todo(text="second")
            session.add(t)
            session.commit()
            tid = t.id
        assert len(changes_of(db2, Todo, tid)) == 7
        assert log_count(db) == 0
    finally:
        db2.close()
        other.dispose()


def test_async_session(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    async def main() -> tuple[str, int]:
        aengine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
        db = dimple.DimpleDb(aengine.sync_engine, Base)
        async with aengine.begin() as conn:
            await conn.run_sync(lambda c: db.metadata.create_all(c))
            await conn.run_sync(lambda c: Base.metadata.create_all(c))
        received = Received()
        factory = async_sessionmaker(aengine, class_=AsyncSession, expire_on_commit=False)
        with changes_committed.connected_to(received, sender=db):
            async with factory() as session:
                t = Todo(text="async")
                session.add(t)
                await session.commit()
                tid = t.id
                t.text = "async 2"
                await session.commit()
                await session.delete(t)
                await session.flush()
                await session.rollback()
        db.close()
        await aengine.dispose()
        return tid, len(received.calls)

    tid, sends = asyncio.run(main())
    reader = dimple.DimpleDb(make_engine(tmp_path / "async.db"), Base)
    got = changes_of(reader, Todo, tid)
    reader.close()
    reader.engine.dispose()
    assert got[0] == ("id", None, tid)
    assert got[-1] == ("text", "async", "async 2")
    assert len(got) == 8 and sends == 2


def test_untracked_tables_are_ignored(engine: Engine) -> None:
    db = dimple.DimpleDb(engine, Base, exclude=[Parent, "child"])
    db.create_all()
    try:
        make_family(engine)
        tid = add_todo(engine)
        assert log_count(db) == 7 and len(changes_of(db, Todo, tid)) == 7
    finally:
        db.close()


def test_closed_database_stops_capturing(engine: Engine) -> None:
    db = dimple.DimpleDb(engine, Base)
    db.create_all()
    db.close()
    add_todo(engine)
    assert log_count(db) == 0


# ----------------------------------------------------------------------------- the signal


def test_signal_once_per_commit(db: dimple.DimpleDb, engine: Engine,
                                received: Received) -> None:
    pid, kids = make_family(engine)
    assert len(received.calls) == 1
    call = received.calls[0]
    assert call["sender"] is db and call["origin"] == "local"
    assert call["tables"] == frozenset({"parent", "child"})
    changes = call["changes"]
    assert all(isinstance(c, dimple.Change) for c in changes)
    assert {c.entity_id for c in changes} == {pid, *kids}
    logged = [c for e in (pid, *kids)
              for c in db.history(Parent if e == pid else Child, e)]
    assert sorted(changes, key=lambda c: c.id) == sorted(logged, key=lambda c: c.id)
    assert len(changes) == 2 + 3 * 3


def test_signal_not_sent_on_rollback_or_for_nothing(db: dimple.DimpleDb, engine: Engine,
                                                    received: Received) -> None:
    with Session(engine) as session:
        session.add(Todo(text="a"))
        session.flush()
        session.rollback()
        session.commit()  # nothing to commit
    with Session(engine) as session, session.begin():
        session.execute(text("SELECT 1"))
    assert received.calls == []


def test_raising_receiver_is_logged_and_commit_stands(
        db: dimple.DimpleDb, engine: Engine, caplog: pytest.LogCaptureFixture,
        received: Received) -> None:
    def boom(sender: Any, **kw: Any) -> None:
        raise RuntimeError("receiver failed")

    with changes_committed.connected_to(boom, sender=db), caplog.at_level(logging.ERROR):
        tid = add_todo(engine)
    assert "receiver" in caplog.text and "receiver failed" in caplog.text
    assert len(received.calls) == 1  # the other receiver still ran
    with Session(engine) as session:
        assert session.get(Todo, tid) is not None
    assert len(changes_of(db, Todo, tid)) == 7


# ----------------------------------------------------------------------------- crash safety


def test_failing_log_write_rolls_back_the_data(db: dimple.DimpleDb, engine: Engine) -> None:
    def refuse(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "dimple_pending" in statement and statement.lstrip().upper().startswith("INSERT"):
            raise RuntimeError("disk full")

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        with Session(engine) as session:
            t = Todo(text="lost")
            session.add(t)
            with pytest.raises(Exception, match="disk full"):
                session.commit()
            session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", refuse)
    with Session(engine) as session:
        assert session.scalars(select(Todo)).all() == []
    assert log_count(db) == 0 and tx_count(db) == 0


def test_missing_log_table_rolls_back_the_data(db: dimple.DimpleDb, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE dimple_pending"))
    with Session(engine) as session:
        session.add(Todo(text="lost"))
        with pytest.raises(Exception, match="dimple_pending"):
            session.commit()
    with Session(engine) as session:
        assert session.scalars(select(Todo)).all() == []


def test_killed_process_leaves_neither_data_nor_log(db: dimple.DimpleDb, engine: Engine,
                                                    tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from sqlalchemy import event
        from sqlalchemy.orm import Session
        import dimpledb_sa as dimple
        from sqlalchemy import create_engine
        from models import Base, Todo

        engine = create_engine({engine.url.render_as_string(hide_password=False)!r})
        db = dimple.DimpleDb(engine, Base)
        stage = sys.argv[1]

        def die(*args):
            os._exit(3)

        session = Session(engine)
        session.add(Todo(text="doomed"))
        if stage == "flush":
            session.flush()
            os._exit(3)
        event.listen(engine, "commit", die)  # log written, COMMIT not yet sent
        session.commit()
    """)
    for stage in ("flush", "commit"):
        proc = subprocess.run([sys.executable, "-c", script, stage], timeout=60,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert proc.returncode == 3
        with Session(engine) as session:
            assert session.scalars(select(Todo)).all() == []
        assert log_count(db) == 0 and tx_count(db) == 0
    add_todo(engine)  # the database is still usable
    assert log_count(db) == 7


# ----------------------------------------------------------------------------- large transactions


def test_large_flushes(db: dimple.DimpleDb, engine: Engine) -> None:
    import gc

    with Session(engine) as session:
        todos = [Todo(text=f"t{i}") for i in range(600)]
        session.add_all(todos)
        session.commit()
        for t in todos:
            t.count = 1
        session.commit()
        ids = [t.id for t in todos]
    assert gc.isenabled()
    assert log_count(db) == 600 * 8
    assert changes_of(db, Todo, ids[-1])[-1] == ("count", 0, 1)


# ----------------------------------------------------------------------------- inheritance


class Staff(DeclarativeBase):
    pass


class Employee(Staff):
    __tablename__ = "employee"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    name: Mapped[str]
    kind: Mapped[str]
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_on": "kind",
                                                  "polymorphic_identity": "employee"}


class Manager(Employee):  # joined-table inheritance: rows in employee and manager
    __tablename__ = "manager"
    id: Mapped[str] = mapped_column(ForeignKey("employee.id"), primary_key=True)
    level: Mapped[int] = mapped_column(default=1)
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "manager"}


class Intern(Employee):  # single-table inheritance: a column of the employee table
    school: Mapped[str | None] = mapped_column(nullable=True)
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "intern"}


@pytest.fixture(name="staff_db")
def staff_db_fixture(tmp_path: Path) -> Iterator[dimple.DimpleDb]:
    engine = make_engine(tmp_path / "staff.db")
    db = dimple.DimpleDb(engine, Staff)
    db.create_all()
    yield db
    db.close()
    engine.dispose()


def test_joined_and_single_table_inheritance(staff_db: dimple.DimpleDb) -> None:
    with Session(staff_db.engine) as session:
        m = Manager(name="ada", level=3)
        i = Intern(name="bob", school="x")
        session.add_all([m, i])
        session.commit()
        mid, iid = m.id, i.id
        m.name = "ada l."  # a base-table column
        m.level = 4  # a subclass-table column
        i.school = "y"
        session.commit()
    emp = dict((a, n) for a, _, n in changes_of(staff_db, "employee", mid))
    assert emp == {"id": mid, "name": "ada l.", "kind": "manager"}  # school: not a Manager's
    assert changes_of(staff_db, "manager", mid) == [
        ("id", None, mid), ("level", None, 3), ("level", 3, 4)]
    assert changes_of(staff_db, "employee", iid)[-1] == ("school", "x", "y")
    assert changes_of(staff_db, "manager", iid) == []
    with Session(staff_db.engine) as session:
        session.execute(update(Manager).where(Manager.level > 3).values(level=5))
        session.execute(update(Employee).where(Employee.id == mid).values(name="boss"))
        session.commit()
    assert changes_of(staff_db, "employee", mid)[-1] == ("name", "ada l.", "boss")
    assert changes_of(staff_db, "manager", mid)[-1] == ("level", 4, 5)
    assert changes_of(staff_db, "employee", iid)[-1] == ("school", "x", "y")
    with Session(staff_db.engine) as session:
        session.delete(session.get_one(Manager, mid))
        session.commit()
    assert changes_of(staff_db, "employee", mid)[-1] == ("id", mid, None)
    assert changes_of(staff_db, "manager", mid)[-1] == ("id", mid, None)
