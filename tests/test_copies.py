"""Copied database files and restored backups, on every backend (memory, local folder, S3).

A copy writes as the same author as its original: the second of them to push is stopped
before it writes anything (``ConfigurationError`` naming ``dimpledb reauthor``), and after
the command nothing of either is lost. A restored older backup heals: its own pushed
transactions that it lacks come back from its own folder. Every scenario ends with a fresh
device that must see every transaction, and all devices converged.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Remote
from models import Note
from sqlalchemy import select
from syncworld import (
    Device,
    Devices,
    device_set,
    read_manifest,
    remote_files,
    sync_all,
)

import dimpledb_sa as dimple
from dimpledb_sa.cli import main
from dimpledb_sa.core import schema


@pytest.fixture
def devs(tmp_path: Path, remote: Remote) -> Iterator[Devices]:
    with device_set(tmp_path, remote.url, remote.storage_options) as d:
        yield d


def titles(dev: Device) -> list[str]:
    with dev.db.engine.connect() as conn:
        return sorted(conn.execute(select(Note.title)).scalars())


def pushed_through(dev: Device) -> str | None:
    with dev.db.engine.connect() as conn:
        value: str | None = conn.execute(select(schema.meta.c.value).where(
            schema.meta.c.key == "pushed_through")).scalar()
    return value


def snapshot(remote: Remote) -> dict[str, bytes]:
    fs, root = remote.filesystem()
    return remote_files(fs, root)


def copy_file(devs: Devices, dev: Device, to: Path) -> Device:
    """Copy ``dev``'s file to ``to`` (as a user copies it to another machine); returns
    ``dev`` reopened (the copy is opened with ``devs.new(..., file=to)``)."""
    devs.close(dev)
    shutil.copy(dev.path, to)
    return devs.new(dev.name, file=dev.path, create=False)


def assert_everyone_has(devs: Devices, wanted: list[str], *devices: Device) -> None:
    fresh = devs.new(f"fresh{len(devs.opened)}")
    sync_all(*devices, fresh)
    for d in (*devices, fresh):
        assert titles(d) == sorted(wanted), d.name
    first = fresh.snapshot()
    for d in devices:
        assert d.snapshot() == first, d.name
        assert d.log() == fresh.log(), d.name


# --------------------------------------------------------------------------- copies


@pytest.mark.parametrize("first", ["original", "copy"])
def test_a_copied_database_is_detected_before_anything_is_overwritten(
        devs: Devices, remote: Remote, tmp_path: Path, first: str) -> None:
    a = devs.new("a")
    a.add(Note(title="before the copy"))
    a.sync()
    a = copy_file(devs, a, tmp_path / "copy.db")
    copy = devs.new("copy", file=tmp_path / "copy.db", create=False)
    assert copy.db.author_id == a.db.author_id
    a.add(Note(title="original's"))
    copy.add(Note(title="copy's"))
    ahead, behind = (a, copy) if first == "original" else (copy, a)
    assert ahead.sync().pushed == 1
    before = snapshot(remote)
    with pytest.raises(dimple.ConfigurationError, match="dimpledb reauthor") as info:
        behind.sync()
    assert str(behind.path) in str(info.value)
    assert snapshot(remote) == before, "the detected copy wrote to the remote"
    with pytest.raises(dimple.ConfigurationError):  # and again: nothing changed
        behind.sync()

    old = behind.db.author_id
    new = behind.db.reauthor()
    assert new != old and behind.db.author_id == new
    report = behind.sync()
    assert report.pushed == 1 and report.errors == {}
    assert_everyone_has(devs, ["before the copy", "original's", "copy's"], a, copy)


def test_a_handle_with_a_cached_manifest_sees_the_copy(devs: Devices, remote: Remote,
                                                       tmp_path: Path) -> None:
    a = devs.new("a")
    a.add(Note(title="one"))
    a.sync()
    shutil.copy(a.path, tmp_path / "copy.db")  # a stays open: its handle keeps its manifest
    copy = devs.new("copy", file=tmp_path / "copy.db", create=False)
    copy.add(Note(title="copy's"))
    assert copy.sync().pushed == 1  # first to push after the copy: nothing is wrong yet
    a.add(Note(title="two"))
    before = snapshot(remote)
    with pytest.raises(dimple.ConfigurationError, match="reauthor"):
        a.sync()
    assert snapshot(remote) == before
    # the command line, as the message says (the app closed first)
    devs.close(a)
    assert main(["reauthor", str(a.path)]) == 0
    a = devs.new("a", file=a.path, create=False)
    assert a.sync().pushed == 1
    assert_everyone_has(devs, ["one", "two", "copy's"], a, copy)


def test_a_copy_that_only_reads_merges_and_a_later_conflict_is_detected(
        devs: Devices, tmp_path: Path) -> None:
    a = devs.new("a")
    a.add(Note(title="one"))
    a.sync()
    a = copy_file(devs, a, tmp_path / "copy.db")
    copy = devs.new("copy", file=tmp_path / "copy.db", create=False)
    a.add(Note(title="two"))
    a.sync()
    report = copy.sync()  # nothing of its own to push: it takes "two" from its own folder
    assert (report.pushed, report.pulled) == (0, 1)
    assert titles(copy) == ["one", "two"]
    copy.add(Note(title="copy's"))
    assert copy.sync().pushed == 1
    a.add(Note(title="three"))
    with pytest.raises(dimple.ConfigurationError, match="reauthor"):
        a.sync()
    a.db.reauthor()
    a.sync()
    assert_everyone_has(devs, ["one", "two", "three", "copy's"], a, copy)


def test_an_overwritten_push_is_detected_and_not_lost(devs: Devices, remote: Remote,
                                                      tmp_path: Path) -> None:
    """Two copies pushing at the same moment: the copy's manifest, written from an older
    read, drops the original's newest bundle. The original's next push notices that its
    last push is not listed, and after reauthor those transactions are pushed again."""
    a = devs.new("a")
    a.add(Note(title="one"))
    a.sync()
    a = copy_file(devs, a, tmp_path / "copy.db")
    copy = devs.new("copy", file=tmp_path / "copy.db", create=False)
    fs, root = remote.filesystem()
    me = a.db.author_id
    path = f"{root}/{me}/dimple_db.json"
    old_manifest = fs.cat_file(path)
    a.add(Note(title="lost listing"))
    assert a.sync().pushed == 1
    fs.pipe_file(path, old_manifest)  # the copy read the manifest before a's push ...
    fs.invalidate_cache()
    copy.add(Note(title="copy's"))
    assert copy.sync().pushed == 1  # ... and writes it back with its own bundle
    assert "lost listing" not in titles(devs.new("witness"))
    a.add(Note(title="two"))
    with pytest.raises(dimple.ConfigurationError, match="reauthor"):
        a.sync()
    a.db.reauthor()
    assert a.sync().pushed == 2  # "lost listing" and "two", under the new author id
    assert_everyone_has(devs, ["one", "lost listing", "two", "copy's"], a, copy)


# --------------------------------------------------------------------------- backups


def restore(devs: Devices, dev: Device, backup: Path) -> Device:
    devs.close(dev)
    shutil.copy(backup, dev.path)
    return devs.new(dev.name, file=dev.path, create=False)


def test_a_restored_backup_gets_its_own_pushed_transactions_back(
        devs: Devices, remote: Remote, tmp_path: Path) -> None:
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title="one"))
    a.sync()
    devs.close(a)
    shutil.copy(a.path, tmp_path / "backup.db")
    a = devs.new("a", file=a.path, create=False)
    a.add(Note(title="two"))
    a.add(Note(title="three"))
    a.sync()
    b.sync()
    a = restore(devs, a, tmp_path / "backup.db")
    assert titles(a) == ["one"]
    report = a.sync()
    assert (report.pushed, report.pulled, report.errors) == (0, 2, {})
    assert titles(a) == ["one", "three", "two"]
    fs, root = remote.filesystem()
    manifest = read_manifest(fs, root, a.db.author_id)
    assert pushed_through(a) == manifest["last_transaction_id"]
    a.add(Note(title="four"))
    assert a.sync().pushed == 1
    assert_everyone_has(devs, ["one", "two", "three", "four"], a, b)


def test_a_restored_backup_with_work_pushed_after_it_heals(devs: Devices,
                                                           tmp_path: Path) -> None:
    """The backup holds a transaction it had not pushed yet; the device pushed it later,
    with more: that transaction is listed, so nothing of the backup's is unlisted."""
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title="pushed"))
    a.sync()
    a.add(Note(title="not pushed at backup time"))
    devs.close(a)
    shutil.copy(a.path, tmp_path / "backup.db")
    a = devs.new("a", file=a.path, create=False)
    a.sync()
    a.add(Note(title="after the backup"))
    a.sync()
    a = restore(devs, a, tmp_path / "backup.db")
    report = a.sync()
    assert (report.pushed, report.pulled, report.errors) == (0, 1, {})
    a.add(Note(title="after the restore"))
    assert a.sync().pushed == 1
    assert_everyone_has(devs, ["pushed", "not pushed at backup time", "after the backup",
                               "after the restore"], a, b)


def test_a_restored_backup_with_new_changes_is_detected_and_loses_nothing(
        devs: Devices, remote: Remote, tmp_path: Path) -> None:
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title="one"))
    a.sync()
    devs.close(a)
    shutil.copy(a.path, tmp_path / "backup.db")
    a = devs.new("a", file=a.path, create=False)
    a.add(Note(title="two"))
    a.sync()
    a = restore(devs, a, tmp_path / "backup.db")
    a.add(Note(title="written after the restore"))  # before any sync: it looks like a copy
    before = snapshot(remote)
    with pytest.raises(dimple.ConfigurationError, match="reauthor"):
        a.sync()
    assert snapshot(remote) == before
    a.db.reauthor()
    report = a.sync()
    assert report.pushed == 1 and report.errors == {}
    assert titles(a) == ["one", "two", "written after the restore"]
    assert_everyone_has(devs, ["one", "two", "written after the restore"], a, b)
