"""Tests for ``dimpledb_sa.live.query``: live queries.

Everything runs on real SQLite files in ``tmp_path``: result shapes, which commits re-run
which queries, coalescing and result comparison, rollbacks, failing callbacks, garbage
collection, executors, commits from many threads, parameters, ``async for``, sync-applied
changes, and ``close_all``. Which tables a query reads is tested in ``test_tables``, the
external-commit watcher in ``test_watch``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from models import LiveBase as Base
from models import LiveNote as Note
from models import LiveTodo as Todo
from models import Recorder, TodoList, add, make_engine
from sqlalchemy import (
    Engine,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

import dimpledb_sa as dimple
from dimpledb_sa.core.errors import DimpleError
from dimpledb_sa.core.signals import changes_committed
from dimpledb_sa.live import LiveQuery

__all__: list[str] = []


@pytest.fixture
def models() -> type[Base]:
    return Base  # ``db`` tracks the live schema


# -- results ------------------------------------------------------------------------------------
def test_rows_shape_follows_session_execute(db: dimple.DimpleDb, engine: Engine) -> None:
    add(engine, Todo(text="a"), Todo(text="b", done=True))
    with db.live(select(Todo).order_by(Todo.text)) as live:
        assert [type(t) for t in live.rows] == [Todo, Todo]
        assert [t.text for t in live.rows] == ["a", "b"]
    with db.live(select(Todo.text).order_by(Todo.text)) as live:
        assert live.rows == ["a", "b"]
    with db.live(select(Todo.text, Todo.done).order_by(Todo.text)) as live:
        assert [tuple(r) for r in live.rows] == [("a", False), ("b", True)]
        assert live.rows[0].text == "a"
    with db.live(text("SELECT text FROM todo ORDER BY text")) as live:
        assert live.rows == ["a", "b"]
    with db.live(text("SELECT text, done FROM todo ORDER BY text")) as live:
        assert [tuple(r) for r in live.rows] == [("a", 0), ("b", 1)]
    with db.live(select(Todo, Note).join(Note, Note.body == Todo.text)) as live:
        assert live.rows == []


def test_subscribe_now_then_after_each_change(db: dimple.DimpleDb, engine: Engine) -> None:
    rec = Recorder()
    live = db.live(select(Todo.text).where(Todo.done.is_(False)).order_by(Todo.text))
    sub = live.subscribe(rec)
    assert rec.calls == [[]]
    [a] = add(engine, Todo(text="a"))
    assert rec.calls == [[], ["a"]]
    assert live.rows == ["a"]
    with Session(engine) as s:
        s.get_one(Todo, a).done = True
        s.commit()
    assert rec.calls == [[], ["a"], []]
    sub.close()
    add(engine, Todo(text="b"))
    assert len(rec.calls) == 3
    assert live.rows == ["b"]
    live.close()


def test_invalid_statement_raises_and_leaves_nothing(db: dimple.DimpleDb) -> None:
    with pytest.raises(Exception, match=r"no such table|does not exist"):
        db.live(text("SELECT * FROM missing"))
    assert db.live_registry.count() == 0
    assert list(changes_committed.receivers_for(db)) == []


# -- which commits re-run which queries ---------------------------------------------------------
def test_reruns_only_for_tables_it_reads(db: dimple.DimpleDb, engine: Engine) -> None:
    todos = db.live(select(Todo))
    notes = db.live(select(Note.body))
    assert (todos.run_count, notes.run_count) == (1, 1)
    add(engine, Note(body="x"))
    assert (todos.run_count, notes.run_count) == (1, 2)
    add(engine, Todo(text="y"))
    assert (todos.run_count, notes.run_count) == (2, 2)
    todos.close()
    notes.close()


def test_callback_only_when_result_differs(db: dimple.DimpleDb, engine: Engine) -> None:
    [done_id] = add(engine, Todo(text="old", done=True))
    add(engine, Todo(text="open"))
    rec = Recorder()
    with db.live(select(Todo).where(Todo.done.is_(False))) as live:
        live.subscribe(rec)
        with Session(engine) as s:
            s.get_one(Todo, done_id).text = "still done"
            s.commit()
        assert live.run_count == 2
        assert len(rec.calls) == 1  # same entities, same values: no callback
        with Session(engine) as s:
            s.execute(update(Todo).where(Todo.done.is_(False)).values(text="renamed"))
            s.commit()
        assert len(rec.calls) == 2  # an entity's value changed
        assert rec.last[0].text == "renamed"


def test_once_per_transaction_session_and_bulk(db: dimple.DimpleDb, engine: Engine) -> None:
    rec = Recorder()
    q = (select(Todo.text, TodoList.name).join(TodoList, Todo.list_id == TodoList.id)
         .order_by(Todo.text))
    with db.live(q) as live:
        live.subscribe(rec)
        with Session(engine) as s:
            for i in range(20):
                lst = TodoList(name=f"list {i}")
                s.add(lst)
                s.flush()
                s.add(Todo(text=f"t{i:02}", list=lst))
                s.flush()
            s.commit()  # 40 flushes, two tables: one transaction
        assert live.run_count == 2
        assert len(rec.calls) == 2 and len(rec.last) == 20
        with Session(engine) as s:
            s.execute(update(Todo).values(done=True))
            s.execute(delete(Todo).where(Todo.text == "t00"))
            s.execute(insert(Note), [{"body": "n1"}, {"body": "n2"}])
            s.commit()
        assert live.run_count == 3
        assert len(rec.last) == 19


def test_nothing_on_rollback(db: dimple.DimpleDb, engine: Engine) -> None:
    rec = Recorder()
    with db.live(select(Todo.text)) as live:
        live.subscribe(rec)
        with Session(engine) as s:
            s.add(Todo(text="never"))
            s.flush()
            s.rollback()
        with Session(engine) as s:
            s.add(Todo(text="kept"))
            with s.begin_nested() as nested:
                s.add(Todo(text="dropped"))
                s.flush()
                nested.rollback()
            s.commit()
        assert live.run_count == 2
        assert rec.calls == [[], ["kept"]]


def test_raising_callback_harms_nobody(db: dimple.DimpleDb, engine: Engine,
                                       caplog: pytest.LogCaptureFixture) -> None:
    def bad(rows: list[Any]) -> None:
        if rows:
            raise ValueError("boom")

    before, after = Recorder(), Recorder()
    with db.live(select(Todo.text)) as live:
        live.subscribe(before)
        live.subscribe(bad)
        live.subscribe(after)
        with caplog.at_level(logging.ERROR, logger="dimpledb_sa"):
            [tid] = add(engine, Todo(text="a"))
        assert before.last == ["a"] and after.last == ["a"]
        assert "callback raised" in caplog.text and "boom" in caplog.text
    with Session(engine) as s:
        assert s.get_one(Todo, tid).text == "a"  # the commit stood


# -- lifetime -----------------------------------------------------------------------------------
def test_closed_and_collected_queries_cost_nothing(db: dimple.DimpleDb, engine: Engine) -> None:
    rec = Recorder()
    live = db.live(select(Todo.text))
    live.subscribe(rec)
    assert list(changes_committed.receivers_for(db))
    live.close()
    live.close()
    assert live.closed
    assert list(changes_committed.receivers_for(db)) == []  # commits skip building changes
    with pytest.raises(DimpleError):
        live.subscribe(rec)
    add(engine, Todo(text="a"))
    assert rec.calls == [[]]

    collected = Recorder()
    db.live(select(Todo.text)).subscribe(collected)  # nobody keeps the query or the handle
    gc.collect()
    add(engine, Todo(text="b"))
    assert collected.calls == [["a"]]
    assert db.live_registry.count() == 0
    assert list(changes_committed.receivers_for(db)) == []


def test_subscription_handle_keeps_the_query_alive(db: dimple.DimpleDb, engine: Engine) -> None:
    rec = Recorder()
    with db.live(select(Todo.text)).subscribe(rec) as sub:
        gc.collect()
        add(engine, Todo(text="a"))
        assert rec.last == ["a"]
        sub.live.close()


# -- threads ------------------------------------------------------------------------------------
def test_callbacks_in_committing_thread_by_default(db: dimple.DimpleDb, engine: Engine) -> None:
    rec = Recorder()
    with db.live(select(Todo.text)) as live:
        live.subscribe(rec)
        t = threading.Thread(target=add, args=(engine, Todo(text="a")))
        t.start()
        t.join()
        assert rec.threads[-1] == t.ident
        assert rec.last == ["a"]


def test_executor_delivers_elsewhere(db: dimple.DimpleDb, engine: Engine) -> None:
    rec = Recorder()
    stmt = select(Todo.text).where(Todo.text != bindparam("hide"))
    with ThreadPoolExecutor(max_workers=2) as pool, \
            db.live(stmt, params={"hide": ""}, executor=pool) as live:
        live.subscribe(rec)
        add(engine, Todo(text="a"))
        assert rec.wait_for(lambda calls: calls[-1] == ["a"])
        assert rec.threads[-1] != threading.get_ident()
        live.params(hide="a")  # re-runs via the executor too
        assert rec.wait_for(lambda calls: calls[-1] == [])
        assert rec.threads[-1] != threading.get_ident()


@pytest.mark.parametrize("use_executor", [False, True])
def test_concurrent_commits_deliver_the_final_state(db: dimple.DimpleDb, engine: Engine,
                                                    use_executor: bool) -> None:
    n_threads, per_thread = 6, 15
    recs = [Recorder() for _ in range(3)]
    pool = ThreadPoolExecutor(max_workers=4) if use_executor else None
    live = db.live(select(func.count(Todo.id)), executor=pool)
    for r in recs:
        live.subscribe(r)
    start = threading.Barrier(n_threads)

    def work(k: int) -> None:
        start.wait()
        for i in range(per_thread):
            add(engine, Todo(text=f"{k}-{i}"))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = n_threads * per_thread
    for r in recs:
        assert r.wait_for(lambda calls: calls[-1] == [final]), r.calls[-3:]
    if pool is not None:
        pool.shutdown(wait=True)
    assert live.rows == [final]
    for r in recs:
        assert r.last == [final]
        seen = [c[0] for c in r.calls]
        assert seen == sorted(seen)  # each subscriber sees results in order
    assert live.run_count <= final + 1
    live.close()


def test_commit_from_a_callback_reruns_afterwards(db: dimple.DimpleDb, engine: Engine) -> None:
    rec = Recorder()

    def echo(rows: list[str]) -> None:
        if rows and rows[-1] == "ping":
            add(engine, Todo(text="pong"))

    with db.live(select(Todo.text).order_by(Todo.id)) as live:
        live.subscribe(echo)
        live.subscribe(rec)
        add(engine, Todo(text="ping"))
        assert rec.last == ["ping", "pong"]


# -- parameters ---------------------------------------------------------------------------------
def test_params_for_a_detail_page(db: dimple.DimpleDb, engine: Engine) -> None:
    a, b = add(engine, Todo(text="a"), Todo(text="b"))
    rec = Recorder()
    stmt = select(Todo.text).where(Todo.id == bindparam("todo_id"))
    with db.live(stmt, params={"todo_id": a}) as live:
        live.subscribe(rec)
        assert live.params(todo_id=b) is live
        assert rec.calls == [["a"], ["b"]]
        with Session(engine) as s:
            s.get_one(Todo, a).text = "a2"
            s.commit()
        assert rec.calls == [["a"], ["b"]]
        with Session(engine) as s:
            s.get_one(Todo, b).text = "b2"
            s.commit()
        assert rec.last == ["b2"]
    with db.live(text("SELECT text FROM todo WHERE id = :i"), params={"i": a}) as live:
        assert live.rows == ["a2"]
        live.params(i=b)
        assert live.rows == ["b2"]


# -- asyncio ------------------------------------------------------------------------------------
def test_async_iteration(db: dimple.DimpleDb, engine: Engine) -> None:
    threads: list[threading.Thread] = []

    def in_thread(fn: Callable[..., Any], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args)
        threads.append(t)
        t.start()

    async def main() -> list[list[str]]:
        seen: list[list[str]] = []
        live = db.live(select(Todo.text).order_by(Todo.text))
        async for rows in live:
            seen.append(rows)
            if len(seen) == 1:
                await asyncio.to_thread(add, engine, Todo(text="a"))
            elif len(seen) == 2:
                in_thread(add, engine, Todo(text="b"))  # delivered from another thread
            elif rows == ["a", "b"]:
                in_thread(live.close)  # ends the iteration
        return seen

    seen = asyncio.run(main())
    for t in threads:
        t.join()
    assert seen[:2] == [[], ["a"]]
    assert seen[-1] == ["a", "b"]


def test_async_break_releases_the_subscription(db: dimple.DimpleDb, engine: Engine) -> None:
    live = db.live(select(Todo.text))

    async def main() -> None:
        async for _rows in live:
            break

    asyncio.run(main())
    gc.collect()
    assert live._subs == []
    add(engine, Todo(text="after"))  # delivers to nobody; no closed-loop error
    live.close()


# -- sync ---------------------------------------------------------------------------------------
def test_sync_applied_changes_trigger_reruns(tmp_path: Path) -> None:
    remote = str(tmp_path / "remote")
    engines = [make_engine(tmp_path / f"{n}.db") for n in "ab"]
    a, b = (dimple.DimpleDb(e, Base, remote=remote, encryption=False) for e in engines)
    try:
        for d in (a, b):
            d.create_all()
        rec = Recorder()
        with b.live(select(Todo.text)) as live:
            live.subscribe(rec)
            add(engines[0], Todo(text="from a"))
            a.sync()
            assert live.run_count == 1
            b.sync()
            assert rec.last == ["from a"]
            assert live.run_count == 2
    finally:
        for d in (a, b):
            d.close()
        for e in engines:
            e.dispose()


def test_signal_with_origin_sync(db: dimple.DimpleDb, engine: Engine) -> None:
    rec = Recorder()
    with db.live(select(Note.body)) as live:
        live.subscribe(rec)
        with engine.begin() as conn:  # rows a merge wrote, then its announcement
            conn.execute(insert(Note).values(id=dimple.new_id(), body="merged"))
        db.replica.committed({"note"}, list, "sync")
        assert rec.last == ["merged"]


def test_close_all(db: dimple.DimpleDb, engine: Engine) -> None:
    live = db.live(select(Todo))
    assert isinstance(live, LiveQuery)
    watcher = db.watch_external(interval=0.01)
    db.live_registry.close_all()
    assert live.closed and not watcher._thread.is_alive()
    assert list(changes_committed.receivers_for(db)) == []
