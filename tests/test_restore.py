"""Value-less log rows (``prune_history`` drops the values of old winners the live rows
hold): every reader reads them back from the live rows, every writer stores them back
before it changes the row (``dimpledb_sa.core.restore``). The seven regressions a review
found in an earlier attempt are tests here: re-pushing to a new remote, healing an
unreadable bundle, untracking a table or dropping a column, undoing a delete, a stale
session's old value, the CLI, and the layout version."""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import conflictmodels as cm
import fsspec
import pytest
from databases import Databases
from models import Folder, Note
from sqlalchemy import ForeignKey, String, delete, event, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from syncworld import Device, Devices, memory_devices, sync_all, titles, write_file

import dimpledb_sa as dimple
from dimpledb_sa import cli
from dimpledb_sa.core import changelog, meta
from dimpledb_sa.core.changes import ROW_ENTITY_ID, ROW_ENTITY_TYPE
from dimpledb_sa.core.clock import HybridClock
from dimpledb_sa.core.errors import DimpleError
from dimpledb_sa.core.restore import fill


class FlushBase(DeclarativeBase):
    """Children the flush itself writes: nulled foreign keys, deleted orphans."""


class Owner(FlushBase):
    __tablename__ = "rs_owner"
    id: Mapped[str] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    kids: Mapped[list[Kid]] = relationship()  # no delete cascade: the ORM nulls owner_id
    orphans: Mapped[list[Orphan]] = relationship(cascade="all, delete-orphan")


class Kid(FlushBase):
    __tablename__ = "rs_kid"
    id: Mapped[str] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("rs_owner.id"))


class Orphan(FlushBase):
    __tablename__ = "rs_orphan"
    id: Mapped[str] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("rs_owner.id"))


@pytest.fixture
def devs(tmp_path: Path, database: str, databases: Databases) -> Iterator[Devices]:
    with memory_devices(tmp_path, "restore", database=database, databases=databases,
                        encryption=False) as d:
        yield d


def new(devs: Devices, name: str, **kw: Any) -> Device:
    return devs.new(name, clock=HybridClock(), **kw)


def valueless(dev: Device) -> list[changelog.PackedRow]:
    with dev.db.engine.connect() as conn:
        return changelog.valueless_rows(conn, 1_000_000)


def pruned(dev: Device) -> None:
    """Sync, then prune everything (the winners' values go): some rows are value-less."""
    dev.sync()
    time.sleep(0.01)
    dev.db.prune_history(older_than=timedelta(0))
    assert valueless(dev), "the prune left every value in the log"


def test_values_are_dropped_and_read_back(devs: Devices) -> None:
    a = new(devs, "a")
    a.add(Note(id="n", title="hello", body="b", rank=1))
    before = a.log()
    history = [(c.attribute, c.new_value) for c in a.db.history(Note, "n")]
    pruned(a)
    assert a.log() == before
    assert [(c.attribute, c.new_value) for c in a.db.history(Note, "n")] == history
    with a.db.engine.connect() as conn:
        assert meta.get(conn, meta.VALUES_DROPPED_BEFORE) is not None


def test_a_new_remote_gets_the_pruned_winners(devs: Devices) -> None:
    """Regression 1: re-pushing pruned transactions sends their winning changes."""
    a = new(devs, "a")
    a.add(Note(id="n", title="hello", body="b", rank=1))
    pruned(a)
    devs.close(a)
    other = f"memory://restore-new-{uuid.uuid4().hex}/remote"
    a2 = new(devs, "a", remote=other, create=False)
    a2.sync()
    c = new(devs, "c", remote=other)
    c.sync()
    assert c.get(Note, "n") == a2.get(Note, "n") is not None


def test_an_unreadable_bundle_older_than_the_cutoff_heals(devs: Devices) -> None:
    """Regression 2: the writer re-sends a quarantined bundle's pruned transactions whole."""
    w, r = new(devs, "writer"), new(devs, "reader")
    for title in ("one", "two", "three"):
        w.add(Note(title=title))
        w.sync()
    remote = devs.remote
    assert isinstance(remote, str)
    fs = fsspec.filesystem("memory")
    root = remote.removeprefix("memory:/").removeprefix("/")
    names = _manifest_bundles(fs, root, w)
    path = f"{root}/{w.db.author_id}/{names[1]}"
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    write_file(fs, path, bytes(data))
    with contextlib.suppress(dimple.SyncError):
        r.sync()
    pruned(w)
    for _ in range(3):
        w.sync()
        with contextlib.suppress(dimple.SyncError):
            r.sync()
    assert sorted(titles(r)) == sorted(titles(w)) == ["one", "three", "two"]


def _manifest_bundles(fs: fsspec.AbstractFileSystem, root: str, dev: Device) -> list[str]:
    from syncworld import read_manifest

    return [b["filename"] for b in read_manifest(fs, root, dev.db.author_id)["bundles"]]


def test_an_untracked_table_keeps_its_values_for_late_devices(devs: Devices) -> None:
    """Regression 3 (a table): its values read back through reflection."""
    a, b = new(devs, "a"), new(devs, "b")
    a.add(Folder(id="f", name="inbox"))
    sync_all(a, b)
    pruned(a)
    devs.close(a)
    a2 = new(devs, "a", exclude=[Folder])
    a2.sync()
    a2.db.compact()
    c = new(devs, "c")
    c.sync()
    assert c.get(Folder, "f") == b.get(Folder, "f") is not None


def test_a_dropped_column_needs_its_values_restored_first(devs: Devices) -> None:
    """Regression 3 (a column): without restore_pruned_values a reader reads the dropped
    column's pruned value as null (and never fails); with it, a late device gets the
    value."""
    a, b = new(devs, "a"), new(devs, "b")
    a.add(Note(id="n", title="t", body="x", rank=5))
    sync_all(a, b)
    pruned(a)
    with a.db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE note RENAME COLUMN rank TO rank_gone")
    a.db.snapshot()
    assert [c.new_value for c in a.db.history(Note, "n") if c.attribute == "rank"] == [None]
    with a.db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE note RENAME COLUMN rank_gone TO rank")
    assert a.db.restore_pruned_values() > 0
    assert not valueless(a)
    with a.db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE note RENAME COLUMN rank TO rank_gone")
    a.db.compact()
    c = new(devs, "c")
    c.sync()
    assert c.get(Note, "n") == b.get(Note, "n")
    assert b.get(Note, "n") is not None and b.get(Note, "n")["rank"] == 5  # type: ignore[index]


def test_a_delete_after_a_prune_can_be_undone(devs: Devices) -> None:
    """Regression 4."""
    a = new(devs, "a")
    a.add(Note(id="n", title="t", body="x"))
    pruned(a)
    a.delete(Note, "n")
    assert not valueless(a)
    tx = a.db.history(Note, "n")[-1].transaction_id
    a.db.revert(tx)
    got = a.get(Note, "n")
    assert got is not None and got["title"] == "t" and got["body"] == "x"


def test_a_stale_session_does_not_make_replicas_diverge(devs: Devices) -> None:
    """Regression 5: the superseded value comes from the database row, not from the
    session's (stale) old value."""
    a = new(devs, "a", models=cm.Base)
    b = new(devs, "b", models=cm.Base)
    a.add(cm.User(id="u1", email="x0@"))
    sync_all(a, b)
    s = a.Session()
    obj = s.get(cm.User, "u1")
    assert obj is not None
    a.edit(cm.User, "u1", email="x@")
    sync_all(a, b)
    pruned(a)
    b.add(cm.User(id="u2", email="y@"))
    obj.email = "y@"
    s.commit()
    s.close()
    for d in (b, a, b, a):
        d.sync()
    assert a.rows(cm.User) == b.rows(cm.User)
    emails = [c.new_value for c in a.db.history(cm.User, "u1") if c.attribute == "email"]
    assert emails[0] == "x@"  # the database row's value, not the session's stale x0@


def test_writes_store_the_values_back(devs: Devices) -> None:
    """An ORM update, a Core UPDATE and a merged change each store the values of the rows
    they change first; the log then reads as before the prune."""
    a, b = new(devs, "a"), new(devs, "b")
    for i in range(3):
        a.add(Note(id=f"n{i}", title=f"t{i}", body="x", rank=i))
    sync_all(a, b)
    pruned(a)
    n = len(valueless(a))
    a.edit(Note, "n0", title="orm")
    assert len(valueless(a)) == n - 1
    with a.Session() as s, s.begin():
        s.execute(update(Note).where(Note.id == "n1").values(rank=10))
    assert len(valueless(a)) == n - 2
    b.edit(Note, "n2", body="merged")
    sync_all(b, a)
    assert not valueless(a)
    assert a.rows(Note) == b.rows(Note)


def test_as_of_and_snapshot_read_the_values(devs: Devices) -> None:
    a = new(devs, "a")
    a.add(Note(id="n", title="t", body="x", rank=3))
    pruned(a)
    time.sleep(0.005)
    between = datetime.now(UTC)
    time.sleep(0.005)
    a.edit(Note, "n", title="later")
    got = a.db.as_of(Note, "n", between)
    assert got is not None and got["title"] == "t" and got["rank"] == 3
    a.db.compact()
    c = new(devs, "c")
    c.sync()
    assert c.get(Note, "n") == a.get(Note, "n")


@pytest.mark.sqlite_only("the CLI test reads a SQLite file")
def test_the_cli_shows_the_values_it_read_back(devs: Devices) -> None:
    """Regression 6: CLI history shows the logged values, before and after the prune."""
    a = new(devs, "a")
    a.add(Note(id="n", title="hello", body="b", rank=1, done=True))
    a.sync()

    def run(*args: Any) -> Any:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main([str(x) for x in args]) == 0
        return json.loads(out.getvalue())

    before = run("history", a.path, "note", "n", "--json")
    pruned(a)
    assert run("history", a.path, "note", "n", "--json") == before


def test_a_newer_layout_is_refused(devs: Devices) -> None:
    """Regression 7: the layout version is written, and a newer one refused clearly."""
    a = new(devs, "a")
    a.add(Note(id="n", title="t"))
    pruned(a)
    with a.db.engine.begin() as conn:
        assert meta.get(conn, meta.LAYOUT_VERSION) == str(changelog.LAYOUT_VERSION)
        meta.put(conn, meta.LAYOUT_VERSION, str(changelog.LAYOUT_VERSION + 1))
    engine = a.db.engine
    devs.close(a)
    changelog._READY.pop(engine, None)
    a2 = new(devs, "a", create=False)
    with pytest.raises(DimpleError, match="layout version"):
        a2.db.history(Note, "n")


def test_create_all_and_a_commit_write_the_layout_version(devs: Devices) -> None:
    a = new(devs, "a")
    with a.db.engine.begin() as conn:
        assert meta.get(conn, meta.LAYOUT_VERSION) == str(changelog.LAYOUT_VERSION)
        meta.put(conn, meta.LAYOUT_VERSION, "2")
    engine = a.db.engine
    devs.close(a)
    changelog._READY.pop(engine, None)
    a2 = new(devs, "a", create=False)
    a2.add(Note(id="n", title="t"))  # an ordinary commit, no create_all
    with a2.db.engine.connect() as conn:
        assert meta.get(conn, meta.LAYOUT_VERSION) == str(changelog.LAYOUT_VERSION)


def test_a_reader_racing_a_writer_takes_the_values_it_stored(devs: Devices) -> None:
    """A value-less row read before a writer stored its values and changed the live row
    gets the stored values, not the live row's new ones."""
    a = new(devs, "a")
    a.add(Note(id="n", title="t", body="x"))
    pruned(a)
    with a.db.engine.connect() as conn:
        rows: list[Any] = list(changelog.valueless_rows(conn, 10))
    a.edit(Note, "n", title="new")
    with a.db.engine.connect() as conn:
        fill(conn, rows, range(len(rows)))
    assert any('"t"' in r[6] for r in rows)
    assert not any("new" in r[6] for r in rows)


def _owned(devs: Devices) -> tuple[Device, Device]:
    a = new(devs, "a", models=FlushBase)
    b = new(devs, "b", models=FlushBase)
    with a.Session() as s:
        o = Owner(id="p", name="P")
        o.kids.append(Kid(id="k", title="K"))
        o.orphans.append(Orphan(id="o", title="O"))
        s.add(o)
        s.commit()
    sync_all(a, b)
    pruned(a)
    assert {(r[ROW_ENTITY_TYPE], r[ROW_ENTITY_ID]) for r in valueless(a)} >= {
        ("rs_kid", "k"), ("rs_orphan", "o")}
    return a, b


def test_a_delete_orphan_of_the_flush_stores_the_values_first(devs: Devices) -> None:
    """The flush deletes an orphan that was in neither session.dirty nor session.deleted
    at before_flush: the mapper event stores its values before the DELETE."""
    a, b = _owned(devs)
    with a.Session() as s:
        owner = s.get(Owner, "p")
        assert owner is not None
        orphan = owner.orphans[0]
        owner.orphans.remove(orphan)
        assert orphan not in s.dirty and orphan not in s.deleted
        s.commit()
    assert "rs_orphan" not in {r[ROW_ENTITY_TYPE] for r in valueless(a)}
    assert [(c.attribute, c.new_value) for c in a.db.history(Orphan, "o")][:3] == [
        ("id", "o"), ("title", "O"), ("owner_id", "p")]
    a.db.compact()
    sync_all(a, b)
    assert a.rows(Orphan) == b.rows(Orphan) == []
    c = new(devs, "c", models=FlushBase)
    c.sync()
    assert c.rows(Owner) == a.rows(Owner) and c.rows(Orphan) == []
    a.db.restore_pruned_values()
    assert not valueless(a)


def test_a_foreign_key_the_flush_nulls_keeps_its_old_history(devs: Devices) -> None:
    """Deleting the owner makes the ORM null the kid's owner_id in the flush (the kid was
    not dirty at before_flush): history, as_of and revert keep the old owner."""
    a, b = _owned(devs)
    mid = datetime.now(UTC)
    time.sleep(0.01)
    a.delete(Owner, "p")
    assert a.get(Kid, "k") == {"id": "k", "title": "K", "owner_id": None}
    assert not valueless(a)
    changes = [(c.attribute, c.old_value, c.new_value) for c in a.db.history(Kid, "k")]
    assert ("owner_id", None, "p") in changes and ("owner_id", "p", None) in changes
    assert a.db.as_of(Kid, "k", mid) == {"id": "k", "title": "K", "owner_id": "p"}
    a.db.revert(a.db.history(Kid, "k")[-1].transaction_id)
    assert a.get(Kid, "k") == {"id": "k", "title": "K", "owner_id": "p"}
    sync_all(a, b)
    assert a.rows(Kid) == b.rows(Kid)
    assert a.rows(Owner) == b.rows(Owner)


def _prune_before(dev: Device, pruner: Device, verb: str) -> list[bool]:
    """Make ``pruner`` (another DimpleDb on ``dev``'s database) prune just before ``dev``'s
    next ``verb`` (UPDATE/DELETE) of a note: after capture's probe, before the write (the
    race of a prune committing in between)."""
    fired: list[bool] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and statement.lstrip().upper().startswith(
                "UPDATE NOTE" if verb == "UPDATE" else "DELETE FROM NOTE"):
            fired.append(True)
            pruner.db.prune_history(older_than=timedelta(0))

    event.listen(dev.db.engine, "before_cursor_execute", before)
    return fired


@pytest.mark.parametrize("verb", ["UPDATE", "DELETE"])
def test_a_prune_racing_a_flush_fails_no_reader(devs: Devices, verb: str) -> None:
    """A prune committing between a flush's probe and its write leaves a value-less row
    whose values the live row no longer holds: readers fall back (a later change's old
    value; null for a gone row), never fail, and the replicas converge."""
    a, b = new(devs, "a"), new(devs, "b")
    a.add(Note(id="n", title="t", body="x", rank=2), Note(id="m", title="m"))
    sync_all(a, b)
    time.sleep(0.01)
    pruner = new(devs, "a", create=False)
    fired = _prune_before(a, pruner, verb)
    if verb == "UPDATE":
        a.edit(Note, "n", title="t2")
    else:
        a.delete(Note, "n")
    assert fired and ("note", "n") in {(r[ROW_ENTITY_TYPE], r[ROW_ENTITY_ID])
                                       for r in valueless(a)}
    titles_ = [(c.old_value, c.new_value) for c in a.db.history(Note, "n")
               if c.attribute == "title"]
    if verb == "UPDATE":
        assert titles_ == [(None, "t"), ("t", "t2")]  # not the live row's t2
    else:  # the row is gone: its values are unknown, the undo of the delete refuses
        with pytest.raises(dimple.RevertError, match="unknown"):
            a.db.revert(a.db.history(Note, "n")[-1].transaction_id)
    sync_all(a, b)
    a.db.compact()
    c = new(devs, "c")
    c.sync()
    assert a.rows(Note) == b.rows(Note) == c.rows(Note)
    assert a.db.restore_pruned_values() >= 1
    assert not valueless(a)
    a.db.compact()
    sync_all(a, b, c)
    assert a.rows(Note) == b.rows(Note) == c.rows(Note)


def test_an_uncaptured_delete_fails_no_reader(devs: Devices) -> None:
    """A Core DELETE of a pruned row on an engine without Core capture: history, sync,
    compaction, a merge of another device's delete and restore_pruned_values all work,
    and the replicas converge."""
    a, b = new(devs, "a"), new(devs, "b")
    a.add(Note(id="n", title="t", body="x"), Note(id="m", title="m"))
    sync_all(a, b)
    pruned(a)
    with a.Session() as s:
        s.execute(delete(Note.__table__).where(Note.__table__.c.id == "n"))
        s.commit()
    assert [c.new_value for c in a.db.history(Note, "n") if c.attribute == "title"] == [None]
    a.add(Note(id="z", title="z"))
    sync_all(a, b)
    a.db.compact()
    b.delete(Note, "n")
    sync_all(b, a)
    c = new(devs, "c")
    c.sync()
    assert a.rows(Note) == b.rows(Note) == c.rows(Note)
    a.db.restore_pruned_values()
    assert not valueless(a)
    a.db.compact()


@pytest.mark.sqlite_only("SQLite's data_version tells a connection of others' commits")
def test_a_prune_by_another_connection_is_seen_by_the_next_flush(devs: Devices) -> None:
    """A commit first learns that no value was ever dropped (so later commits skip the
    probe); a prune committed by another engine on the same file is seen by the next
    flush, which stores the values back before it writes."""
    from models import SyncBase
    from sqlalchemy import create_engine

    a = new(devs, "a")
    for i in range(2):
        a.add(Note(id=f"n{i}", title=f"t{i}", body="x", rank=i))
    a.sync()
    a.edit(Note, "n0", title="first")  # no value dropped yet: learnt, then skipped
    history = [(c.attribute, c.new_value) for c in a.db.history(Note, "n1")]
    time.sleep(0.01)
    other = dimple.DimpleDb(create_engine(a.db.engine.url), SyncBase)
    try:
        assert other.prune_history(older_than=timedelta(0)) >= 0
    finally:
        other.close()
    n = len(valueless(a))
    assert n
    a.edit(Note, "n1", title="second")
    assert len(valueless(a)) == n - 1
    assert [(c.attribute, c.new_value) for c in a.db.history(Note, "n1")] == [
        *history, ("title", "second")]


def test_a_prune_on_the_same_connection_is_seen_by_the_next_flush(devs: Devices) -> None:
    """The same, when the prune ran on the connection that learnt it (SQLite's
    data_version does not change for a connection's own commits)."""
    a = new(devs, "a")
    for i in range(2):
        a.add(Note(id=f"n{i}", title=f"t{i}", body="x", rank=i))
    a.sync()
    a.edit(Note, "n0", title="first")
    pruned(a)
    n = len(valueless(a))
    a.edit(Note, "n1", title="second")
    assert len(valueless(a)) == n - 1


def test_a_bundle_s_packed_rows_carry_the_pruned_values(devs: Devices) -> None:
    """A push reads packed rows (``packed_transactions_of``): value-less rows come with
    their values, and folded and pending transactions alike give the change records
    ``transactions_of`` gives."""
    a = new(devs, "a")
    a.add(Note(id="n", title="hello", body="b", rank=1))
    a.add(Note(id="m", title="two"))
    pruned(a)
    a.add(Note(id="p", title="pending"))  # not folded yet
    me = a.db.author_id
    with a.db.engine.connect() as conn:
        ids = changelog.transaction_ids(conn, me)
        records = changelog.transactions_of(conn, me, ids)
        rows = changelog.packed_transactions_of(conn, ids)
    assert len(ids) == 3
    assert [(tx, changelog.expand_all(r)) for tx, r in rows] == [(t, c) for t, _, c in records]
    assert all(r[6] != changelog.DROPPED for _, found in rows for r in found)
