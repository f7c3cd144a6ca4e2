"""The body of a ``dimple_pending`` row (``core.pending``): the compact layout written now
gives back every row with the id its place in the transaction's run gives it, and bodies in
the earlier layout (every row with its first id) are read by every reader exactly as before,
then folded the same way."""

from __future__ import annotations

import json
from typing import Any

from models import Todo
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog, floor, pending, schema
from dimpledb_sa.core.clock import HybridClock, offset_id
from dimpledb_sa.core.signals import changes_committed

TX = "01890a5b-0000-7000-8000-0123456789ab"

GROUPS: list[list[Any]] = [
    ["todo", "a", '["text"]', '["old"]', ['"new"']],
    ["note", 'say "hi" été', ["id", "body"], [None, None], ['"x"', '"y"']],
    ["todo", "b", ["text", "done"], ['"t"', "false"], ['"u"', "true"]],
    ["todo", "a", '["text"]', "[null]", [None]],
]


def test_the_compact_body_gives_back_every_row_with_its_place_in_the_run() -> None:
    body, changes, tables = pending.build(GROUPS)
    assert changes == 6 and tables == ["note", "todo"]
    assert TX not in body and json.loads(body)["t"] == ["todo", "note"]  # no id is spelled
    assert pending.rows(TX, body) == [
        (offset_id(TX, 1), "todo", "a", ["text"], ["old"], ["new"]),
        (offset_id(TX, 2), "note", 'say "hi" été', ["id", "body"], [None, None], ["x", "y"]),
        (offset_id(TX, 4), "todo", "b", ["text", "done"], ["t", False], ["u", True]),
        (offset_id(TX, 6), "todo", "a", ["text"], [None], [None]),
    ]
    assert pending.last_id(TX, body) == offset_id(TX, 6)
    assert json.dumps('say "hi" été') in body  # what pending_rows searches an entity by


def test_an_earlier_layout_body_is_read_as_it_is_spelled() -> None:
    first = offset_id(TX, 1)
    body = json.dumps([[first, "todo", "a", ["text", "done"], ["t", None], ["u", True]]])
    assert pending.rows(TX, body) == [(first, "todo", "a", ["text", "done"], ["t", None],
                                       ["u", True])]
    assert pending.last_id(TX, body) == offset_id(TX, 2)
    assert pending.last_id(TX, "[]") is None


def add_and_change(db: dimple.DimpleDb) -> list[str]:
    with Session(db.engine) as s:
        todos = [Todo(text=f"todo {k}") for k in range(3)]
        s.add_all(todos)
        s.commit()
        todos[1].text, todos[1].done = "changed", True
        s.delete(todos[2])
        s.commit()
        return [t.id for t in todos]


def stored(engine: Engine) -> dict[str, Any]:
    """What the readers of pending transactions give."""
    with engine.connect() as conn:
        rows = changelog.pending_rows(conn)
        return {"rows": rows, "newest": floor._newest_pending(conn),
                "unpacked": [r for _, batch in changelog.unpacked_pending(conn, 10)
                             for r in batch],
                "changes": changelog.transactions_of(
                    conn, conn.execute(select(schema.pending.c.author)).scalar() or "",
                    sorted({r[1] for r in rows}))}


def test_written_rows_are_those_every_reader_gets_back(db: dimple.DimpleDb) -> None:
    seen: list[dimple.Change] = []

    def note(sender: Any, changes: Any, **kw: Any) -> None:
        seen.extend(changes)

    with changes_committed.connected_to(note, sender=db):
        ids = add_and_change(db)
    got = stored(db.engine)
    assert got["rows"] == got["unpacked"] and len(got["rows"]) == 5
    at: dict[str, int] = {}  # each transaction's run: its own id, then each row's changes
    for row in got["rows"]:
        k = at.get(row[1], 1)
        assert row[0] == offset_id(row[1], k)
        at[row[1]] = k + len(json.loads(row[4]))
    assert got["newest"] == max(c[0] for _, _, cs in got["changes"] for c in cs)
    assert sorted(c.id for c in seen) == sorted(c[0] for _, _, cs in got["changes"]
                                               for c in cs)
    assert {c.entity_id for c in seen} == set(ids)


def test_pending_bodies_in_the_earlier_layout_read_and_fold_the_same(
        db: dimple.DimpleDb) -> None:
    ids = add_and_change(db)
    before = stored(db.engine)
    history = db.history(Todo, ids[1])
    p = schema.pending
    with db.engine.begin() as conn:  # rewrite each body as an earlier version wrote it
        for seq, tx, body in conn.execute(select(p.c.seq, p.c.transaction_id, p.c.body)).all():
            earlier = json.dumps([list(r) for r in pending.rows(tx, body)])
            conn.execute(update(p).where(p.c.seq == seq).values(body=earlier))
    db.engine.dispose()  # what connections kept of the floor goes
    assert stored(db.engine) == before
    assert db.history(Todo, ids[1]) == history
    with Session(db.engine) as s:  # a commit after them issues later ids
        s.add(Todo(text="later"))
        s.commit()
    with db.engine.begin() as conn:
        changelog.fold(conn)
    with db.engine.connect() as conn:
        folded = changelog.all_rows(conn)
    assert sorted(folded)[:5] == sorted(before["rows"])
    assert min(r[0] for r in sorted(folded)[5:]) > before["newest"]


def test_a_clock_run_is_the_ids_the_body_implies() -> None:
    clock = HybridClock()
    body, changes, _ = pending.build(GROUPS)
    tx = clock.reserve_runs([1 + changes])[0]
    last = pending.last_id(tx, body)
    assert last is not None and tx < last <= str(clock.last) < clock.next()
