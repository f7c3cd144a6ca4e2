"""Tests for ``db.revert()`` (:mod:`dimpledb_sa.capture.revert`): undo as a new transaction.

Real SQLite files with foreign keys on (``syncworld``): reverting an insert, an update and
a delete; attributes changed later are left alone; redo (a revert of a revert); parent and
child rows; clean failures that write nothing (unknown or pruned transaction, a unique
collision, a row left pointing at a deleted one); another author's transaction reverted
after a sync and seen on every device; and the property that undoing the last ``k``
transactions newest first gives back exactly the rows as they were before them (on the
device that reverted and on one that merged its log), while ``as_of`` at each transaction's
time shows exactly the rows of then.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import Folder, Item, Note
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from syncworld import (
    Device,
    Devices,
    device_set,
    recording,
    sync_all,
)

import dimpledb_sa as dimple
from dimpledb_sa.capture.revert import DELETE, RESTORE, UPDATE, plan_entity
from dimpledb_sa.core import changelog, meta

__all__: list[str] = []


class UniqueBase(DeclarativeBase):
    pass


class Handle(UniqueBase):
    __tablename__ = "handle"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    name: Mapped[str] = mapped_column(unique=True)


@pytest.fixture(name="devs")
def devs_fixture(tmp_path: Path) -> Iterator[Devices]:
    with device_set(tmp_path, f"memory://revert-{tmp_path.name}") as devs:
        yield devs


def last_tx(dev: Device) -> str:
    """The newest transaction id in ``dev``'s log."""
    with dev.db.engine.connect() as conn:
        return changelog.all_transactions(conn)[-1][0]  # folded or pending


def log_size(dev: Device) -> int:
    return len(dev.log())


# ----------------------------------------------------------------------------- the three kinds


def test_revert_an_insert_deletes_the_row(devs: Devices) -> None:
    a = devs.new("a")
    note = Note(title="milk", body="2 l")
    a.add(note)
    created = last_tx(a)
    new_tx = a.db.revert(created)
    assert new_tx is not None and new_tx > created
    assert a.get(Note, note.id) is None
    last = a.db.history(Note, note.id)[-1]
    assert (last.transaction_id, last.attribute, last.old_value, last.new_value) == (
        new_tx, "id", note.id, None)
    assert last.author == a.db.author_id
    assert a.db.revert(created) is None  # nothing left to undo: no new transaction
    assert last_tx(a) == new_tx


def test_revert_an_update_restores_the_old_values(devs: Devices) -> None:
    a = devs.new("a")
    note = Note(title="milk", body="2 l", rank=1)
    a.add(note)
    a.edit(Note, note.id, title="oat milk", rank=5, done=True)
    edit = last_tx(a)
    new_tx = a.db.revert(edit)
    assert a.get(Note, note.id) == {"id": note.id, "title": "milk", "body": "2 l",
                                    "done": False, "rank": 1}
    undo = [c for c in a.db.history(Note, note.id) if c.transaction_id == new_tx]
    assert {(c.attribute, c.old_value, c.new_value) for c in undo} == {
        ("title", "oat milk", "milk"), ("rank", 5, 1), ("done", True, False)}
    assert a.db.revert(edit) is None


def test_revert_a_delete_restores_the_row_with_its_values(devs: Devices) -> None:
    a = devs.new("a")
    note = Note(title="milk", body="2 l", rank=3)
    a.add(note)
    a.edit(Note, note.id, body="1 l", done=True)
    before = a.get(Note, note.id)
    a.delete(Note, note.id)
    new_tx = a.db.revert(last_tx(a))
    assert new_tx is not None
    assert a.get(Note, note.id) == before
    undo = [c for c in a.db.history(Note, note.id) if c.transaction_id == new_tx]
    # recorded as an insert: the key first, then every column, old values null
    assert [c.attribute for c in undo] == ["id", "title", "body", "done", "rank"]
    assert all(c.old_value is None for c in undo)
    assert [c.new_value for c in undo] == [note.id, "milk", "1 l", True, 3]
    with a.Session() as s:  # the ORM sees it again
        assert s.get(Note, note.id) is not None


def test_attributes_changed_later_are_left_alone(devs: Devices) -> None:
    a = devs.new("a")
    note = Note(title="milk", body="2 l")
    a.add(note)
    a.edit(Note, note.id, title="bulk", body="bulk")  # the accidental bulk edit
    bulk = last_tx(a)
    a.edit(Note, note.id, title="fixed by hand")
    a.db.revert(bulk)
    assert a.get(Note, note.id) == {"id": note.id, "title": "fixed by hand", "body": "2 l",
                                    "done": False, "rank": None}
    a.edit(Note, note.id, body="changed again")
    assert a.db.revert(bulk) is None  # body was reverted, then changed again: left alone


def test_revert_of_a_revert_redoes(devs: Devices) -> None:
    a = devs.new("a")
    note = Note(title="milk")
    a.add(note)
    created = last_tx(a)
    a.edit(Note, note.id, title="oat milk")
    edit = last_tx(a)
    undo = a.db.revert(edit)
    assert a.get(Note, note.id)["title"] == "milk"  # type: ignore[index]
    redo = a.db.revert(undo)
    assert redo is not None and a.get(Note, note.id)["title"] == "oat milk"  # type: ignore[index]
    gone = a.db.revert(created)
    assert gone is not None and a.get(Note, note.id) is None
    back = a.db.revert(gone)
    assert back is not None and a.get(Note, note.id)["title"] == "oat milk"  # type: ignore[index]


def test_revert_sends_changes_committed_once(devs: Devices) -> None:
    a = devs.new("a")
    note = Note(title="milk")
    a.add(note)
    a.edit(Note, note.id, title="oat milk")
    edit = last_tx(a)
    with recording(a.db) as rec:
        new_tx = a.db.revert(edit)
        assert a.db.revert(edit) is None
    [event] = rec.events
    assert event.origin == "local" and event.tables == frozenset({"note"})
    assert [(c.transaction_id, c.attribute, c.new_value) for c in event.changes] == [
        (new_tx, "title", "milk")]


def test_live_query_sees_a_revert(devs: Devices) -> None:
    a = devs.new("a")
    a.add(Note(title="milk"))
    created = last_tx(a)
    seen: list[list[str]] = []
    with a.db.live(select(Note.title)) as live:
        live.subscribe(seen.append)
        a.db.revert(created)
    assert seen == [["milk"], []]


# ----------------------------------------------------------------------------- parents and children


def test_parent_and_child_rows_with_foreign_keys_on(devs: Devices) -> None:
    a = devs.new("a")  # PRAGMA foreign_keys=ON
    folder = Folder(name="home", items=[Item(label="lamp"), Item(label="chair")])
    a.add(folder)
    created = last_tx(a)
    rows = a.snapshot()
    undo = a.db.revert(created)  # children deleted before their parent
    assert a.rows(Folder) == [] and a.rows(Item) == []
    a.db.revert(undo)  # parents restored before their children
    assert a.snapshot() == rows
    a.delete(Folder, folder.id)  # the ORM cascade deletes the items in the same transaction
    assert a.rows(Item) == []
    a.db.revert(last_tx(a))
    assert a.snapshot() == rows
    with a.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []


def test_revert_that_would_orphan_a_child_writes_nothing(devs: Devices) -> None:
    a = devs.new("a")
    folder = Folder(name="home")
    a.add(folder)
    created = last_tx(a)
    a.add(Item(folder_id=folder.id, label="lamp"))
    rows, size, newest = a.snapshot(), log_size(a), last_tx(a)
    with pytest.raises(dimple.RevertError, match=r"item .* refers to .*nothing was written"
                       ) as info:
        a.db.revert(created)
    assert info.value.transaction_id == created
    assert (a.snapshot(), log_size(a), last_tx(a)) == (rows, size, newest)


def test_restoring_a_child_of_a_deleted_parent_writes_nothing(tmp_path: Path) -> None:
    with device_set(tmp_path, "memory://revert-orphan") as devs:
        a = devs.new("a", foreign_keys=False)  # the revert checks, whatever SQLite enforces
        folder = Folder(name="home", items=[Item(label="lamp")])
        a.add(folder)
        item_id = folder.items[0].id
        a.delete(Item, item_id)
        item_gone = last_tx(a)
        a.delete(Folder, folder.id)
        rows, size = a.snapshot(), log_size(a)
        with pytest.raises(dimple.RevertError, match="does not exist now"):
            a.db.revert(item_gone)
        assert (a.snapshot(), log_size(a)) == (rows, size)
        a.db.revert(last_tx(a))  # restore the folder first: then the item can come back
        assert a.db.revert(item_gone) is not None
        assert a.get(Item, item_id) == {"id": item_id, "folder_id": folder.id,
                                        "label": "lamp"}


def test_restore_that_breaks_a_unique_constraint_writes_nothing(devs: Devices) -> None:
    a = devs.new("a", models=UniqueBase)
    first = Handle(name="ann")
    a.add(first)
    a.delete(Handle, first.id)
    deleted = last_tx(a)
    a.add(Handle(name="ann"))  # the name is taken again
    rows, size = a.snapshot(), log_size(a)
    with pytest.raises(dimple.RevertError, match=r"(?i)unique.*nothing was written"):
        a.db.revert(deleted)
    assert (a.snapshot(), log_size(a)) == (rows, size)


# ----------------------------------------------------------------------------- bad input


def test_unknown_transaction_raises_history_error(devs: Devices) -> None:
    a = devs.new("a")
    a.add(Note(title="milk"))
    size = log_size(a)
    with pytest.raises(dimple.HistoryError, match="not in this database's change log"):
        a.db.revert(dimple.new_id())
    with pytest.raises(LookupError):  # HistoryError is a LookupError too
        a.db.revert(dimple.new_id())
    with pytest.raises(ValueError, match="not a transaction id"):
        a.db.revert("yesterday")
    assert log_size(a) == size


def test_revert_accepts_a_uuid_object_and_any_spelling(devs: Devices) -> None:
    import uuid

    a = devs.new("a")
    note = Note(title="milk")
    a.add(note)
    assert a.db.revert(uuid.UUID(last_tx(a))) is not None
    a.db.revert(last_tx(a).upper())
    assert a.get(Note, note.id) is not None


def test_pruned_history_cannot_be_reverted(devs: Devices) -> None:
    a = devs.new("a")
    note = Note(title="milk")
    a.add(note)
    created = last_tx(a)
    a.edit(Note, note.id, title="oat milk")
    with a.db.engine.begin() as conn:  # what prune_history records when it drops changes
        meta.put(conn, meta.PRUNED_BEFORE, last_tx(a))
    with pytest.raises(dimple.HistoryError, match="prune_history"):
        a.db.revert(created)
    assert a.db.revert(last_tx(a)) is not None  # newer than the horizon: fine


def test_untracked_table_is_refused(devs: Devices) -> None:
    a = devs.new("a")
    folder = Folder(name="home", items=[Item(label="lamp")])
    a.add(folder)
    created = last_tx(a)
    narrow = dimple.DimpleDb(a.db.engine, [Folder])  # item is not tracked by this one
    try:
        with pytest.raises(dimple.RevertError, match="item"):
            narrow.revert(created)
    finally:
        narrow.close()
    assert len(a.rows(Item)) == 1


# ----------------------------------------------------------------------------- across devices


def test_revert_of_another_authors_transaction_is_seen_on_every_device(devs: Devices) -> None:
    a, b, c = devs.new("a"), devs.new("b"), devs.new("c")
    note = Note(title="milk", body="2 l")
    folder = Folder(name="home", items=[Item(label="lamp")])
    a.add(note, folder)
    sync_all(a, b, c)
    a.edit(Note, note.id, title="bulk", body="bulk")
    bulk = last_tx(a)
    a.delete(Folder, folder.id)  # and its item, by cascade
    deleted = last_tx(a)
    sync_all(a, b)
    assert b.db.revert(bulk) is not None  # b undoes a's transactions
    assert b.db.revert(deleted) is not None
    assert b.get(Note, note.id) == {"id": note.id, "title": "milk", "body": "2 l",
                                    "done": False, "rank": None}
    assert [r[2] for r in b.rows(Item)] == ["lamp"]  # (id, folder_id, label)
    sync_all(a, b, c)
    assert a.snapshot() == b.snapshot() == c.snapshot()
    assert a.log() == b.log() == c.log()
    late = devs.new("late")  # a new device pulls everything and ends the same
    late.sync()
    assert late.snapshot() == a.snapshot()


def test_a_revert_merges_to_the_same_rows(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    keep = Note(title="keep", body="x")
    drop = Note(title="drop")
    folder = Folder(name="home", items=[Item(label="lamp"), Item(label="chair")])
    a.add(keep, drop, folder)
    sync_all(a, b)
    with a.Session() as s:  # one transaction touching several rows
        s.get(Note, keep.id).body = "y"  # type: ignore[union-attr]
        s.delete(s.get(Note, drop.id))
        s.delete(s.get(Folder, folder.id))
        s.add(Note(title="new"))
        s.commit()
    mixed = last_tx(a)
    sync_all(a, b)
    b.edit(Note, keep.id, title="kept, edited on b")  # a later change that stays
    sync_all(a, b)
    assert a.db.revert(mixed) is not None
    sync_all(a, b)
    assert a.snapshot() == b.snapshot()
    assert b.get(Note, keep.id) == {"id": keep.id, "title": "kept, edited on b", "body": "x",
                                    "done": False, "rank": None}
    assert b.get(Note, drop.id) is not None
    with b.Session() as s:
        assert sorted(s.scalars(select(Note.title))) == ["drop", "kept, edited on b"]
    assert len(b.rows(Item)) == 2 and b.held() == []


# ----------------------------------------------------------------------------- planning alone


def _row(cid: str, attr: str, old: str | None, new: str | None, tx: str = "t"
         ) -> tuple[str, str, str, str, str, str | None, str | None]:
    return (cid, tx, "note", "e", attr, old, new)


def test_plan_entity_kinds() -> None:
    insert = [_row("1", "id", None, '"e"', "t1"), _row("2", "title", None, '"a"', "t1")]
    update = [_row("3", "title", '"a"', '"b"', "t2")]
    delete = [_row("4", "id", '"e"', None, "t3")]
    history = [*insert, *update, *delete]
    u = plan_entity("id", delete, history)
    assert u is not None and u.kind == RESTORE and u.values == {
        "id": (None, '"e"'), "title": (None, '"b"')}
    assert plan_entity("id", update, history) is None  # the row is deleted now
    assert plan_entity("id", insert, history) is None
    alive = [*insert, *update]
    u = plan_entity("id", update, alive)
    assert u is not None and u.kind == UPDATE and u.values == {"title": ('"b"', '"a"')}
    u = plan_entity("id", insert, alive)
    assert u is not None and u.kind == DELETE and u.values == {"id": ('"e"', None)}
    later = [*alive, _row("5", "title", '"b"', '"c"', "t4")]
    assert plan_entity("id", update, later) is None  # changed again since
    # an earlier change that the recorded old value did not see (another device's) wins
    concurrent = [*insert, _row("2a", "title", '"a"', '"z"', "tb"), *update]
    u = plan_entity("id", update, concurrent)
    assert u is not None and u.values == {"title": ('"b"', '"z"')}


# ----------------------------------------------------------------------------- the property

OPS = st.lists(st.tuples(st.sampled_from(["add_note", "edit_note", "delete_note",
                                          "add_folder", "edit_item", "move_item",
                                          "delete_folder", "mixed"]),
                         st.integers(0, 7), st.sampled_from(["a", "b", "c", None])),
               min_size=1, max_size=10)


def _apply(dev: Device, op: str, n: int, word: str | None) -> None:
    """One transaction of the random workload (an op with nothing to act on adds a folder)."""
    with dev.Session() as s:
        notes = list(s.scalars(select(Note).order_by(Note.id)))
        folders = list(s.scalars(select(Folder).order_by(Folder.id)))
        items = list(s.scalars(select(Item).order_by(Item.id)))
        if op == "add_note":
            s.add(Note(title=word or "x", body=word, rank=n))
        elif op == "add_folder":
            s.add(Folder(name=word or "f", items=[Item(label=f"i{k}") for k in range(n % 3)]))
        elif op == "edit_note" and notes:
            note = notes[n % len(notes)]
            note.body, note.done, note.rank = word, not note.done, (note.rank or 0) + n
        elif op == "delete_note" and notes:
            s.delete(notes[n % len(notes)])
        elif op == "edit_item" and items:
            items[n % len(items)].label = word or "l"
        elif op == "move_item" and items and folders:
            items[n % len(items)].folder = folders[n % len(folders)]
        elif op == "delete_folder" and folders:
            s.delete(folders[n % len(folders)])
        elif op == "mixed" and notes:
            notes[0].title = word or "m"
            s.add(Folder(name="m", items=[Item(label="m")]))
            if len(notes) > 1:
                s.delete(notes[-1])
        else:
            s.add(Folder(name=op, items=[Item(label=op) for _ in range(n % 2)]))
        s.commit()


MODELS: list[type[Any]] = [Note, Folder, Item]


def _state(dev: Device) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for model in MODELS:
        with dev.db.engine.connect() as conn:
            for row in conn.execute(select(model.__table__)).mappings():
                out[(model.__tablename__, row["id"])] = dict(row)
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, k=st.integers(1, 10))
def test_reverting_the_last_k_in_reverse_order_restores_the_earlier_rows(
        ops: list[tuple[str, int, str | None]], k: int) -> None:
    with tempfile.TemporaryDirectory() as folder, device_set(
            Path(folder), f"memory://revert-prop-{Path(folder).name}") as devs:
        a = devs.new("a")
        states = [_state(a)]
        txs: list[str] = []
        for op, n, word in ops:
            _apply(a, op, n, word)
            tx = last_tx(a)
            if not txs or tx != txs[-1]:  # (a commit that changed nothing records nothing)
                txs.append(tx)
                states.append(_state(a))
        k = min(k, len(txs))
        for tx in reversed(txs[len(txs) - k:]):
            a.db.revert(tx)
        assert _state(a) == states[len(txs) - k]
        b = devs.new("b")  # a device that merges the whole log, reverts included
        sync_all(a, b, rounds=1)
        assert _state(b) == _state(a)
        # and the history, read as of each transaction, shows exactly the rows of then
        by_name = {m.__tablename__: m for m in MODELS}
        seen = {key for st_ in states for key in st_}
        for tx, state in zip(txs, states[1:], strict=True):
            when = dimple.Change(tx, tx, "", "", "", "", None, None).timestamp
            for name, eid in seen:
                assert a.db.as_of(by_name[name], eid, when) == state.get((name, eid))
