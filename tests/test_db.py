"""Tests for ``dimpledb_sa.db``, the facade: ``DimpleDb`` basics: the author id, ids across
restarts and clocks, timestamps."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

from models import Base, Todo, changes_of, make_engine
from sqlalchemy.orm import Session

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog, schema
from dimpledb_sa.core.clock import HybridClock, parse_id

T0 = 1_750_000_000_000


def is_uuid7(value: str) -> bool:
    u = uuid.UUID(value)
    return str(u) == value and u.version == 7


def all_ids(db: dimple.DimpleDb) -> list[str]:
    with db.engine.connect() as conn:
        rows = changelog.all_rows(conn)
        txs = [tx for tx, _ in changelog.all_transactions(conn)]  # folded and pending
    return [r[0] for r in changelog.expand_all(rows)] + txs


def open_db(path: Path) -> dimple.DimpleDb:
    return dimple.DimpleDb(make_engine(path), Base)


def close_db(db: dimple.DimpleDb) -> None:
    db.close()
    db.engine.dispose()


def add(db: dimple.DimpleDb, text: str = "x") -> str:
    with Session(db.engine) as session:
        t = Todo(text=text)
        session.add(t)
        session.commit()
        return t.id


def test_new_id() -> None:
    assert is_uuid7(dimple.new_id())


def test_author_id_is_stable_across_reopen(tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    db.create_all()
    author = db.author_id
    assert is_uuid7(author) and db.author_id == author
    tid = add(db)
    close_db(db)
    again = open_db(tmp_path / "a.db")
    try:
        assert again.author_id == author
        assert {c.author for c in again.history(Todo, tid)} == {author}
    finally:
        close_db(again)
    other = open_db(tmp_path / "b.db")
    other.create_all()
    assert other.author_id != author
    close_db(other)


def test_first_write_creates_the_author_in_its_transaction(tmp_path: Path) -> None:
    """Bookkeeping tables made elsewhere (a migration), no author yet: the first commit
    must not wait on a second connection for it (SQLite would report 'locked')."""
    engine = make_engine(tmp_path / "m.db")
    schema.metadata.create_all(engine)
    Base.metadata.create_all(engine)
    db = dimple.DimpleDb(engine, Base)
    try:
        tid = add(db)
        hist = db.history(Todo, tid)
        assert hist and hist[0].author == db.author_id
        assert add(db) != tid
        assert {c.author for c in db.history(Todo, tid)} == {db.author_id}
    finally:
        close_db(db)


def test_ids_never_go_back_across_restart(tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    db.create_all()
    db.replica.clock = HybridClock(now_ns=lambda: (T0 + 3_600_000) * 1_000_000)  # an hour ahead
    add(db)
    before = all_ids(db)
    close_db(db)
    again = open_db(tmp_path / "a.db")  # the wall clock is now back to normal
    again.replica.clock = HybridClock(now_ns=lambda: T0 * 1_000_000)
    try:
        add(again)
        after = [i for i in all_ids(again) if i not in before]
        assert len(after) == 8 and min(after) > max(before)
        assert all(parse_id(i)[0] == T0 + 3_600_000 for i in after)
    finally:
        close_db(again)


def test_ids_never_go_back_when_the_clock_steps_back(tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    db.create_all()
    now = [T0]
    db.replica.clock = HybridClock(now_ns=lambda: now[0] * 1_000_000)
    seen: list[str] = []
    try:
        for step in (0, -5000, -1, 10, -100000, 200000):
            now[0] += step
            tid = add(db)
            ids = [c.id for c in db.history(Todo, tid)]
            txs = {c.transaction_id for c in db.history(Todo, tid)}
            assert len(txs) == 1
            assert min(ids + list(txs)) > max(seen, default="")
            seen.extend(ids + list(txs))
    finally:
        close_db(db)


def test_two_databases_on_one_file_share_the_order(tmp_path: Path) -> None:
    a = open_db(tmp_path / "a.db")
    a.create_all()
    b = open_db(tmp_path / "a.db")
    a.replica.clock = HybridClock(now_ns=lambda: (T0 + 1000) * 1_000_000)  # ahead of b
    b.replica.clock = HybridClock(now_ns=lambda: T0 * 1_000_000)
    try:
        order: list[str] = []
        for db in (a, b, a, b):
            tid = add(db)
            order.append(db.history(Todo, tid)[0].transaction_id)
        assert order == sorted(order)
    finally:
        close_db(a)
        close_db(b)


def test_change_timestamps(tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    db.create_all()
    db.replica.clock = HybridClock(now_ns=lambda: T0 * 1_000_000)
    try:
        tid = add(db)
        for c in db.history(Todo, tid):
            assert c.timestamp.tzinfo is not None and c.timestamp.utcoffset() == dt.timedelta(0)
            assert c.timestamp == dt.datetime.fromtimestamp(T0 / 1000, tz=dt.UTC)
    finally:
        close_db(db)


def test_history_of_unknown_entity_and_by_object(tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    db.create_all()
    try:
        assert db.history(Todo, "nope") == []
        with Session(db.engine) as session:
            t = Todo(text="a")
            session.add(t)
            session.commit()
            session.expire(t)
            assert [c.attribute for c in db.history(t)][:2] == ["id", "text"]
            assert changes_of(db, "todo", t.id) == changes_of(db, Todo, t.id)
    finally:
        close_db(db)
