"""The change log's stored form (``core.changelog``): what ``dimple_changes`` holds, that
every kind of entity id and value comes back exactly, and the upgrade of a log written in
the first release's layout."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, String, inspect, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog, meta, schema
from dimpledb_sa.core.changes import ROW_ID
from dimpledb_sa.core.clock import offset_id
from tests.models import Base, Todo


class OddBase(DeclarativeBase):
    pass


class Word(OddBase):
    """Text keys that are no UUID: quotes, backslashes, non-ASCII, a UUID in capitals."""

    __tablename__ = "word"
    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    value: Mapped[str | None] = mapped_column(String(80))


class Counter(OddBase):
    __tablename__ = "counter"
    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    n: Mapped[int] = mapped_column(default=0)


ODD_KEYS = ['say "hi"', "back\\slash", "été ☃", "01890A5B-0000-7000-8000-00000000000A", "[,"]


def folded_rows(db: dimple.DimpleDb) -> list[changelog.PackedRow]:
    with db.engine.begin() as conn:
        changelog.fold(conn)
    with db.engine.connect() as conn:
        return sorted(changelog.all_rows(conn))


def test_every_entity_id_and_value_comes_back_exactly(engine: Engine) -> None:
    db = dimple.DimpleDb(engine, OddBase)
    db.create_all()
    with Session(engine) as s:
        s.add_all([Word(key=k, value=k) for k in ODD_KEYS])
        s.add_all([Counter(id=i) for i in ("1", "22", "-3")])
        s.commit()
        for w in s.scalars(select(Word)):
            w.value = None
        s.get_one(Counter, "22").n = 5
        s.commit()
        s.delete(s.get_one(Word, "[,"))
        s.commit()
    with engine.connect() as conn:
        pending = sorted(changelog.pending_rows(conn))
    assert sorted(folded_rows(db)) == pending  # folded, the rows read back as written
    for key in ODD_KEYS:
        history = db.history(Word, key)
        assert [(h.attribute, h.new_value) for h in history][:2] == [("key", key),
                                                                      ("value", key)]
    assert [(h.attribute, h.old_value, h.new_value) for h in db.history(Counter, "22")] == [
        ("id", None, "22"), ("n", None, 0), ("n", 0, 5)]
    db.close()


def test_sqlite_stores_ids_as_bytes_and_elides_what_the_row_repeats(tmp_path: Any) -> None:
    engine = dimple_engine(tmp_path)
    db = dimple.DimpleDb(engine, Base)
    db.create_all()
    with Session(engine) as s:
        todo = Todo(text="one")
        s.add(todo)
        s.commit()
        tid = todo.id
        todo.done = True
        s.commit()
    rows = folded_rows(db)
    with engine.connect() as conn:
        stored = conn.execute(text(
            "SELECT entity_id, id, transaction_id, names, old_values, new_values "
            "FROM dimple_changes ORDER BY id")).all()
        names = dict(conn.execute(select(schema.names.c.id, schema.names.c.names)).all())
    (insert, update) = stored
    assert insert[0] == changelog.id_bytes(tid) and len(insert[1]) == len(insert[2]) == 16
    assert insert[4] is None  # an insert's old values are all null
    assert insert[5].startswith("[,")  # the key's own value is not stored twice
    assert update[4] is not None and not update[5].startswith("[,")
    assert {names[insert[3]], names[update[3]]} == {rows[0][4], rows[1][4]}
    assert [r[ROW_ID] for r in rows] == [changelog.id_text(s[1]) for s in stored]
    db.close()
    engine.dispose()


def dimple_engine(folder: Any) -> Engine:
    from tests.databases import sqlite_engine

    return sqlite_engine(folder / "app.db")


_V1 = """CREATE TABLE dimple_changes (
    id VARCHAR(36) NOT NULL PRIMARY KEY, transaction_id VARCHAR(36) NOT NULL,
    entity_type VARCHAR(255) NOT NULL, entity_id VARCHAR(255) NOT NULL,
    attributes TEXT NOT NULL, old_values TEXT NOT NULL, new_values TEXT NOT NULL)"""
_V1_INDEXES = (
    "CREATE INDEX ix_dimple_changes_entity ON dimple_changes (entity_type, entity_id, id)",
    "CREATE INDEX ix_dimple_changes_transaction ON dimple_changes (transaction_id)",
)


def test_a_first_release_log_is_upgraded_whole(engine: Engine) -> None:
    db = dimple.DimpleDb(engine, Base)
    db.create_all()
    with Session(engine) as s:
        todos = [Todo(text=f"t{k}") for k in range(30)]
        s.add_all(todos)
        s.commit()
        for t in todos[::3]:
            t.count += 1
        s.commit()
        s.delete(todos[1])
        s.commit()
        ids = [t.id for t in todos]
    before = folded_rows(db)
    histories = {i: db.history(Todo, i) for i in ids}
    last = max(offset_id(r[0], len(changelog._loads(r[4])) - 1) for r in before)
    db.close()
    with engine.begin() as conn:  # the same log as the first release stored it
        conn.execute(schema.changes.delete())
        schema.changes.drop(conn)
        conn.exec_driver_sql(_V1)
        for ddl in _V1_INDEXES:
            conn.exec_driver_sql(ddl)
        conn.execute(text("INSERT INTO dimple_changes VALUES (:a, :b, :c, :d, :e, :f, :g)"),
                     [dict(zip("abcdefg", r, strict=True)) for r in before])
        conn.execute(schema.meta.delete().where(schema.meta.c.key == meta.CLOCK))

    again = dimple.DimpleDb(engine, Base)
    again.create_all()
    assert "attributes" not in {c["name"] for c in inspect(engine).get_columns("dimple_changes")}
    assert folded_rows(again) == before
    assert {i: again.history(Todo, i) for i in ids} == histories
    with engine.connect() as conn:
        assert meta.get(conn, meta.CLOCK) == last  # the old log's floor is kept
    with Session(engine) as s:
        s.add(Todo(text="after"))
        s.commit()
    assert min(r[0] for r in folded_rows(again) if r not in before) > last
    again.create_all()  # a second upgrade finds nothing to do
    assert folded_rows(again)[:len(before)] == before
    again.close()


@pytest.mark.sqlite_only("an upgrade interrupted between two statements: SQLite's file")
def test_an_interrupted_upgrade_leaves_the_first_layout_whole(tmp_path: Any) -> None:
    engine = dimple_engine(tmp_path)
    db = dimple.DimpleDb(engine, Base)
    db.create_all()
    with Session(engine) as s:
        s.add_all([Todo(text=f"t{k}") for k in range(5)])
        s.commit()
    before = folded_rows(db)
    db.close()
    with engine.begin() as conn:
        schema.changes.drop(conn)
        conn.exec_driver_sql(_V1)
        conn.execute(text("INSERT INTO dimple_changes VALUES (:a, :b, :c, :d, :e, :f, :g)"),
                     [dict(zip("abcdefg", r, strict=True)) for r in before])

    class Crash(Exception):
        pass

    real = changelog.store

    def failing(*args: Any, **kw: Any) -> None:
        real(*args, **kw)
        raise Crash

    changelog.store = failing  # type: ignore[assignment]
    try:
        with pytest.raises(Crash), engine.begin() as conn:
            changelog.upgrade(conn)
    finally:
        changelog.store = real  # type: ignore[assignment]
    assert "attributes" in {c["name"] for c in inspect(engine).get_columns("dimple_changes")}
    with engine.begin() as conn:
        assert changelog.upgrade(conn)
        assert sorted(changelog.all_rows(conn)) == before
    engine.dispose()


def test_a_log_left_in_the_first_layout_is_moved_by_the_first_fold(tmp_path: Any) -> None:
    """An app that upgraded the library without create_all() or a new migration: its first
    fold (here, a sync's) moves the log over instead of failing every later commit."""
    engine = dimple_engine(tmp_path)
    db = dimple.DimpleDb(engine, Base)
    db.create_all()
    with Session(engine) as s:
        s.add_all([Todo(text=f"t{k}") for k in range(3)])
        s.commit()
    before = folded_rows(db)
    db.close()
    engine.dispose()
    with engine.begin() as conn:
        schema.changes.drop(conn)
        schema.names.drop(conn)
        conn.exec_driver_sql(_V1)
        conn.execute(text("INSERT INTO dimple_changes VALUES (:a, :b, :c, :d, :e, :f, :g)"),
                     [dict(zip("abcdefg", r, strict=True)) for r in before])
    engine.dispose()
    again = dimple.DimpleDb(dimple_engine(tmp_path), Base)  # no create_all()
    with pytest.raises(dimple.DimpleError, match="create_all"), \
            again.engine.connect() as conn:
        changelog.rows_of_entities(conn, "todo", [before[0][3]])  # a read says what to do
    with Session(again.engine) as s:
        s.add(Todo(text="after"))
        s.commit()
    rows = folded_rows(again)  # the fold moved the log over
    assert rows[:len(before)] == before and len(rows) == len(before) + 1
    again.close()
