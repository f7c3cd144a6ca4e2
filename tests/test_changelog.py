"""The change log (``core.changelog``): its stored form (what ``dimple_changes`` holds,
that every kind of entity id and value comes back exactly, and the upgrade of a log written
in the first release's layout), and the transactions of the log, folded or pending.

A local commit writes one ``dimple_pending`` row, with its author, and nothing else: its
``dimple_transactions`` row comes with the fold. So every reader of transactions (by author
for a push and the counts, by id for a merge, healing and undo, newest first for the log)
sees a transaction that is only pending, with its author, and gives the same answers once it
is folded. A database an earlier version made (``dimple_pending`` without ``author``, each
pending row with its ``dimple_transactions`` row) is read as it is, and its first commit, or
``create_all()``, adds the column; an addition that rolls back is made again."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    inspect,
    null,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog, meta, schema, timeline
from dimpledb_sa.core.changes import ROW_ID
from dimpledb_sa.core.clock import offset_id
from dimpledb_sa.core.runs import Runs
from dimpledb_sa.sync.merge import merge
from dimpledb_sa.sync.reauthor import reauthor
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
        for key in ODD_KEYS:  # an entity's pending rows found by its id, however spelt
            mine = changelog.pending_rows(conn, entity=("word", key))
            assert mine and {r[3] for r in mine} == {key}, key
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


def test_ids_converted_in_bulk_are_those_converted_one_by_one() -> None:
    uid = [dimple.new_id() for _ in range(3)]
    moved = uid[0][:8] + uid[0][9] + "-" + uid[0][10:]  # 36 characters, a dash misplaced
    for keys in ([*uid], [*uid, ODD_KEYS[3]], [*uid, moved], [*uid, "x" * 36],
                 [*uid, "é" * 36], [*uid, "short"], [*uid, "01890a5b-0000-7000-8000-00000000000 "]):
        one_by_one = [changelog._key_bytes(k) for k in keys]
        assert changelog._keys_bytes(keys) == one_by_one
        assert all(type(b) is bytes for b in one_by_one[:3])
    assert changelog._ids_bytes(uid) == [changelog.id_bytes(i) for i in uid]


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


# --------------------------------------------------------------------------- transactions
@pytest.fixture
def models() -> type[DeclarativeBase]:
    """What ``db`` tracks: the ``Base`` this module's ``Todo`` is mapped by."""
    return Base


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


def _runs(entities: list[str], olds: list[list[Any]], news: list[list[Any]]) -> Runs:
    tx = dimple.new_id()
    n = len(entities)
    names = [json.dumps(["id", *(f"a{k}" for k in range(1, len(v)))]) for v in news]
    return Runs([dimple.new_id() for _ in range(n)], [tx] * n, ["word"] * n, entities, names,
                olds, news)


_UID = [dimple.new_id() for _ in range(3)]
RUN_CASES = {
    "scalars": _runs(_UID, [[None] * 5, [None] * 5, [None]], [
        [_UID[0], "t", 1.5, True, None], [_UID[1], "é\"\\", -0.0, False, 10**30], [_UID[2]]]),
    "brackets in a string": _runs(_UID[:2], [[None, None]] * 2,
                                  [[_UID[0], "a],[b"], [_UID[1], "{"]]),
    "nested values": _runs(_UID[:2], [[None, None]] * 2,
                           [[_UID[0], {"a": [1, 2]}], [_UID[1], [1, [2]]]]),
    "other first values": _runs(["n1", "n22", 'q"1', "é"], [[None, None]] * 4,
                                [["n1", 1], ["x", 2], ['q"1', 3], ["é", 4]]),
    "old values": _runs(_UID[:2], [["o", None], [None] * 300],
                        [[_UID[0], 1], [_UID[1], *range(299)]]),
}


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_runs_stored_column_by_column_are_stored_as_their_rows(engine: Engine, case: str
                                                               ) -> None:
    """``store_runs`` writes exactly what ``store`` writes of the same rows in text form
    (the bulk bootstrap's way and the general way), and gives those rows back."""
    runs = RUN_CASES[case]
    db = dimple.DimpleDb(engine, Base)
    db.create_all()
    stored = []
    for how in ("columns", "rows"):
        with engine.begin() as conn:
            if how == "columns":
                assert changelog.store_runs(conn, runs) == runs.rows()
            else:
                changelog.store(conn, runs.rows())
            stored.append(sorted(tuple(r) for r in conn.execute(select(schema.changes))))
            assert sorted(changelog.all_rows(conn)) == sorted(runs.rows())
            conn.execute(delete(schema.changes))
    assert stored[0] == stored[1]
    assert all(json.loads(r[6]) == v for r, v in zip(runs.rows(), runs.news, strict=True))
    db.close()


def test_old_texts_spell_every_array_as_array_texts_does() -> None:
    """Empty and all-null arrays take the shared texts, the rest are spelled: the same."""
    from dimpledb_sa.core.runs import array_texts, old_texts

    arrays: list[list[Any]] = [[], [None], [None] * 300, [None, 1], ["a", None], []]
    assert old_texts(arrays) == array_texts(arrays)
    assert old_texts([[], []]) == ["[]", "[]"]
