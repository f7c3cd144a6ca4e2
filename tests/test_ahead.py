"""Clock-drift bounds at merge (``sync/ahead.py``, ``sync/wire.py``): changes from a clock
further ahead than ``max_drift`` are held, counted and applied once local time catches
up; ids no clock could have issued (the maximum id, ten years ahead, before 2020) fail
that author's bundle; in both cases the local clock stays sane and the device keeps
pushing."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from cliworld import call
from conftest import Remote as RemoteSpec
from models import Note
from sqlalchemy import func, select
from syncworld import Devices, assert_converged, device_set, titles

import dimpledb_sa as dimple
from dimpledb_sa.core import schema
from dimpledb_sa.core.changes import ChangeRow
from dimpledb_sa.core.clock import HybridClock, id_millis, is_uuid7
from dimpledb_sa.sync.crypto import make_cipher
from dimpledb_sa.sync.storage import Storage
from dimpledb_sa.sync.wire import (
    BundleInfo,
    bundle_name,
    encode_bundle,
    encode_manifest,
    manifest_with,
    utc_now_iso,
)

DAY = 86_400 * 10**9
MAX_ID = "ffffffff-ffff-7fff-bfff-ffffffffffff"


class Shifted:
    """A wall clock ``offset`` nanoseconds from the real one (settable)."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def __call__(self) -> int:
        return time.time_ns() + self.offset


def plant_note(storage: Storage, author: str, ids: Sequence[str], title: object,
               encrypt: Callable[[bytes], bytes] = bytes) -> str:
    """A bundle of ``author`` inserting a note with ``title`` under the (transaction,
    change, change) ``ids``, listed in a new manifest; returns the note's id."""
    tx, c_id, c_title = ids
    eid = dimple.new_id()
    rows: list[ChangeRow] = [(c_id, tx, "note", eid, "id", None, json.dumps(eid)),
                             (c_title, tx, "note", eid, "title", None, json.dumps(title))]
    name = bundle_name(tx, tx)
    storage.write_bundle(author, name, encrypt(encode_bundle([(tx, author, rows)])))
    storage.write_manifest(author, encode_manifest(manifest_with(
        None, author, BundleInfo(name, tx, tx, 1, utc_now_iso()))))
    return eid


def test_changes_from_a_clock_a_day_ahead_are_held_until_local_time_catches_up(
        devs: Devices, capsys: pytest.CaptureFixture[str]) -> None:
    ahead = devs.new("ahead", clock=HybridClock(now_ns=Shifted(DAY)))
    wall = Shifted()
    local = devs.new("local", clock=HybridClock(now_ns=wall))
    note = Note(title="from tomorrow")
    ahead.add(note)
    ahead.sync()
    mine = Note(title="today")
    local.add(mine)
    report = local.sync()
    changes = len(ahead.log())
    assert report.held == changes and report.errors == {}
    assert local.get(Note, note.id) is None
    # the local clock did not follow: its ids stay within max_drift of the wall clock
    bound = time.time_ns() // 10**6 + 5 * 60_000 + 1_000
    issued = local.db.clock.next()
    assert is_uuid7(issued) and id_millis(issued) <= bound
    assert local.sync().held == changes  # kept once, not twice
    if local.db.engine.dialect.name == "sqlite":
        code, out, _ = call(capsys, "status", str(local.path))
        assert code == 0 and f"held         {changes} change(s)" in out
        assert "from a clock ahead of this device's" in out
    ahead.sync()
    assert ahead.get(Note, mine.id) is not None  # the other way round nothing is held
    wall.offset = DAY + 60 * 10**9  # a day later
    report = local.sync()
    assert report.held == 0 and report.errors == {}
    assert local.get(Note, note.id) == ahead.get(Note, note.id)
    ahead.sync()
    assert_converged(ahead, local)


def test_held_ahead_changes_survive_a_restart_and_replay_held_applies_them(
        devs: Devices) -> None:
    ahead = devs.new("ahead", clock=HybridClock(now_ns=Shifted(DAY)))
    ahead.add(Note(title="later"))
    ahead.sync()
    local = devs.new("local", clock=HybridClock(), max_drift=timedelta(minutes=1))
    assert local.sync().held > 0
    devs.close(local)
    wall = Shifted(2 * DAY)
    again = devs.new("local", create=False, clock=HybridClock(now_ns=wall),
                     max_drift=timedelta(minutes=1))
    assert again.db.replay_held() > 0
    assert again.sync().held == 0
    assert_converged(ahead, again)


@pytest.mark.parametrize("when", ["maximum", "ten years ahead", "before 2020", "not v7"])
def test_ids_no_clock_could_issue_fail_that_author_and_the_device_keeps_pushing(
        tmp_path: Path, remote: RemoteSpec, when: str) -> None:
    storage = Storage.from_remote(remote.url, remote.storage_options)
    author = dimple.new_id()
    now_ms = time.time_ns() // 10**6
    ms = {"maximum": (1 << 48) - 1, "ten years ahead": now_ms + 3653 * 86_400_000,
          "before 2020": 1_500_000_000_000, "not v7": now_ms}[when]
    if when == "maximum":
        cid, cname, tx = (MAX_ID[:-1] + d for d in "def")
    else:
        tx, cid, cname = HybridClock(now_ns=lambda: ms * 10**6).reserve(3)
    if when == "not v7":
        tx, cid, cname = (i[:14] + "4" + i[15:] for i in (tx, cid, cname))
    plant_note(storage, author, (tx, cid, cname), "forged")
    with device_set(tmp_path, remote.url, remote.storage_options, encryption=False) as devs:
        dev, other = devs.new("dev", clock=HybridClock()), devs.new("other",
                                                                     clock=HybridClock())
        dev.add(Note(title="mine"))
        with pytest.raises(dimple.SyncError) as raised:
            dev.sync()
        report = raised.value.report
        assert report is not None and set(report.errors) == {author}
        assert "not believable" in report.errors[author] and report.pushed == 1
        issued = dev.db.clock.next()
        assert is_uuid7(issued) and id_millis(issued) <= time.time_ns() // 10**6 + 1_000
        dev.add(Note(title="more"))
        with pytest.raises(dimple.SyncError) as raised:
            dev.sync()
        assert raised.value.report is not None and raised.value.report.pushed == 1
        with pytest.raises(dimple.SyncError):
            other.sync()
        assert titles(other) == ["mine", "more"]


def test_a_held_transaction_that_cannot_apply_when_due_stops_nothing(devs: Devices) -> None:
    """Due, a held transaction whose value the schema cannot take stays held (retried at
    every sync); the other authors' changes still merge."""
    storage = devs.new("writer").db.storage
    author = dimple.new_id()
    cipher = make_cipher(identity=devs.identity, recipients=None, passphrase=None,
                         encryption=True)
    eid = plant_note(storage, author, HybridClock(now_ns=Shifted(DAY)).reserve(3),
                     {"not": "a string"}, cipher.encrypt)
    wall = Shifted()
    local = devs.new("local", clock=HybridClock(now_ns=wall))
    other = devs.new("other")
    assert local.sync().held == 2
    wall.offset = 2 * DAY
    other.add(Note(title="fine"))
    other.sync()
    report = local.sync()
    assert report.errors == {} and report.held == 2
    assert titles(local) == ["fine"]
    assert local.get(Note, eid) is None


def test_a_held_transaction_that_no_longer_reads_stays_held_and_stops_nothing(
        devs: Devices) -> None:
    """A stored held transaction whose body no longer decodes (as one stored by a build
    with looser checks could) stays stored and counted, and every sync still merges the
    other authors."""
    storage = devs.new("writer").db.storage
    author = dimple.new_id()
    cipher = make_cipher(identity=devs.identity, recipients=None, passphrase=None,
                         encryption=True)
    plant_note(storage, author, HybridClock(now_ns=Shifted(DAY)).reserve(3), "later",
               cipher.encrypt)
    wall = Shifted()
    local = devs.new("local", clock=HybridClock(now_ns=wall))
    other = devs.new("other")
    assert local.sync().held == 2
    with local.db.engine.begin() as conn:
        conn.execute(schema.ahead.update().values(body='{"transactions": [["x"]]}'))
    wall.offset = 2 * DAY
    other.add(Note(title="fine"))
    other.sync()
    for _ in range(2):
        report = local.sync()
        assert report.errors == {} and report.held == 2
    assert titles(local) == ["fine"]
    with local.db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.ahead)).scalar() == 1


@pytest.mark.sqlite_only("restores a database file from a copy")
def test_a_restored_backup_heals_its_own_transactions_from_a_fast_clock_and_pushes_after(
        devs: Devices, tmp_path: Path) -> None:
    """Our own transactions in our folder, written while our clock ran a day ahead, are
    merged back at once (never held), and what we write next sorts after them: it is
    pushed, not skipped."""
    wall = Shifted(DAY)
    dev = devs.new("dev", clock=HybridClock(now_ns=wall))
    dev.add(Note(title="before"))
    dev.sync()
    backup = tmp_path / "backup.db"
    shutil.copy(dev.path, backup)
    dev.add(Note(title="ahead"))
    dev.sync()
    devs.close(dev)
    shutil.copy(backup, dev.path)
    wall.offset = 0  # the clock fixed, the backup restored
    restored = devs.new("dev", create=False, clock=HybridClock(now_ns=wall))
    restored.sync()
    assert titles(restored) == ["ahead", "before"]
    restored.add(Note(title="after"))
    assert restored.sync().pushed == 1
    other = devs.new("other", max_drift=timedelta(days=2))  # takes the fast clock's too
    other.sync()
    assert titles(other) == ["after", "ahead", "before"]
