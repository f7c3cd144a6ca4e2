"""Tests for ``dimpledb_sa.core.changelog``: the transactions of the log, folded or pending.

A local commit writes one ``dimple_pending`` row, with its author, and nothing else: its
``dimple_transactions`` row comes with the fold. So every reader of transactions (by author
for a push and the counts, by id for a merge, healing and undo, newest first for the log)
sees a transaction that is only pending, with its author, and gives the same answers once it
is folded. A database an earlier version made (``dimple_pending`` without ``author``, each
pending row with its ``dimple_transactions`` row) is read as it is, and its first commit, or
``create_all()``, adds the column; an addition that rolls back is made again.
"""

from __future__ import annotations

from typing import Any

from models import Todo
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    null,
    select,
)
from sqlalchemy.orm import Session

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog, meta, schema, timeline
from dimpledb_sa.sync.merge import merge
from dimpledb_sa.sync.reauthor import reauthor


def add(db: dimple.DimpleDb, text: str) -> str:
    with Session(db.engine) as s:
        todo = Todo(text=text)
        s.add(todo)
        s.commit()
        return todo.id


def folded(engine: Engine) -> list[tuple[str, str]]:
    """The rows of ``dimple_transactions`` alone, by id."""
    t = schema.transactions
    with engine.connect() as conn:
        return [(i, a) for i, a in conn.execute(select(t.c.id, t.c.author).order_by(t.c.id))]


def pending(engine: Engine) -> list[tuple[str, Any]]:
    """(transaction id, author) of each ``dimple_pending`` row, in commit order (the author
    ``None`` where an earlier version wrote the row or the column is missing)."""
    p = schema.pending
    with engine.connect() as conn:
        if has_author_column(engine):
            stmt = select(p.c.transaction_id, p.c.author)
        else:
            stmt = select(p.c.transaction_id, null())
        return [(i, a) for i, a in conn.execute(stmt.order_by(p.c.seq))]


def has_author_column(engine: Engine) -> bool:
    return "author" in {c["name"] for c in inspect(engine).get_columns(schema.pending.name)}


def fold(engine: Engine) -> None:
    with engine.begin() as conn:
        changelog.fold(conn)


def readers(db: dimple.DimpleDb) -> dict[str, Any]:
    """What each reader of transactions answers (the other author has none)."""
    me, other = db.author_id, dimple.new_id()
    with db.engine.connect() as conn:
        ids = changelog.transaction_ids(conn, me)
        return {
            "ids": ids,
            "ids after the first": changelog.transaction_ids(conn, me, ids[0]),
            "other's ids": changelog.transaction_ids(conn, other),
            "authors": changelog.transaction_authors(conn, [*ids, other]),
            "other's among them": changelog.transaction_authors(conn, ids, author=other),
            "count": changelog.count_transactions(conn, me),
            "count after the first": changelog.count_transactions(conn, me, ids[0]),
            "all": changelog.all_transactions(conn),
            "since": [tx for tx, _, _ in changelog.transactions_since(conn, me, None)],
            "timeline authors": timeline.transaction_authors(conn, ids),
            "recent": [(tx, who) for tx, who, _ in timeline.recent_transactions(conn)],
            "recent of todo": [tx for tx, _, _ in timeline.recent_transactions(
                conn, author=me, table="todo", limit=1)],
        }


def test_a_pending_transaction_is_seen_by_every_reader_then_folded(
        db: dimple.DimpleDb) -> None:
    me = db.author_id
    first = add(db, "one")
    add(db, "two")
    txs = [tx for tx, _ in pending(db.engine)]
    assert pending(db.engine) == [(tx, me) for tx in txs] and folded(db.engine) == []
    seen = readers(db)
    assert seen == {
        "ids": txs,
        "ids after the first": txs[1:],
        "other's ids": [],
        "authors": {tx: me for tx in txs},
        "other's among them": {},
        "count": (2, txs[0]),
        "count after the first": (1, txs[1]),
        "all": [(tx, me) for tx in txs],
        "since": txs,
        "timeline authors": {tx: me for tx in txs},
        "recent": [(tx, me) for tx in reversed(txs)],
        "recent of todo": txs[1:],
    }
    history = db.history(Todo, first)
    assert {c.author for c in history} == {me} and len(history) > 1
    fold(db.engine)
    assert pending(db.engine) == [] and folded(db.engine) == [(tx, me) for tx in txs]
    assert readers(db) == seen
    assert db.history(Todo, first) == history


def test_a_fold_in_steps_writes_the_rows_of_what_it_moved(db: dimple.DimpleDb) -> None:
    """The push's fold: read without a lock, then moved a few transactions at a time."""
    me = db.author_id
    add(db, "one")
    add(db, "two")
    txs = [tx for tx, _ in pending(db.engine)]
    with db.engine.connect() as conn:
        unpacked = changelog.unpacked_pending(conn, 1)
        conn.rollback()
    with db.engine.begin() as conn:
        assert changelog.fold_unpacked(conn, unpacked) > 0
    assert folded(db.engine) == [(txs[0], me)] and pending(db.engine) == [(txs[1], me)]
    with db.engine.begin() as conn:  # moved already: nothing happens
        assert changelog.fold_unpacked(conn, unpacked) == 0
    assert readers(db)["all"] == [(tx, me) for tx in txs]


def test_a_merge_skips_our_pending_transaction_pulled_back(db: dimple.DimpleDb) -> None:
    """Healing pulls our own bundles back: a transaction that is only pending is known."""
    me = db.author_id
    entity = add(db, "one")
    txs = [tx for tx, _ in pending(db.engine)]
    with db.engine.connect() as conn:
        records = changelog.transactions_of(conn, me, txs)
        conn.rollback()
    before = db.history(Todo, entity)
    with db.engine.begin() as conn:
        result = merge(db.replica, conn, records)
    assert result.stored == 0 and result.applied_changes == []
    assert readers(db)["all"] == [(txs[0], me)]
    assert db.history(Todo, entity) == before


def test_a_reauthor_moves_pending_transactions_to_the_new_author(db: dimple.DimpleDb) -> None:
    old = db.author_id
    add(db, "one")
    add(db, "two")
    txs = [tx for tx, _ in pending(db.engine)]
    done = reauthor(db.engine)
    assert done.old == old and done.moved == 2
    db.replica.forget_author()
    assert db.author_id == done.new
    add(db, "after")
    with db.engine.connect() as conn:
        got = changelog.all_transactions(conn)
        assert changelog.transaction_ids(conn, old) == []
    assert [who for _, who in got] == [done.new] * 3 and [tx for tx, _ in got][:2] == txs


# --------------------------------------------------------------------------- earlier layout

EARLIER = Table(  # dimple_pending as an earlier version made it
    "dimple_pending", MetaData(),
    Column("seq", Integer, primary_key=True),
    Column("transaction_id", String(36), nullable=False),
    Column("tables", Text, nullable=False),
    Column("body", Text, nullable=False),
)


def make_earlier_layout(engine: Engine) -> None:
    """Rewrite the pending log as an earlier version kept it: no author column, and each
    pending transaction's ``dimple_transactions`` row written with it."""
    p = schema.pending
    with engine.begin() as conn:
        rows = conn.execute(select(p.c.seq, p.c.transaction_id, p.c.author, p.c.tables,
                                   p.c.body).order_by(p.c.seq)).all()
        conn.execute(schema.transactions.insert(),
                     [{"id": tx, "author": who} for _, tx, who, _, _ in rows])
        p.drop(conn)
        EARLIER.create(conn)
        conn.execute(EARLIER.insert(), [{"transaction_id": tx, "tables": tables, "body": body}
                                        for _, tx, _, tables, body in rows])  # in seq order
    engine.dispose()  # what its connections knew of the layout goes


def test_an_earlier_layout_is_read_as_is_then_its_first_commit_upgrades_it(
        db: dimple.DimpleDb) -> None:
    me = db.author_id
    first = add(db, "one")
    add(db, "two")
    txs = [tx for tx, _ in pending(db.engine)]
    history = db.history(Todo, first)
    make_earlier_layout(db.engine)
    assert not has_author_column(db.engine)
    seen = readers(db)
    assert seen["all"] == [(tx, me) for tx in txs] and seen["count"] == (2, txs[0])
    assert seen["recent of todo"] == txs[1:]
    assert db.history(Todo, first) == history
    third = add(db, "three")  # adds the column, in its own transaction
    assert has_author_column(db.engine)
    now = pending(db.engine)
    assert [who for _, who in now] == [None, None, me] and [tx for tx, _ in now][:2] == txs
    after = readers(db)
    assert after["all"] == [(tx, me) for tx, _ in now] and after["count"][0] == 3
    fold(db.engine)  # the earlier rows' transaction rows are there already: not written twice
    assert pending(db.engine) == [] and folded(db.engine) == after["all"]
    assert readers(db) == after
    assert db.history(Todo, first) == history
    assert {c.author for c in db.history(Todo, third)} == {me}


def test_create_all_upgrades_an_earlier_layout(db: dimple.DimpleDb) -> None:
    add(db, "one")
    make_earlier_layout(db.engine)
    db.create_all()
    assert has_author_column(db.engine)
    assert pending(db.engine)[0][1] is None
    add(db, "two")
    assert readers(db)["count"][0] == 2


def test_an_upgrade_that_rolls_back_is_made_again(db: dimple.DimpleDb) -> None:
    add(db, "one")
    make_earlier_layout(db.engine)
    with db.engine.connect() as conn:  # a commit's upgrade (after its first write), rolled back
        meta.take_write_lock(conn)  # a write: pysqlite begins a transaction only before DML
        changelog.ensure_pending_author(conn)
        assert "author" in {c["name"] for c in inspect(conn).get_columns("dimple_pending")}
        conn.rollback()
    assert not has_author_column(db.engine)
    add(db, "two")  # on the same pooled connection: adds it again
    assert has_author_column(db.engine)
    assert readers(db)["count"][0] == 2
