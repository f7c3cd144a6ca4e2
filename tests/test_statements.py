"""Tests for ``dimpledb_sa.capture.statements``: capture of ORM-enabled insert(), update()
and delete() statements (``session.execute``)."""

from __future__ import annotations

from typing import Any

import pytest
from models import Child, Parent, Todo, changes_of, log_count
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

import dimpledb_sa as dimple


def seed(engine: Engine, n: int = 3) -> list[str]:
    with Session(engine) as session:
        todos = [Todo(text=f"t{i}", count=i) for i in range(n)]
        session.add_all(todos)
        session.commit()
        return [t.id for t in todos]


def last(db: dimple.DimpleDb, tid: str) -> tuple[str, Any, Any]:
    return changes_of(db, Todo, tid)[-1]


def test_insert_rows_with_keys_from_the_default(db: dimple.DimpleDb, engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(insert(Todo), [{"text": "a"}, {"text": "b", "count": 5, "label": "l"}])
        session.commit()
        rows = session.execute(select(Todo.id, Todo.text).order_by(Todo.text)).all()
    assert len(rows) == 2
    a = dict((attr, new) for attr, _, new in changes_of(db, Todo, rows[0].id))
    b = changes_of(db, Todo, rows[1].id)
    assert a == {"id": rows[0].id, "text": "a", "done": False, "count": 0, "note": None,
                 "origin": "server", "label_col": None}
    assert b[0] == ("id", None, rows[1].id)
    assert ("count", None, 5) in b and ("label_col", None, "l") in b
    assert all(old is None for _, old, _ in b)


def test_insert_with_explicit_keys_and_returning(db: dimple.DimpleDb, engine: Engine) -> None:
    with Session(engine) as session:
        got = session.scalars(insert(Todo).returning(Todo.id),
                              [{"id": "k1", "text": "a"}, {"id": "k2", "text": "b"}]).all()
        session.commit()
    assert sorted(got) == ["k1", "k2"]
    assert changes_of(db, Todo, "k2")[0] == ("id", None, "k2")


def test_insert_values_single_row(db: dimple.DimpleDb, engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(insert(Todo).values(text="v"))
        session.execute(insert(Todo).values(id="given", text="w"))
        session.commit()
        tid = session.scalars(select(Todo.id).where(Todo.text == "v")).one()
    assert ("text", None, "v") in changes_of(db, Todo, tid)
    assert ("text", None, "w") in changes_of(db, Todo, "given")


def test_insert_multi_values(db: dimple.DimpleDb, engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(insert(Todo).values([{"id": "m1", "text": "a"},
                                             {"id": "m2", "text": "b"}]))
        session.commit()
    assert ("text", None, "b") in changes_of(db, Todo, "m2")
    with Session(engine) as session:
        with pytest.raises(dimple.DimpleError, match="give every row its key"):
            session.execute(insert(Todo).values([{"text": "no key"}, {"text": "no key"}]))
        session.rollback()


def test_insert_from_select_is_refused(db: dimple.DimpleDb, engine: Engine) -> None:
    seed(engine, 1)
    with Session(engine) as session:
        stmt = insert(Todo).from_select(["id", "text"], select(Todo.text + "x", Todo.text))
        with pytest.raises(dimple.DimpleError, match="todo"):
            session.execute(stmt)


def test_upsert_records_the_update(db: dimple.DimpleDb, engine: Engine) -> None:
    [tid] = seed(engine, 1)
    with Session(engine) as session:
        upsert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        stmt = upsert(Todo).values([{"id": tid, "text": "up"}, {"id": "new", "text": "n"}])
        stmt = stmt.on_conflict_do_update(index_elements=[Todo.id],
                                          set_={"text": stmt.excluded.text})
        session.execute(stmt)
        session.commit()
    assert last(db, tid) == ("text", "t0", "up")
    assert changes_of(db, Todo, "new")[0] == ("id", None, "new")


def test_update_where_values(db: dimple.DimpleDb, engine: Engine) -> None:
    ids = seed(engine)
    with Session(engine) as session:
        t0 = session.get_one(Todo, ids[0])
        session.execute(update(Todo).where(Todo.count >= 1).values(done=True, text="x"))
        session.commit()
        assert t0.done is False
    assert len(changes_of(db, Todo, ids[0])) == 7
    for tid, i in ((ids[1], 1), (ids[2], 2)):
        assert changes_of(db, Todo, tid)[7:] == [("text", f"t{i}", "x"), ("done", False, True)]


def test_update_with_sql_expression(db: dimple.DimpleDb, engine: Engine) -> None:
    ids = seed(engine)
    with Session(engine) as session:
        assert session.execute(update(Todo).values(count=Todo.count + 1)).rowcount == 3
        session.commit()
    assert [last(db, t) for t in ids] == [("count", i, i + 1) for i in range(3)]


def test_update_that_changes_nothing_records_nothing(db: dimple.DimpleDb,
                                                     engine: Engine) -> None:
    seed(engine)
    before = log_count(db)
    with Session(engine) as session:
        session.execute(update(Todo).values(done=False))
        session.execute(update(Todo).where(Todo.text == "nothing").values(done=True))
        session.commit()
    assert log_count(db) == before


def test_bulk_update_by_primary_key(db: dimple.DimpleDb, engine: Engine) -> None:
    ids = seed(engine)
    with Session(engine) as session:
        session.execute(update(Todo), [{"id": ids[0], "text": "a"},
                                       {"id": ids[2], "text": "c", "label": "L"}])
        session.commit()
    assert last(db, ids[0]) == ("text", "t0", "a")
    assert changes_of(db, Todo, ids[2])[7:] == [("text", "t2", "c"), ("label_col", None, "L")]
    assert len(changes_of(db, Todo, ids[1])) == 7


def test_update_joined_to_another_table(db: dimple.DimpleDb, engine: Engine) -> None:
    with Session(engine) as session:
        p = Parent(name="p", children=[Child(name="a"), Child(name="b")])
        session.add_all([p, Parent(name="q")])
        session.commit()
        kids = [c.id for c in p.children]
    with Session(engine) as session:
        session.execute(update(Child).where(Child.parent_id == Parent.id, Parent.name == "p")
                        .values(name="renamed"))
        session.commit()
    for k in kids:
        names = [c for c in changes_of(db, Child, k) if c[0] == "name"]
        assert names[-1][2] == "renamed" and len(names) == 2


def test_delete_where(db: dimple.DimpleDb, engine: Engine) -> None:
    ids = seed(engine)
    with Session(engine) as session:
        session.execute(delete(Todo).where(Todo.count < 2))
        session.commit()
    assert [last(db, t) for t in ids[:2]] == [("id", t, None) for t in ids[:2]]
    assert len(changes_of(db, Todo, ids[2])) == 7
    with Session(engine) as session:
        session.execute(delete(Todo))
        session.commit()
    assert last(db, ids[2]) == ("id", ids[2], None)


def test_rolled_back_statements_record_nothing(db: dimple.DimpleDb, engine: Engine) -> None:
    seed(engine)
    before = log_count(db)
    with Session(engine) as session:
        session.execute(insert(Todo), [{"text": "gone"}])
        session.execute(update(Todo).values(text="gone"))
        session.execute(delete(Todo))
        session.rollback()
    with Session(engine) as session:
        session.execute(update(Todo).values(text="kept"))
        nested = session.begin_nested()
        session.execute(delete(Todo))
        nested.rollback()
        session.commit()
    assert log_count(db) == before + 3


def test_statements_and_flushes_share_one_transaction(db: dimple.DimpleDb,
                                                      engine: Engine) -> None:
    with Session(engine) as session:
        t = Todo(text="orm")
        session.add(t)
        session.flush()
        session.execute(update(Todo).where(Todo.id == t.id).values(text="statement"))
        session.commit()
        tid = t.id
    hist = db.history(Todo, tid)
    assert len({c.transaction_id for c in hist}) == 1
    assert (hist[-1].attribute, hist[-1].old_value, hist[-1].new_value) == (
        "text", "orm", "statement")
