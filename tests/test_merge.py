"""Tests for ``dimpledb_sa.sync.merge``: pulled transactions -> change log -> rows, last
write wins per attribute.

Most tests call :func:`dimpledb_sa.sync.merge.merge` directly with transactions taken from
another device's log or forged with explicit ids, on SQLite files with foreign keys on;
a few go through ``sync`` on a memory remote to see the clock, the cursors and the signal.
"""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from databases import Databases
from models import Folder, Item, Note, Tag
from models import OldSyncBase as OldBase
from sqlalchemy import delete, func, select
from syncworld import Device, Devices, Ticker, memory_devices, recording

from dimpledb_sa.core import schema
from dimpledb_sa.core.changelog import transactions_since
from dimpledb_sa.core.clock import HybridClock, offset_id
from dimpledb_sa.sync.merge import MergeResult, merge, replay_held
from dimpledb_sa.sync.wire import ChangeRow, TxRecord

NOTE_ATTRS = ("id", "title", "body", "done", "rank")


@pytest.fixture
def devs(tmp_path: Path, database: str, databases: Databases) -> Iterator[Devices]:
    with memory_devices(tmp_path, "merge", database=database, databases=databases
                        ) as d:
        yield d


def apply(dev: Device, txs: list[TxRecord]) -> MergeResult:
    with dev.db.engine.begin() as conn:
        return merge(dev.db.replica, conn, txs)


def own_transactions(dev: Device) -> list[TxRecord]:
    with dev.db.engine.connect() as conn:
        return transactions_since(conn, dev.db.author_id, None)


class Forge:
    """Hand-made transactions, each later than the one before (one clock, 1 ms apart)."""

    def __init__(self) -> None:
        self.clock = HybridClock(now_ns=Ticker())

    def tx(self, author: str, *changes: tuple[str, str, str, Any, Any]) -> TxRecord:
        """``changes``: (entity_type, entity_id, attribute, old value, new value)."""
        ids = self.clock.reserve(1 + len(changes))
        rows: list[ChangeRow] = [
            (cid, ids[0], etype, eid, attr, _json(old), _json(new))
            for cid, (etype, eid, attr, old, new) in zip(ids[1:], changes, strict=True)
        ]
        return (ids[0], author, rows)

    def insert(self, author: str, eid: str, title: str, body: str | None = None,
               done: bool = False, rank: int | None = None) -> TxRecord:
        values = (eid, title, body, done, rank)
        return self.tx(author, *(("note", eid, a, None, v)
                                 for a, v in zip(NOTE_ATTRS, values, strict=True)))

    def edit(self, author: str, eid: str, attr: str, old: Any, new: Any) -> TxRecord:
        return self.tx(author, ("note", eid, attr, old, new))

    def delete(self, author: str, eid: str) -> TxRecord:
        return self.tx(author, ("note", eid, "id", eid, None))


def _json(v: Any) -> str | None:
    return None if v is None else json.dumps(v)


AUTHORS = [str(uuid.UUID(int=(0x0190 << 112) | (7 << 76) | (2 << 62) | k)) for k in (1, 2, 3)]


# --------------------------------------------------------------------------- idempotence


def test_applying_the_same_transactions_twice_changes_nothing(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    note = Note(title="one", rank=1)
    folder = Folder(name="f", items=[Item(label="x")])
    a.add(note, folder)
    a.edit(Note, note.id, title="two", done=True)
    a.delete(Item, folder.items[0].id)
    txs = own_transactions(a)
    first = apply(b, txs)
    assert first.stored == 3 and first.applied > 0
    rows, log = b.snapshot(), b.log()
    assert rows == a.snapshot() and log == a.log()
    again = apply(b, txs)
    assert (again.stored, again.applied, again.held) == (0, 0, 0)
    assert again.applied_changes == [] and again.tables == set()
    twice_in_one = apply(b, txs + txs)
    assert twice_in_one.stored == 0
    assert b.snapshot() == rows and b.log() == log


def test_a_bundle_fetched_again_after_its_cursor_was_lost_changes_nothing(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title="x"), Note(title="y"))
    a.sync()
    assert b.sync().applied == 10
    rows, log = b.snapshot(), b.log()
    with b.db.engine.begin() as conn:
        conn.execute(delete(schema.cursors))
    with recording(b.db) as rec:
        report = b.sync()
    assert (report.pulled, report.applied) == (1, 0)  # downloaded again, merged as a no-op
    assert rec.events == []
    assert b.snapshot() == rows and b.log() == log


# --------------------------------------------------------------------------- order


def test_any_arrival_order_gives_the_same_rows(devs: Devices) -> None:
    """Each transaction comes from its own author; every permutation of three replicas'
    worth of conflicting transactions gives the same rows and the same log."""
    f = Forge()
    n1, n2, n3 = (str(uuid.uuid4()) for _ in range(3))
    txs = [
        f.insert(AUTHORS[0], n1, "n1", rank=1),
        f.insert(AUTHORS[1], n2, "n2 from b", body="b"),
        f.insert(AUTHORS[2], n2, "n2 from c"),  # the same id inserted twice: later wins
        f.edit(AUTHORS[1], n1, "title", "n1", "n1 edited by b"),
        f.delete(AUTHORS[0], n1),
        f.edit(AUTHORS[2], n1, "rank", 1, 9),  # later than the delete: stays deleted
        f.insert(AUTHORS[1], n3, "n3"),
        f.delete(AUTHORS[2], n3),
        f.insert(AUTHORS[0], n3, "n3 again", done=True),  # re-insert after the delete
        f.edit(AUTHORS[1], n2, "body", "b", "b2"),
    ]
    reference: tuple[Any, ...] | None = None
    rng = random.Random(20240711)
    orders = [list(range(len(txs))), list(reversed(range(len(txs))))]
    orders += [rng.sample(range(len(txs)), len(txs)) for _ in range(6)]
    for k, order in enumerate(orders):
        dev = devs.new(f"r{k}")
        batch: list[TxRecord] = []
        for i in order:  # several merges of various sizes
            batch.append(txs[i])
            if len(batch) == 1 + k % 3:
                apply(dev, batch)
                batch = []
        apply(dev, batch)
        state = (dev.snapshot(), dev.log())
        if reference is None:
            reference = state
        assert state == reference, f"order {order}"
        devs.close(dev)
    assert reference is not None
    notes = {r[0]: r for r in reference[0]["note"]}
    assert set(notes) == {n2, n3}
    assert notes[n2] == (n2, "b2", False, None, "n2 from c")  # body set after c's insert
    assert notes[n3] == (n3, None, True, None, "n3 again")


@pytest.mark.parametrize("case", ["edit-after-delete", "edit-before-delete",
                                  "insert-before-delete", "insert-after-delete"])
def test_delete_rules(devs: Devices, case: str) -> None:
    """A delete wins over every change not later than it; only a later insert undoes it."""
    f = Forge()
    eid = str(uuid.uuid4())
    created = f.insert(AUTHORS[0], eid, "created", rank=1)
    if case == "edit-before-delete":
        txs = [created, f.edit(AUTHORS[1], eid, "title", "created", "edited"),
               f.delete(AUTHORS[2], eid)]
        expected = None
    elif case == "edit-after-delete":
        txs = [created, f.delete(AUTHORS[2], eid),
               f.edit(AUTHORS[1], eid, "title", "created", "edited")]
        expected = None
    elif case == "insert-before-delete":
        txs = [created, f.insert(AUTHORS[1], eid, "inserted"), f.delete(AUTHORS[2], eid)]
        expected = None
    else:
        txs = [created, f.delete(AUTHORS[2], eid),
               f.edit(AUTHORS[0], eid, "rank", 1, 2),
               f.insert(AUTHORS[1], eid, "inserted")]
        expected = {"id": eid, "title": "inserted", "body": None, "done": False, "rank": None}
    for k, order in enumerate(itertools.permutations(txs)):
        dev = devs.new(f"r{k}")
        for tx in order:
            apply(dev, [tx])
        assert dev.get(Note, eid) == expected, [t[0] for t in order]
        devs.close(dev)


def test_local_rows_follow_the_log_after_merging(devs: Devices) -> None:
    """A replica that deleted a row locally, then merges older edits of it, keeps it deleted;
    one that has it merges only the newer values."""
    a, b = devs.new("a"), devs.new("b")
    note = Note(title="t0", body="b0")
    a.add(note)
    apply(b, own_transactions(a))
    b.edit(Note, note.id, title="t-b")
    a.edit(Note, note.id, title="t-a", body="b-a")  # later than b's edit
    result = apply(b, own_transactions(a))
    assert [c[4] for c in result.applied_changes] == ["title", "body"]
    assert b.get(Note, note.id) == {"id": note.id, "title": "t-a", "body": "b-a",
                                    "done": False, "rank": None}
    b.delete(Note, note.id)
    a.edit(Note, note.id, rank=3)  # later than b's delete, but not an insert
    result = apply(b, own_transactions(a))
    assert result.applied_changes == [] and b.get(Note, note.id) is None


# --------------------------------------------------------------------------- clock


def test_local_ids_sort_after_everything_pulled_from_a_clock_in_the_future(
    devs: Devices
) -> None:
    future = time.time_ns() + 86_400 * 10**9  # a device whose clock is a day ahead
    ahead = devs.new("ahead", clock=HybridClock(now_ns=lambda: future))
    local = devs.new("local", clock=HybridClock(), max_drift=timedelta(days=2))
    note = Note(title="from the future")
    ahead.add(note, Note(title="also"))
    ahead.edit(Note, note.id, body="later")
    ahead.sync()
    local.sync()
    pulled = max(max(c[0], c[1]) for c in ahead.log())
    local.edit(Note, note.id, title="now")
    local.add(Note(title="new"))
    mine = [c for c in local.log() if c not in ahead.log()]
    assert mine and min(min(c[0], c[1]) for c in mine) > pulled
    local.sync()
    ahead.sync()
    assert ahead.get(Note, note.id)["title"] == "now"  # type: ignore[index]
    for tx in own_transactions(local):
        assert tx[0] > pulled


def test_the_clock_moves_past_every_pulled_id_even_out_of_order(devs: Devices) -> None:
    dev = devs.new("dev", clock=HybridClock(), max_drift=timedelta(hours=2))
    f = Forge()
    f.clock = HybridClock(now_ns=lambda: time.time_ns() + 3600 * 10**9)
    eid = str(uuid.uuid4())
    tx_id, author, rows = f.insert(AUTHORS[0], eid, "t")
    shuffled = [rows[3], rows[0], rows[4], rows[1], rows[2]]  # the latest change not last
    apply(dev, [(tx_id, author, shuffled)])
    assert dev.get(Note, eid) is not None
    newest = max(r[0] for r in rows)
    assert dev.db.clock.next() > newest


def test_after_a_restart_local_ids_still_sort_after_every_pulled_id(devs: Devices) -> None:
    """Two authors wrote in the same (future) millisecond with overlapping counters: x a run
    of five changes (counters 1-5), y one change (counter 2). After a restart the clock is
    rebuilt from the log, and a local edit must still sort after x's last change, or it
    loses to it (here: the rank) on every other replica."""
    future = time.time_ns() + 3600 * 10**9
    x_clock = HybridClock(now_ns=lambda: future)
    y_clock = HybridClock(now_ns=lambda: future)
    eid = str(uuid.uuid4())
    tx_x, first_x = x_clock.reserve_runs([1, 5])
    x_changes: list[ChangeRow] = [
        (offset_id(first_x, k), tx_x, "note", eid, attr, None, _json(value))
        for k, (attr, value) in enumerate(zip(NOTE_ATTRS, (eid, "x", None, False, 1),
                                              strict=True))]
    y_clock.reserve(1)
    tx_y, first_y = y_clock.reserve_runs([1, 1])
    y_changes: list[ChangeRow] = [(first_y, tx_y, "note", eid, "body", None, _json("y"))]
    dev = devs.new("dev", clock=HybridClock(), max_drift=timedelta(hours=2))
    apply(dev, [(tx_x, AUTHORS[0], x_changes), (tx_y, AUTHORS[1], y_changes)])
    newest = max(c[0] for c in x_changes + y_changes)
    devs.close(dev)
    restarted = devs.new("restarted", file=dev.path, create=False, clock=HybridClock(),
                         max_drift=timedelta(hours=2))
    restarted.edit(Note, eid, rank=2)
    mine = [c for c in restarted.db.history(Note, eid) if c.author == restarted.db.author_id]
    assert mine and mine[0].id > newest


# --------------------------------------------------------------------------- signal


def test_changes_committed_reports_what_a_sync_applied(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    note = Note(title="t")
    folder = Folder(name="f")
    a.add(note, folder)
    a.sync()
    with recording(b.db) as rec:
        b.sync()
    [event] = rec.events
    assert event.origin == "sync" and event.tables == frozenset({"note", "folder"})
    assert len(event.changes) == 5 + 2
    assert {ch.author for ch in event.changes} == {a.db.author_id}
    assert {(ch.entity_type, ch.attribute, ch.new_value) for ch in event.changes} >= {
        ("note", "title", "t"), ("folder", "name", "f"), ("note", "done", False)}

    b.edit(Note, note.id, title="b's, newer")
    a.edit(Note, note.id, title="a's, newest")
    b.edit(Folder, folder.id, name="g")
    a.sync()
    with recording(b.db) as rec:
        report = b.sync()
    [event] = rec.events
    assert report.applied == 1
    assert event.tables == frozenset({"note"})
    assert [(ch.attribute, ch.new_value) for ch in event.changes] == [("title", "a's, newest")]

    a.edit(Note, note.id, body="a's, older")
    b.edit(Note, note.id, body="b's, newer")
    with recording(a.db) as rec:
        report = a.sync()  # pulls b's two transactions: only the folder's name is newer
    assert (report.pulled, report.applied) == (2, 1)
    assert [e.tables for e in rec.events] == [frozenset({"folder"})]
    with recording(b.db) as rec:
        report = b.sync()  # pulls a's older edit: nothing changes, nothing is announced
    assert (report.pulled, report.applied) == (1, 0)
    assert rec.events == []


# --------------------------------------------------------------------------- foreign keys


def test_child_before_parent_is_held_until_the_parent_arrives(devs: Devices) -> None:
    a, b, c = devs.new("a"), devs.new("b"), devs.new("c")
    folder = Folder(name="parent")
    a.add(folder)
    apply(b, own_transactions(a))
    item = Item(folder_id=folder.id, label="child")
    b.add(item)
    result = apply(c, own_transactions(b))  # the child, from b, before its parent from a
    assert result.held == 1 and result.applied_changes == []
    assert c.get(Item, item.id) is None
    assert c.held() == [("item", item.id, "id", "missing parent row")]
    with c.db.engine.connect() as conn:
        assert replay_held(c.db.replica, conn) == 0  # the parent is still missing: stays held
    assert len(c.held()) == 1

    result = apply(c, own_transactions(a))
    assert c.get(Folder, folder.id) is not None
    with c.db.engine.connect() as conn:
        assert replay_held(c.db.replica, conn) == 3
    assert c.get(Item, item.id) == {"id": item.id, "folder_id": folder.id, "label": "child"}
    assert c.held() == []
    with c.db.engine.connect() as conn:
        if devs.database == "sqlite":  # PostgreSQL checked every statement already
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        assert conn.execute(select(func.count()).select_from(schema.held)).scalar() == 0
    assert c.snapshot() == b.snapshot()


def test_a_local_child_of_a_parent_deleted_elsewhere_is_held(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    folder = Folder(name="f")
    a.add(folder)
    a.sync()
    b.sync()
    a.delete(Folder, folder.id)
    item = Item(folder_id=folder.id, label="added meanwhile")
    b.add(item)
    a.sync()
    report = b.sync()  # the parent goes, so its new child cannot stay (nor fail the commit)
    assert report.errors == {} and report.held == 0 and report.conflicts == 1
    assert b.rows(Folder) == [] and b.rows(Item) == []
    [conflict] = b.db.conflicts()  # kept out, as a foreign-key conflict
    assert (conflict.kind, conflict.entity_id, conflict.attribute, conflict.other_entity_id
            ) == ("foreign_key", item.id, "folder_id", folder.id)
    assert [c.attribute for c in b.db.history(Item, item.id)] == ["id", "folder_id", "label"]
    a.sync()
    assert a.held() == b.held() == []
    assert a.db.conflicts() == b.db.conflicts()
    assert a.snapshot() == b.snapshot() and a.log() == b.log()

    a.add(Folder(id=folder.id, name="f again"))  # the parent comes back, and the child too
    a.sync()
    b.sync()
    for d in (a, b):
        assert d.get(Item, item.id) == {"id": item.id, "folder_id": folder.id,
                                        "label": "added meanwhile"}
        assert d.held() == [] and d.db.conflicts() == []
    assert a.snapshot() == b.snapshot() and a.log() == b.log()


def test_a_held_entity_that_still_cannot_apply_stays_held_alone(devs: Devices) -> None:
    """Held changes of a table this schema lacked: once it has the table, replay applies
    every entity it can; one whose insert names another key stays held."""
    f = Forge()
    good, bad, taken = (str(uuid.uuid4()) for _ in range(3))
    txs = [f.tx(AUTHORS[0], ("tag", good, "id", None, good), ("tag", good, "word", None, "ok")),
           f.tx(AUTHORS[1], ("tag", bad, "id", None, taken), ("tag", bad, "word", None, "x"))]
    old = devs.new("old", models=OldBase)
    result = apply(old, txs)
    assert result.held == 4 and len(old.held()) == 4
    path = old.path
    devs.close(old)
    new = devs.new("new", file=path, create=False)
    Tag.__table__.create(new.db.engine)  # type: ignore[attr-defined]
    with recording(new.db) as rec:
        assert new.db.replay_held() == 2
    assert [e.tables for e in rec.events] == [frozenset({"tag"})]
    assert new.rows(Tag) == [(good, "ok")]
    assert {h[1] for h in new.held()} == {bad}
    assert new.db.replay_held() == 0
    assert {h[1] for h in new.held()} == {bad}
