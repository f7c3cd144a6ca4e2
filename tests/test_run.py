"""Tests for ``dimpledb_sa.sync.run``: sync scenarios between devices (SQLite files) on
every backend: memory, local folder, S3.

Each test runs once per backend through the ``remote`` fixture. Devices share one age
identity unless the test says otherwise, and one fake wall clock (see ``syncworld``), so
"later in the test" means "a larger change id".
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pytest
from conftest import Remote
from databases import Databases
from models import Folder, Item, Note, OldNote, Tag
from models import OldSyncBase as OldBase
from models import SyncBase as Base
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from syncworld import (
    Device,
    Devices,
    assert_converged,
    device_set,
    read_manifest,
    recording,
    remote_files,
    sqlite_engine,
    sync_all,
    titles,
)

import dimpledb_sa as dimple
from dimpledb_sa.sync.crypto import AGE_MAGIC, generate_identity

NOTE_COLUMNS = 5  # id, title, body, done, rank: the changes of one inserted note


MEMORY_ONLY = pytest.mark.parametrize("remote", ["memory"], indirect=True)


# --------------------------------------------------------------------------- basics


def test_two_devices_add_rows_and_converge(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title="milk", rank=1), Note(title="eggs", body="six"))
    with b.Session() as s:
        s.add(Note(title="bread", done=True))
        report = s.sync()  # commits the pending note, then syncs
    assert (report.pushed, report.pulled, report.applied, report.held) == (1, 0, 0, 0)
    assert report.errors == {} and report.ok

    with recording(a.db) as rec:
        report = a.sync()
    assert (report.pushed, report.pulled, report.applied) == (1, 1, NOTE_COLUMNS)
    [event] = rec.events
    assert event.origin == "sync" and event.tables == frozenset({"note"})
    assert {c.author for c in event.changes} == {b.db.author_id}
    assert {c.new_value for c in event.changes if c.attribute == "title"} == {"bread"}

    with recording(b.db) as rec:
        report = b.db.sync()
    assert (report.pushed, report.pulled, report.applied) == (0, 1, 2 * NOTE_COLUMNS)
    assert [e.origin for e in rec.events] == ["sync"]
    assert titles(b) == ["bread", "eggs", "milk"]
    assert_converged(a, b)

    report = a.sync()  # nothing new anywhere
    assert (report.pushed, report.pulled, report.applied) == (0, 0, 0)


@pytest.mark.postgresql
def test_sqlite_and_postgresql_devices_converge(tmp_path: Path, pg_server: Any,
                                                databases: Databases) -> None:
    """Mixed replicas: devices on SQLite and on PostgreSQL edit, delete, cascade and
    re-insert the same rows and end with the same rows and log."""
    url = f"memory://mixed-{uuid.uuid4().hex}/remote"
    with device_set(tmp_path, url, databases=databases) as devs:
        a = devs.new("a", database="sqlite")
        b = devs.new("b", database="postgresql")
        c = devs.new("c", database="postgresql")
        folder = Folder(name="f", items=[Item(label="x"), Item(label="y")])
        note = Note(title="n", rank=1)
        a.add(folder, note)
        sync_all(a, b, c)
        b.edit(Note, note.id, title="from pg", done=True)
        c.add(Item(folder_id=folder.id, label="z"))
        a.edit(Note, note.id, body="from sqlite")
        sync_all(a, b, c)
        assert b.get(Note, note.id) == {"id": note.id, "title": "from pg", "body": "from sqlite",
                                        "done": True, "rank": 1}
        a.delete(Folder, folder.id)  # the ORM cascade deletes its items
        b.delete(Note, note.id)
        sync_all(a, b, c)
        c.add(Note(id=note.id, title="back", rank=2))
        sync_all(a, b, c)
        assert a.rows(Folder) == [] and a.rows(Item) == []
        assert [r[0] for r in a.rows(Note)] == [note.id]
        assert_converged(a, b, c)


@MEMORY_ONLY
def test_session_sync_expires_objects(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    note = Note(title="draft")
    a.add(note)
    a.sync()
    b.sync()
    b.edit(Note, note.id, title="final")
    b.sync()
    with a.Session() as s:
        mine = s.get(Note, note.id)
        assert mine is not None and mine.title == "draft"
        s.add(Note(title="pending"))  # uncommitted: sync commits it first
        report = s.sync()
        assert report.pushed == 1 and report.applied == 1
        assert mine.title == "final"  # expired, reloaded with the merged state
    b.sync()
    assert_converged(a, b)


def test_offline_device_catches_up(devs: Devices) -> None:
    a, b, c = devs.new("a"), devs.new("b"), devs.new("c")
    shared = Note(title="shared", body="v0")
    a.add(shared)
    sync_all(a, b, c)
    c.add(Note(title="written offline by c"))  # c now misses several syncs
    c.edit(Note, shared.id, rank=7)
    for i in range(4):
        a.add(Note(title=f"a{i}"))
        a.sync()
        b.add(Note(title=f"b{i}"))
        b.edit(Note, shared.id, body=f"v{i + 1}")
        b.sync()
    gone = Note(title="short-lived")
    a.add(gone)
    a.delete(Note, gone.id)
    a.sync()

    report = c.sync()
    assert report.pushed == 2
    assert report.pulled == 4 + 2 * 4 + 2  # a: four adds and add+delete; b: four adds + edits
    assert report.errors == {}
    assert c.get(Note, shared.id) == {"id": shared.id, "title": "shared", "body": "v4",
                                      "done": False, "rank": 7}
    assert c.get(Note, gone.id) is None
    sync_all(a, b, c)
    assert len(a.rows(Note)) == 1 + 1 + 4 + 4
    assert_converged(a, b, c)


# --------------------------------------------------------------------------- last write wins


def test_last_write_wins_per_attribute_across_three_devices(devs: Devices) -> None:
    a, b, c = devs.new("a"), devs.new("b"), devs.new("c")
    note = Note(title="t-a", body="b-a", done=False, rank=1)
    a.add(note)
    sync_all(a, b, c, rounds=1)
    b.edit(Note, note.id, title="t-b", body="b-b")  # B edits some fields ...
    c.edit(Note, note.id, body="b-c", done=True)  # ... C later edits others (and one of B's)
    b.sync()
    report = c.sync()  # C pulls B's older edits: only the title is newer than C's own
    assert report.applied == 1
    assert c.get(Note, note.id) == {"id": note.id, "title": "t-b", "body": "b-c",
                                    "done": True, "rank": 1}
    a.edit(Note, note.id, rank=3)  # and A, last of all, the rank
    sync_all(a, b, c)
    expected = {"id": note.id, "title": "t-b", "body": "b-c", "done": True, "rank": 3}
    for d in (a, b, c):
        assert d.get(Note, note.id) == expected
    assert_converged(a, b, c)
    history = a.db.history(Note, note.id)
    assert [ch.author for ch in history if ch.attribute == "body"] == [
        a.db.author_id, b.db.author_id, c.db.author_id]


def test_newer_local_edit_beats_older_remote_one(devs: Devices) -> None:
    a, b, c = devs.new("a"), devs.new("b"), devs.new("c")
    note = Note(title="v0")
    a.add(note)
    sync_all(a, b, c, rounds=1)

    c.edit(Note, note.id, title="oldest, from c offline")
    a.edit(Note, note.id, title="older, from a")
    a.sync()
    b.edit(Note, note.id, title="newest, from b")  # not pushed when a's older edit arrives
    report = b.sync()
    assert report.pulled == 1 and report.applied == 0
    assert b.get(Note, note.id)["title"] == "newest, from b"  # type: ignore[index]
    report = a.sync()
    assert report.applied == 1
    assert a.get(Note, note.id)["title"] == "newest, from b"  # type: ignore[index]

    # c's edit is older than both, and arrives after b's edit was merged everywhere
    report = c.sync()
    assert c.get(Note, note.id)["title"] == "newest, from b"  # type: ignore[index]
    for d in (a, b):
        report = d.sync()
        assert report.pulled == 1 and report.applied == 0
        assert d.get(Note, note.id)["title"] == "newest, from b"  # type: ignore[index]
    assert_converged(a, b, c)


# --------------------------------------------------------------------------- foreign keys


def test_parent_and_child_rows_arrive_together(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    sqlite = devs.database == "sqlite"  # PostgreSQL always enforces foreign keys
    if sqlite:
        with a.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    folder = Folder(name="groceries", items=[Item(label="milk"), Item(label="eggs")])
    a.add(folder)
    a.add(Item(folder_id=folder.id, label="bread"))  # a second transaction, same bundle
    other = Folder(name="work")
    a.add(other)
    third = Folder(id=dimple.new_id(), name="later")
    with a.Session() as s:  # parent and child in one transaction, the child added first
        s.add(Item(folder_id=third.id, label="report"))
        s.add(third)
        s.commit()
    a.sync()
    with recording(b.db) as rec:
        report = b.sync()
    assert report.errors == {} and report.held == 0
    assert report.pulled == 4
    [event] = rec.events
    assert event.origin == "sync" and event.tables == frozenset({"folder", "item"})
    assert len(b.rows(Item)) == 4 and len(b.rows(Folder)) == 3
    assert b.held() == []

    b.delete(Folder, folder.id)  # the ORM cascade deletes its items first
    b.sync()
    report = a.sync()
    assert report.errors == {} and report.held == 0
    assert {r[0] for r in a.rows(Folder)} == {other.id, third.id}
    assert [r[2] for r in a.rows(Item)] == ["report"]
    for d in (a, b) if sqlite else ():
        with d.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    assert_converged(a, b)


# --------------------------------------------------------------------------- deletes


@pytest.mark.parametrize("first", ["delete", "edit"])
def test_delete_against_concurrent_edit(devs: Devices, first: str) -> None:
    a, b, c = devs.new("a"), devs.new("b"), devs.new("c")
    note = Note(title="contested", body="x")
    a.add(note)
    sync_all(a, b, c, rounds=1)
    if first == "delete":
        a.delete(Note, note.id)
        b.edit(Note, note.id, body="edited after the delete")  # later, but not an insert
    else:
        b.edit(Note, note.id, body="edited before the delete")
        a.delete(Note, note.id)
    b.sync()
    report = a.sync()
    assert a.get(Note, note.id) is None
    report = b.sync()
    assert report.applied == 1  # the delete
    assert b.get(Note, note.id) is None
    sync_all(a, b, c)
    for d in (a, b, c):
        assert d.rows(Note) == []
        body = [ch.new_value for ch in d.db.history(Note, note.id) if ch.attribute == "body"]
        assert body[-1].startswith("edited")  # the edit is kept in the history
    assert_converged(a, b, c)


def test_reinsert_after_delete_comes_back_everywhere(devs: Devices) -> None:
    a, b, c = devs.new("a"), devs.new("b"), devs.new("c")
    note = Note(title="first life", body="old body", rank=1)
    a.add(note)
    sync_all(a, b, c, rounds=1)
    b.delete(Note, note.id)
    c.edit(Note, note.id, rank=2)  # concurrent with the delete, older than the re-insert
    b.sync()
    a.sync()
    assert a.get(Note, note.id) is None
    a.add(Note(id=note.id, title="second life"))  # the same id, after the delete
    report = a.sync()
    assert report.pushed == 1
    sync_all(c, b, a)
    expected = {"id": note.id, "title": "second life", "body": None, "done": False, "rank": None}
    for d in (a, b, c):
        assert d.get(Note, note.id) == expected
    assert_converged(a, b, c)

    c.delete(Note, note.id)  # and once more: the delete after the re-insert wins again
    sync_all(c, a, b)
    for d in (a, b, c):
        assert d.get(Note, note.id) is None
    assert_converged(a, b, c)


# --------------------------------------------------------------------------- cost


def test_no_op_sync_costs_one_listing_and_one_read_per_author(devs: Devices) -> None:
    a, b, c = devs.new("a"), devs.new("b"), devs.new("c")
    fetched: dict[str, list[str]] = {}
    notes_read = {d.name: 0 for d in (a, b, c)}  # only after another manifest changed
    for d in (a, b, c):
        names = fetched[d.name] = []
        real = d.db.storage.read_bundles

        def counting(author: str, wanted: Any, real: Any = real, names: list[str] = names
                     ) -> Any:
            names.extend(f"{author}/{n}" for n in wanted)
            return real(author, wanted)

        d.db.storage.read_bundles = counting  # type: ignore[method-assign]
        real_notes = d.db.storage.read_notes

        def counting_notes(author: str, real: Any = real_notes, name: str = d.name) -> Any:
            notes_read[name] += 1
            return real(author)

        d.db.storage.read_notes = counting_notes  # type: ignore[method-assign]

    gets = {d.name: 0 for d in (a, b, c)}
    manifests = {d.name: 0 for d in (a, b, c)}  # other authors present at each sync
    pushes = {d.name: 0 for d in (a, b, c)}  # each reads our own manifest afresh
    present: set[str] = set()

    def sync(d: Device) -> dimple.SyncReport:
        manifests[d.name] += len(present - {d.name})
        report = d.sync()
        gets[d.name] += report.requests.get("get", 0)
        if report.pushed:
            present.add(d.name)
            pushes[d.name] += 1
        return report

    for i in range(3):
        for d in (a, b, c):
            d.add(Note(title=f"{d.name}{i}"))
            sync(d)
    sync(a)
    sync(b)
    for _ in range(2):
        for d in (a, b, c):
            report = sync(d)
            assert (report.pushed, report.pulled, report.applied) == (0, 0, 0)
            assert report.requests == {"ls": 1, "get": 2}
    assert_converged(a, b, c)

    fs, root = fsspec.core.url_to_fs(devs.remote, **(devs.storage_options or {}))
    bundles = {d.db.author_id: {f"{d.db.author_id}/{b['filename']}" for b in
                                read_manifest(fs, root, d.db.author_id)["bundles"]}
               for d in (a, b, c)}
    for d in (a, b, c):
        names = fetched[d.name]
        assert len(names) == len(set(names)), "a bundle was downloaded twice"
        others = set().union(*(v for k, v in bundles.items() if k != d.db.author_id))
        assert set(names) == others
        # every get is another author's manifest, a bundle, our own manifest read afresh by
        # a push before it overwrites it (copy detection), or the notes of an author whose
        # manifest changed (here: by a push, with a new bundle)
        assert gets[d.name] == manifests[d.name] + len(names) + pushes[d.name] + notes_read[d.name]
        assert notes_read[d.name] <= len(names)


# --------------------------------------------------------------------------- encryption


SECRET = "Quokka-Zebra-4471-plaintext"


def test_remote_never_holds_plaintext_values(devs: Devices, remote: Remote) -> None:
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title=SECRET, body=SECRET * 3), Tag(word=SECRET))
    a.sync()
    b.add(Note(title=f"reply to {SECRET}"))
    b.sync()
    a.sync()
    assert_converged(a, b)
    fs, root = remote.filesystem()
    files = remote_files(fs, root)
    assert len(files) == 4  # two authors, a manifest and a bundle each
    for name, data in files.items():
        assert SECRET.encode() not in data, name
        if name.endswith("dimple_db.json"):
            json.loads(data)  # manifests are plain JSON without values
        else:
            assert data.startswith(AGE_MAGIC), name


@MEMORY_ONLY
def test_bundles_decrypt_with_the_age_tool(devs: Devices, remote: Remote, tmp_path: Path
                                           ) -> None:
    """Format 3: ``age -d -i KEY FILE | gunzip`` prints the bundle JSON (its header
    first, then the transactions' runs)."""
    age, gunzip = shutil.which("age"), shutil.which("gunzip")
    if age is None or gunzip is None:
        pytest.skip("the age or gunzip command-line tool is not installed")
    a = devs.new("a")
    a.add(Note(title=SECRET))
    a.sync()
    key = tmp_path / "key.txt"
    key.write_text(devs.identity + "\n")
    fs, root = remote.filesystem()
    [bundle] = [v for k, v in remote_files(fs, root).items() if not k.endswith("_db.json")]
    packed = subprocess.run([age, "-d", "-i", str(key)], input=bundle, capture_output=True,
                            check=True, timeout=60).stdout
    assert packed[:2] == b"\x1f\x8b"  # gzip inside the age envelope
    out = subprocess.run([gunzip], input=packed, capture_output=True, check=True,
                         timeout=60).stdout
    assert out.startswith(b'{"format":"dimpledb-bundle","version":3,"author":')
    doc = json.loads(out)
    assert doc["author"] == a.db.author_id
    [tx] = doc["transactions"]
    assert SECRET in {v for run in tx["runs"] for v in run[5]}


@MEMORY_ONLY
def test_separate_identities_that_list_each_other(devs: Devices) -> None:
    key_a, pub_a = generate_identity()
    key_b, pub_b = generate_identity()
    a = devs.new("a", identity=key_a, recipients=[pub_b])
    b = devs.new("b", identity=key_b, recipients=[pub_a])
    a.add(Note(title="to b"))
    b.add(Note(title="to a"))
    sync_all(a, b)
    assert len(a.rows(Note)) == 2
    assert_converged(a, b)


def test_plaintext_remote_stores_readable_json(devs: Devices, remote: Remote) -> None:
    a = devs.new("a", identity=None, encryption=False)
    b = devs.new("b", identity=None, encryption=False)
    note = Note(title=SECRET)
    a.add(note)
    a.sync()
    report = b.sync()
    assert report.applied == NOTE_COLUMNS
    fs, root = remote.filesystem()
    files = remote_files(fs, root)
    [bundle] = [v for k, v in files.items() if not k.endswith("dimple_db.json")]
    doc = json.loads(gzip.decompress(bundle))  # format 3: gzipped JSON, not encrypted here
    assert (doc["format"], doc["version"], doc["author"]) == ("dimpledb-bundle", 3,
                                                             a.db.author_id)
    [[_, etype, _, names, _, news]] = doc["transactions"][0]["runs"]
    assert etype == "note" and dict(zip(names, news, strict=True))["title"] == SECRET
    assert_converged(a, b)


@pytest.mark.parametrize("url", ["memory://no-key/remote", "folder", "s3://no-bucket/remote"])
def test_remote_without_a_key_is_a_configuration_error(tmp_path: Path, url: str) -> None:
    eng = sqlite_engine(tmp_path / "x.db")
    if url == "folder":
        url = str(tmp_path / "remote")
    options = ({"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s"}
               if url.startswith("s3:") else None)  # never the environment's credentials
    try:
        with pytest.raises(dimple.ConfigurationError, match="encryption=False"):
            dimple.DimpleDb(eng, Base, remote=url, storage_options=options)
        db = dimple.DimpleDb(eng, Base, remote=url, storage_options=options, encryption=False)
        db.close()
    finally:
        eng.dispose()


def test_passphrase_mode_between_two_devices(tmp_path: Path) -> None:
    # scrypt costs a second or two per file: one bundle, written once and read once
    url = f"memory://passphrase-{os.getpid()}-{id(tmp_path)}/remote"
    with device_set(tmp_path, url, identity=None) as devs:
        a = devs.new("a", identity=None, passphrase="correct horse battery")
        b = devs.new("b", identity=None, passphrase="correct horse battery")
        a.add(Note(title=SECRET))
        assert a.sync().pushed == 1
        report = b.sync()
        assert report.pulled == 1 and report.applied == NOTE_COLUMNS
        assert_converged(a, b)
        fs, root = fsspec.core.url_to_fs(url)
        for name, data in remote_files(fs, root).items():
            assert SECRET.encode() not in data
            if not name.endswith("dimple_db.json"):
                assert b"-> scrypt " in data
        fs.rm(root.rsplit("/", 1)[0], recursive=True)


# --------------------------------------------------------------------------- held changes


@pytest.mark.parametrize(("remote", "how"), [("memory", "replay_held"), ("memory", "sync"),
                                             ("local", "sync"), ("s3", "sync")],
                         indirect=["remote"])
def test_older_schema_holds_changes_until_it_has_the_column(devs: Devices, how: str) -> None:
    new = devs.new("new")
    old = devs.new("old", models=OldBase)
    with old.db.engine.connect() as conn:
        assert "rank" not in {c["name"] for c in inspect(conn).get_columns("note")}
    ranked = Note(title="ranked", rank=5)
    new.add(ranked, Tag(word="urgent"), Tag(word="later"))
    new.sync()
    report = old.sync()
    assert report.errors == {}
    assert report.held == 1 + 2 * 2  # note.rank; tag.id and tag.word of two tags
    assert ("note", ranked.id, "rank", "unknown column") in old.held()
    assert old.get(OldNote, ranked.id) == {"id": ranked.id, "title": "ranked", "body": None,
                                           "done": False}
    # the old device keeps syncing the rest, both ways
    old.edit(OldNote, ranked.id, title="renamed by old")
    old.add(OldNote(title="from old"))
    new.edit(Note, ranked.id, rank=6, body="body by new")
    old.sync()
    new.sync()
    report = old.sync()
    assert old.get(OldNote, ranked.id) == {"id": ranked.id, "title": "renamed by old",
                                           "body": "body by new", "done": False}
    assert report.held == 1 + 2 * 2

    # the app upgrades: new column and table, the newer models on the same file
    path = old.path
    devs.close(old)
    eng = devs.engine(old.name, file=path)
    with eng.begin() as conn:
        conn.execute(text("ALTER TABLE note ADD COLUMN rank INTEGER"))
    eng.dispose()
    upgraded = devs.new("upgraded", file=path, create=False)
    Tag.__table__.create(upgraded.db.engine)  # type: ignore[attr-defined]
    with recording(upgraded.db) as rec:
        if how == "replay_held":
            applied = upgraded.db.replay_held()
            assert applied == 1 + 2 * 2
        else:
            report = upgraded.sync()
            assert report.held == 0 and report.applied == 1 + 2 * 2
    assert rec.events[0].origin == "sync"
    assert rec.events[0].tables == frozenset({"note", "tag"})
    assert upgraded.held() == []
    assert upgraded.snapshot() == new.snapshot()
    sync_all(new, upgraded)
    assert_converged(new, upgraded)


class V1(DeclarativeBase):
    pass


class TaskV1(V1):
    __tablename__ = "task"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    title: Mapped[str]


class V2(DeclarativeBase):
    pass


class TaskV2(V2):
    """``task`` in a newer app: a NOT NULL column with a Python-side default."""

    __tablename__ = "task"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    title: Mapped[str]
    priority: Mapped[int] = mapped_column(default=0)


@MEMORY_ONLY
def test_a_row_from_an_older_schema_gets_the_newer_columns_default(devs: Devices) -> None:
    old = devs.new("old", models=V1)
    new = devs.new("new", models=V2)
    old.add(TaskV1(title="from the old app"))
    old.sync()
    report = new.sync()
    assert report.errors == {}
    assert [(r[1], r[2]) for r in new.rows(TaskV2)] == [(0, "from the old app")]


# --------------------------------------------------------------------------- concurrency


@MEMORY_ONLY
def test_two_handles_on_one_file_take_turns_pushing(devs: Devices) -> None:
    """Two DimpleDb objects on one file (as two processes would have) both push: every
    bundle stays listed in the manifest, so other devices get every transaction."""
    a1 = devs.new("a")
    a2 = devs.new("a-second-handle", file=a1.path, create=False)
    other = devs.new("other")
    assert a1.db.author_id == a2.db.author_id
    for i in range(3):
        a1.add(Note(title=f"one{i}"))
        a1.sync()
        a2.add(Note(title=f"two{i}"))
        a2.sync()
        other.sync()
    assert len(other.rows(Note)) == 6
    assert_converged(a1, other)


def test_two_threads_sync_one_database(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    a2 = devs.new("a-second-handle", file=a.path, create=False)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(dev: Device, tag: str) -> None:
        try:
            barrier.wait()
            for i in range(4):
                dev.add(Note(title=f"{tag}{i}"))
                dev.sync()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=args)
               for args in ((a, "x"), (a, "y"), (a2, "z"))]
    for t in threads:
        t.start()
    barrier.wait()
    b.add(Note(title="b"))
    b.sync()
    for t in threads:
        t.join()
    assert errors == []
    sync_all(a, b)
    assert len(a.rows(Note)) == 13
    assert len(a.log()) == 13 * NOTE_COLUMNS
    with a.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM dimple_transactions").scalar() == 13
    assert_converged(a, b)


SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from models import Note, SyncBase
from sqlalchemy import create_engine
import dimpledb_sa as dimple

engine = create_engine(sys.argv[4])
db = dimple.DimpleDb(engine, SyncBase, remote=sys.argv[2], identity=sys.argv[3])
Session = db.sessionmaker()
for i in range(5):
    with Session() as s:
        s.add(Note(title=f"process{i}"))
        s.commit()
    db.sync()
db.close()
engine.dispose()
"""


def test_two_processes_sync_one_file(tmp_path: Path, database: str,
                                     databases: Databases) -> None:
    """Two processes write to one database and sync it at once (a SQLite file, or a
    PostgreSQL database with two worker processes)."""
    url = str(tmp_path / "remote")  # a folder: the one backend two processes share here
    with device_set(tmp_path, url, database=database, databases=databases) as devs:
        a, b = devs.new("a"), devs.new("b")
        script = tmp_path / "other.py"
        script.write_text(SCRIPT)
        proc = subprocess.Popen(
            [sys.executable, str(script), str(Path(__file__).parent), url, devs.identity,
             a.db.engine.url.render_as_string(hide_password=False)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for i in range(5):
            a.add(Note(title=f"main{i}"))
            a.sync()
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out.decode()
        sync_all(a, b)
        assert titles(b) == sorted(
            [f"main{i}" for i in range(5)] + [f"process{i}" for i in range(5)])
        assert len(a.log()) == 10 * NOTE_COLUMNS
        with a.db.engine.connect() as conn:
            count = conn.execute(select(text("count(*)")).select_from(
                text("dimple_transactions"))).scalar()
        assert count == 10
        assert_converged(a, b)
