"""Tests for ``dimpledb_sa.core.floor``: on SQLite a commit neither reads nor writes
``dimple_meta.clock``; the floor is the highest of that row and the last ids of the newest
pending transaction and of the log's newest row, kept per connection while ``PRAGMA
data_version`` says no other connection committed, with the author id. These tests hold it to
every guarantee the per-commit floor gave: ids never go backwards across restarts, processes
or threads sharing the file, pulls, folds and rollbacks; a reauthor made elsewhere is seen at
the next commit; a local transaction is one row written with the data.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog, floor, meta, schema
from dimpledb_sa.core.clock import HybridClock, parse_id
from dimpledb_sa.sync.reauthor import reauthor

T0 = 1_750_000_000_000  # a fixed wall clock, in ms


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)


def fixed(ms: int) -> HybridClock:
    return HybridClock(now_ns=lambda: ms * 1_000_000)


def open_db(url: str, ms: int = T0) -> dimple.DimpleDb:
    db = dimple.DimpleDb(create_engine(url), Base)
    db.create_all()
    db.replica.clock = fixed(ms)
    return db


def add(db: dimple.DimpleDb, label: str) -> str:
    with Session(db.engine) as s:
        todo = Todo(text=label)
        s.add(todo)
        s.commit()
        return todo.id


def all_ids(engine: Engine) -> list[str]:
    """Every transaction and change id the database holds, in commit order."""
    with engine.connect() as conn:
        p = schema.pending
        pending = conn.execute(select(p.c.transaction_id, p.c.body).order_by(p.c.seq)).all()
        rows = sorted(changelog.all_rows(conn), key=lambda r: r[0])
    out: list[str] = []
    for row in rows:
        out.extend(r[0] for r in changelog.expand(row))
    out.extend(tx for tx, _ in pending)
    return out


def newest_id(engine: Engine) -> str:
    return max(all_ids(engine))


def stored_clock(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return meta.get(conn, meta.CLOCK)


def statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", note)
    return seen


def test_a_single_row_commit_writes_one_row_and_reads_nothing(tmp_path: Path) -> None:
    db = open_db(f"sqlite:///{tmp_path / 'a.db'}")
    add(db, "first")  # the first commit on a connection reads the floor
    seen = statements(db.engine)
    add(db, "second")
    ours = [s for s in seen if "dimple_" in s]
    assert ours == [  # its dimple_transactions row is written by the fold
        "INSERT INTO dimple_pending (transaction_id, author, tables, body) VALUES (?, ?, ?, ?)",
    ]
    db.close()


def test_ids_never_go_back_across_a_restart_with_pending_transactions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    db = open_db(url, T0 + 3_600_000)  # an hour ahead, then restarted with the right time
    for k in range(3):
        add(db, f"ahead {k}")
    before = set(all_ids(db.engine))
    assert stored_clock(db.engine) is None  # nothing folded yet: the pending rows hold it
    db.close()
    db.engine.dispose()
    again = open_db(url, T0)
    add(again, "after restart")
    new = set(all_ids(again.engine)) - before
    assert len(new) == 4 and min(new) > max(before)  # a transaction id and three changes
    again.close()


def test_ids_never_go_back_across_a_restart_after_a_fold(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    db = open_db(url, T0 + 3_600_000)
    add(db, "ahead")
    with db.engine.begin() as conn:
        assert changelog.fold(conn) > 0
    before = newest_id(db.engine)
    assert stored_clock(db.engine) == before  # the fold raised the floor to its newest id
    db.close()
    db.engine.dispose()
    again = open_db(url, T0)
    new = add(again, "after restart")
    assert min(h.id for h in again.history(Todo, new)) > before
    again.close()


def test_the_floor_of_a_many_row_transaction_is_its_last_change(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    db = open_db(url, T0 + 1000)
    with Session(db.engine) as s:
        s.add_all([Todo(text=f"t{k}") for k in range(50)])
        s.commit()
    last = newest_id(db.engine)
    with db.engine.connect() as conn:
        conn.info.pop(meta.KEPT_KEY, None)  # read it afresh
        found = floor.start(conn)[0]
        assert found is not None and parse_id(found) == parse_id(last)
    with db.engine.begin() as conn:
        changelog.fold(conn)
    with db.engine.connect() as conn:
        conn.info.pop(meta.KEPT_KEY, None)
        found = floor.start(conn)[0]
        assert found is not None and parse_id(found) == parse_id(last)
    db.close()
    db.engine.dispose()
    again = open_db(url, T0)
    new = add(again, "next")
    assert min(h.id for h in again.history(Todo, new)) > last
    again.close()


def test_two_engines_on_one_file_alternating_keep_one_order(tmp_path: Path) -> None:
    """Two engines stand for two processes: each commit sees the other's through
    ``data_version``, even when its own wall clock is behind."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a = open_db(url, T0 + 1000)  # ahead
    b = dimple.DimpleDb(create_engine(url), Base)
    b.replica.clock = fixed(T0)
    txs: list[str] = []
    for k in range(10):
        for db in (a, b):
            add(db, f"{k}")
            with db.engine.connect() as conn:
                txs.append(changelog.all_transactions(conn)[-1][0])
    assert txs == sorted(txs) and len(set(txs)) == len(txs)
    ids = all_ids(a.engine)
    assert len(set(ids)) == len(ids)
    a.close()
    b.close()


def test_two_threads_on_one_engine_keep_one_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    db = open_db(url)
    db.replica.clock = HybridClock()  # the real clock: many commits per millisecond

    def work(label: str) -> None:
        for k in range(40):
            add(db, f"{label}{k}")

    threads = [threading.Thread(target=work, args=(x,)) for x in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.engine.connect() as conn:
        p = schema.pending
        by_seq = list(conn.execute(select(p.c.transaction_id).order_by(p.c.seq)).scalars())
    assert by_seq == sorted(by_seq)  # commit order is id order
    db.close()


def test_a_merge_on_the_same_connection_raises_the_floor(tmp_path: Path) -> None:
    """A pull stores ids from a device whose clock is ahead; the next local commit, on the
    same pooled connection and with its own clock behind, still sorts after them."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    db = open_db(url, T0)
    add(db, "local")  # the connection's floor is cached now
    future = fixed(T0 + 60_000).reserve(1)[0]
    with db.engine.begin() as conn:  # what a merge does with the newest id it stored
        changelog.raise_clock_floor(conn, future)
    db.replica.clock = fixed(T0)  # a clock that never saw it (another DimpleDb's merge)
    new = add(db, "after the pull")
    assert min(h.id for h in db.history(Todo, new)) > future
    db.close()


def test_a_rolled_back_commit_leaves_the_order_intact(tmp_path: Path) -> None:
    db = open_db(f"sqlite:///{tmp_path / 'a.db'}")
    first = add(db, "kept")
    with Session(db.engine) as s:
        s.add(Todo(text="rolled back"))
        s.flush()
        s.rollback()
    second = add(db, "kept too")
    h1, h2 = db.history(Todo, first), db.history(Todo, second)
    assert max(c.id for c in h1) < min(c.id for c in h2)
    with db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.pending)).scalar_one() == 2
    db.close()


def test_a_reauthor_from_another_engine_is_seen_at_the_next_commit(tmp_path: Path) -> None:
    """The author kept with the floor is read again once another connection committed."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    db = open_db(url)
    add(db, "before")  # the connection keeps the floor and the author now
    old = db.author_id
    other = create_engine(url)
    new = reauthor(other).new
    other.dispose()
    assert new != old
    entity = add(db, "after")
    assert {c.author for c in db.history(Todo, entity)} == {new}
    db.close()


def test_a_reauthor_on_the_same_connection_is_seen_at_the_next_commit(tmp_path: Path) -> None:
    """A write of ``author_id`` through ``meta`` drops what the connection kept (its own
    commits do not change its ``data_version``)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}", pool_size=1, max_overflow=0)
    db = dimple.DimpleDb(engine, Base)
    db.create_all()
    add(db, "before")
    new = reauthor(engine).new
    entity = add(db, "after")
    assert {c.author for c in db.history(Todo, entity)} == {new}
    db.close()
    engine.dispose()


