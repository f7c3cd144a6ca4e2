"""Which tables a live query reads (``dimpledb_sa.live.tables``), seen through ``db.live``.

Tables are found from the statement's element tree (joins, relationship joins, subqueries,
CTEs, unions, ``exists``, ``any``, aliases) and, for ``text()``, from SQLite itself (views
resolve to their base tables; results cached per SQL string); eager-loaded relationships
count, and a query whose tables are unknown re-runs after every commit unless ``tables=``
names them. Everything runs on real SQLite files in ``tmp_path``.
"""

from __future__ import annotations

from typing import Any

import pytest
from models import LiveBase as Base
from models import LiveNote as Note
from models import LiveTodo as Todo
from models import Recorder, TodoList, add
from sqlalchemy import Engine, exists, func, select, text, union
from sqlalchemy.orm import aliased, joinedload, selectinload

import dimpledb_sa as dimple
from dimpledb_sa.live import ALL_TABLES, statement_tables

__all__: list[str] = []


@pytest.fixture
def models() -> type[Base]:
    return Base  # ``db`` tracks the live schema

TL = aliased(TodoList)
cte = select(Note.body).cte("bodies")
F = frozenset
STATEMENTS: dict[str, tuple[Any, frozenset[str]]] = {
    "join": (select(Todo.text).join(TodoList, Todo.list_id == TodoList.id),
             F({"todo", "todo_list"})),
    "relationship join": (select(Todo.text).join(Todo.list), F({"todo", "todo_list"})),
    "subquery": (select(select(Note.body).subquery().c.body), F({"note"})),
    "scalar subquery": (select(Todo.text, select(func.count(Note.id)).scalar_subquery()),
                        F({"todo", "note"})),
    "cte": (select(Todo.text).where(Todo.text.in_(select(cte.c.body))), F({"todo", "note"})),
    "union": (union(select(Todo.text), select(Note.body)), F({"todo", "note"})),
    "exists": (select(Todo.text).where(exists().where(Note.body == Todo.text)),
               F({"todo", "note"})),
    "any": (select(TodoList.name).where(TodoList.todos.any()), F({"todo", "todo_list"})),
    "aliased": (select(TL.name), F({"todo_list"})),
    "text join": (text("SELECT t.text FROM todo t JOIN note n ON n.body = t.text"),
                  F({"todo", "note"})),
    "text cte": (text("WITH b AS (SELECT body FROM note) SELECT count(*) FROM b"), F({"note"})),
}


@pytest.mark.parametrize("name", list(STATEMENTS))
def test_tables_of_statements(db: dimple.DimpleDb, engine: Engine, name: str) -> None:
    stmt, expected = STATEMENTS[name]
    with db.live(stmt) as live:
        assert live.tables == expected
        for table in sorted(expected):
            runs = live.run_count
            model = {"todo": Todo, "note": Note, "todo_list": TodoList}[table]
            obj = (model(text="x") if model is Todo else model(body="x") if model is Note
                   else model(name="x"))
            add(engine, obj)
            assert live.run_count == runs + 1, table
        runs = live.run_count
        other = {"todo", "note", "todo_list"} - expected
        for table in other:
            if table == "todo_list":
                add(engine, TodoList(name="y"))
            elif table == "note":
                add(engine, Note(body="y"))
        assert live.run_count == runs


def test_statement_tables_without_a_database() -> None:
    assert statement_tables(select(Todo).join(Todo.list)) == F({"todo", "todo_list"})
    assert statement_tables(union(select(Todo.id), select(Note.id))) == F({"todo", "note"})
    assert statement_tables(text("SELECT * FROM todo")) is None
    assert statement_tables(select(Todo).where(text("done = 0"))) is None


def test_views_resolve_to_base_tables(db: dimple.DimpleDb, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW open_todo AS SELECT id, text FROM todo WHERE NOT done")
    rec = Recorder()
    with db.live(text("SELECT text FROM open_todo")) as live:
        assert live.tables is not None and "todo" in live.tables
        live.subscribe(rec)
        add(engine, Todo(text="via view"))
        assert rec.last == ["via view"]
        runs = live.run_count
        add(engine, Note(body="unrelated"))
        assert live.run_count == runs


def test_text_tables_are_cached_per_sql(db: dimple.DimpleDb) -> None:
    sql = "SELECT body FROM note"
    with db.live(text(sql)) as first:
        assert db.live_registry.text_tables[sql] == frozenset({"note"})
        with db.live(text(sql)) as second:
            assert second.tables == first.tables == frozenset({"note"})


def test_eager_loaded_relationships_are_watched(db: dimple.DimpleDb, engine: Engine) -> None:
    [lid] = add(engine, TodoList(name="groceries"))
    rec = Recorder()
    with db.live(select(TodoList).options(selectinload(TodoList.todos))) as live, \
            db.live(select(TodoList).options(joinedload(TodoList.todos))) as joined:
        assert live.tables == frozenset({"todo", "todo_list"})
        assert joined.tables == frozenset({"todo", "todo_list"})
        live.subscribe(rec)
        add(engine, Todo(text="milk", list_id=lid))
        assert [t.text for t in rec.last[0].todos] == ["milk"]
        assert [t.text for t in joined.rows[0].todos] == ["milk"]
        assert len(joined.rows) == 1


def test_unknown_tables_rerun_after_every_commit(db: dimple.DimpleDb, engine: Engine) -> None:
    with db.live(text("SELECT count(*) FROM note"), tables=ALL_TABLES) as live:
        assert live.tables is None
        add(engine, Todo(text="a"))
        add(engine, TodoList(name="b"))
        assert live.run_count == 3
    with db.live(text("SELECT count(*) FROM note"), tables="Todo") as live:
        assert live.tables == frozenset({"todo"})
        add(engine, Note(body="n"))
        assert live.run_count == 1
        add(engine, Todo(text="a"))
        assert live.run_count == 2
