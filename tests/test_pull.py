"""Tests for ``dimpledb_sa.sync.pull``, ``dimpledb_sa.sync.quarantine`` and
``dimpledb_sa.sync.notes``: pull isolation and healing.

One unreadable bundle never blocks anything: the reader sets it aside, merges the writer's
later bundles and every other author, retries it on every sync, and tells the writer in its
notes file; the writer uploads it again on its next push, and the bundle heals with nothing
deleted by hand. Runs on every backend (memory, local folder, S3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Remote
from models import Note
from sqlalchemy import select
from syncworld import Device, Devices, device_set, read_manifest, titles, write_file

import dimpledb_sa as dimple
from dimpledb_sa.core import schema
from dimpledb_sa.core.clock import HybridClock, offset_id
from dimpledb_sa.core.errors import RemoteFormatError
from dimpledb_sa.sync import notes as notes_mod
from dimpledb_sa.sync.crypto import generate_identity
from dimpledb_sa.sync.notes import Note as Entry
from dimpledb_sa.sync.notes import decode_notes, encode_notes
from dimpledb_sa.sync.wire import (
    NOTES_NAME,
    BundleInfo,
    ChangeRow,
    bundle_name,
    encode_bundle,
    encode_manifest,
    manifest_with,
    utc_now_iso,
)


def try_sync(dev: Device) -> dimple.SyncReport:
    try:
        return dev.sync()
    except dimple.SyncError as e:
        assert e.report is not None
        return e.report


def quarantined(dev: Device) -> list[tuple[str, str]]:
    with dev.db.engine.connect() as conn:
        u = schema.unreadable
        return sorted((r.filename, r.reason) for r in conn.execute(select(u)))


def bundles(remote: Remote, dev: Device) -> list[str]:
    fs, root = remote.filesystem()
    return [b["filename"] for b in read_manifest(fs, root, dev.db.author_id)["bundles"]]


def path_of(remote: Remote, dev: Device, name: str) -> str:
    return f"{remote.filesystem()[1]}/{dev.db.author_id}/{name}"


def read(remote: Remote, path: str) -> bytes:
    fs, _ = remote.filesystem()
    fs.invalidate_cache()
    return bytes(fs.cat_file(path))


def notes_of(remote: Remote, dev: Device) -> list[dict[str, str]]:
    doc = json.loads(read(remote, path_of(remote, dev, NOTES_NAME)))
    assert doc["author_id"] == dev.db.author_id
    entries: list[dict[str, str]] = doc["unreadable"]
    return entries


def writer_with_three_bundles(devs: Devices) -> tuple[Device, Device]:
    w, r = devs.new("writer"), devs.new("reader")
    for title in ("one", "two", "three"):
        w.add(Note(title=title))
        w.sync()
    return w, r


# --------------------------------------------------------------------------- healing


def test_a_corrupted_bundle_heals_within_two_syncs_of_each_side(
    devs: Devices, remote: Remote
) -> None:
    w, r = writer_with_three_bundles(devs)
    names = bundles(remote, w)
    path = path_of(remote, w, names[1])
    data = bytearray(read(remote, path))
    data[len(data) // 2] ^= 0xFF  # flipped bytes in the middle
    write_file(remote.filesystem()[0], path, bytes(data))

    with pytest.raises(dimple.DecryptionError) as info:  # reader, sync 1
        r.sync()
    report = info.value.report
    assert report is not None and report.quarantined == 1
    assert names[1] in report.errors[w.db.author_id]
    assert titles(r) == ["one", "three"]  # the later bundle merged all the same
    assert quarantined(r) == [(names[1], "decrypt")]
    [entry] = notes_of(remote, r)
    assert (entry["author"], entry["filename"], entry["reason"]) == (
        w.db.author_id, names[1], "decrypt")

    w.sync()  # writer, sync 1: reads the notes
    assert w.sync().requests.get("put") == 1  # writer, sync 2: uploads the bundle again
    assert bundles(remote, w) == names  # same files, same manifest entries
    report = r.sync()  # reader, sync 2
    assert report.errors == {} and report.quarantined == 0 and report.pulled == 1
    assert titles(r) == ["one", "three", "two"]
    assert quarantined(r) == [] and notes_of(remote, r) == []
    assert w.snapshot() == r.snapshot() and w.log() == r.log()
    for d in (w, r):  # and then: nothing is sent again, nothing read twice
        report = d.sync()
        assert "put" not in report.requests and report.requests["ls"] == 1


def test_a_bundle_without_the_readers_key_heals_once_the_writer_has_it(
    tmp_path: Path, remote: Remote
) -> None:
    r_key, r_pub = generate_identity()
    w_key, w_pub = generate_identity()
    with device_set(tmp_path, remote.url, remote.storage_options) as devs:
        r = devs.new("reader", identity=r_key, recipients=[w_pub])
        w = devs.new("writer", identity=w_key)  # does not know the reader's key yet
        w.add(Note(title="one"))
        w.sync()
        with pytest.raises(dimple.DecryptionError) as info:
            r.sync()
        assert info.value.report is not None
        assert "not encrypted to this identity" in info.value.report.errors[w.db.author_id]

        w.sync()  # learns of the note
        # sends the bundle again, to its recipients: still without the reader's key
        assert w.sync().requests.get("put") == 1
        assert "put" not in w.sync().requests  # once for that note and those recipients
        with pytest.raises(dimple.DecryptionError):
            r.sync()

        # the writer gets the reader's key (as `dimpledb sync -r` gives it)
        keyed = devs.new("writer-keyed", file=w.path, create=False, identity=w_key,
                         recipients=[r_pub])
        devs.close(w)
        keyed.add(Note(title="two"))
        report = keyed.sync()  # sends the noted bundle again, now to the reader too
        assert report.pushed == 1 and report.errors == {}
        report = r.sync()
        assert report.errors == {} and titles(r) == ["one", "two"]
        assert quarantined(r) == []
        assert "put" not in keyed.sync().requests


def test_reading_stops_at_a_missing_bundle_and_its_writer_restores_it(
    devs: Devices, remote: Remote
) -> None:
    w, r = writer_with_three_bundles(devs)
    names = bundles(remote, w)
    fs, _ = remote.filesystem()
    fs.rm(path_of(remote, w, names[1]))
    fs.invalidate_cache()
    for _ in range(2):  # the cursor stays before it: each sync starts there again
        with pytest.raises(dimple.SyncError) as info:
            r.sync()
        report = info.value.report
        assert report is not None and "missing" in report.errors[w.db.author_id]
        assert titles(r) == ["one"]
        assert quarantined(r) == [(names[1], "missing")]
    assert [e["reason"] for e in notes_of(remote, r)] == ["missing"]
    w.sync()
    w.sync()
    assert r.sync().errors == {}
    assert titles(r) == ["one", "three", "two"]


def test_a_quarantined_bundle_listed_anew_under_another_name_is_read_there(
    devs: Devices, remote: Remote
) -> None:
    """The writer's manifest is written anew (it was lost): the quarantined file is no
    longer listed, and the new bundle holding its transactions ends at the reader's cursor,
    so only the quarantine can say it must be read."""
    w, r = writer_with_three_bundles(devs)
    names = bundles(remote, w)
    write_file(remote.filesystem()[0], path_of(remote, w, names[1]), b"garbage")
    assert try_sync(r).quarantined == 1
    remote.filesystem()[0].rm(path_of(remote, w, "dimple_db.json"))
    with w.db.engine.begin() as conn:
        conn.execute(schema.meta.delete().where(schema.meta.c.key == "pushed_through"))
    again = devs.new("writer-again", file=w.path, create=False)  # nothing cached
    devs.close(w)
    assert again.sync().pushed == 3
    [name] = bundles(remote, again)
    assert name.split("_")[1] == names[2].split("_")[1]  # ends where the cursor is
    report = r.sync()
    assert report.errors == {} and titles(r) == ["one", "three", "two"]
    assert quarantined(r) == []


def test_other_authors_merge_while_one_is_quarantined(devs: Devices, remote: Remote) -> None:
    w, r = writer_with_three_bundles(devs)
    other = devs.new("other")
    other.add(Note(title="other"))
    other.sync()
    path = path_of(remote, w, bundles(remote, w)[0])
    write_file(remote.filesystem()[0], path, b"not an age file")
    report = try_sync(r)
    assert set(report.errors) == {w.db.author_id} and report.quarantined == 1
    assert titles(r) == ["other", "three", "two"]
    report = try_sync(r)  # retried on every sync, named until it reads
    assert set(report.errors) == {w.db.author_id} and report.quarantined == 1


# --------------------------------------------------------------------------- changes


def _forged(devs: Devices, remote: Remote, bodies: list[dict[str, str | None]]) -> str:
    """A new author with one bundle per body: one transaction inserting a note with those
    JSON texts."""
    fs, root = remote.filesystem()
    author = dimple.new_id()
    clock = HybridClock()
    manifest = None
    from pyrage import encrypt, x25519

    key = x25519.Identity.from_str(devs.identity).to_public()
    for fields in bodies:
        eid = dimple.new_id()
        tx_id, first = clock.reserve_runs([1, len(fields)])
        changes: list[ChangeRow] = [
            (offset_id(first, k), tx_id, "note", eid, attr, None,
             json.dumps(eid) if attr == "id" else v)
            for k, (attr, v) in enumerate(fields.items())]
        name = bundle_name(tx_id, tx_id)
        write_file(fs, f"{root}/{author}/{name}",
                   bytes(encrypt(encode_bundle([(tx_id, author, changes)]), [key])))
        manifest = manifest_with(manifest, author, BundleInfo(name, tx_id, tx_id, 1,
                                                              utc_now_iso()))
    assert manifest is not None
    write_file(fs, f"{root}/{author}/dimple_db.json", encode_manifest(manifest))
    return author


def test_a_bundle_whose_changes_cannot_be_applied_does_not_block_the_next(
    devs: Devices, remote: Remote
) -> None:
    r = devs.new("reader")
    bad = {"id": None, "title": '{"a": [1]}', "body": None, "done": "false", "rank": "1"}
    good = {"id": None, "title": '"fine"', "body": None, "done": "false", "rank": "2"}
    author = _forged(devs, remote, [bad, good])
    with pytest.raises(dimple.RemoteFormatError) as info:
        r.sync()
    assert info.value.report is not None and "cannot be applied" in str(info.value)
    assert titles(r) == ["fine"]
    assert [reason for _, reason in quarantined(r)] == ["apply"]
    assert not any(e["author"] == author for e in notes_of_or_empty(remote, r))


def notes_of_or_empty(remote: Remote, dev: Device) -> list[dict[str, str]]:
    try:
        return notes_of(remote, dev)
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------- the notes file


def test_notes_round_trip_and_are_strict() -> None:
    reader, writer = dimple.new_id(), dimple.new_id()
    first, last = dimple.new_id(), dimple.new_id()
    note = Entry(writer, bundle_name(first, last), "format", "2024-07-11T10:30:45.123Z")
    data = encode_notes(reader, [note])
    assert decode_notes(data, reader) == [note]
    doc = json.loads(data)
    assert set(doc) == {"author_id", "updated_at", "unreadable"}
    with pytest.raises(RemoteFormatError):
        decode_notes(data, writer)  # not its folder's author
    for field, value in (("reason", "boredom"), ("filename", "../x.json"),
                         ("author", "not-a-uuid"), ("since", "yesterday")):
        bad: dict[str, Any] = json.loads(data)
        bad["unreadable"][0][field] = value
        with pytest.raises(RemoteFormatError):
            decode_notes(json.dumps(bad).encode(), reader)
    extra: dict[str, Any] = json.loads(data)
    extra["more"] = 1
    with pytest.raises(RemoteFormatError):
        decode_notes(json.dumps(extra).encode(), reader)
    many = encode_notes(reader, [note] * (notes_mod.NOTES_LIMIT + 1))
    with pytest.raises(RemoteFormatError):
        decode_notes(many, reader)


def test_an_unreadable_notes_file_is_reported_and_retried(
    devs: Devices, remote: Remote
) -> None:
    w, r = devs.new("writer"), devs.new("reader")
    r.add(Note(title="r"))
    r.sync()
    write_file(remote.filesystem()[0], path_of(remote, r, NOTES_NAME), b"{not json")
    for _ in range(2):
        report = try_sync(w)
        assert set(report.errors) == {r.db.author_id} and "not valid JSON" in str(report.errors)
    assert titles(w) == ["r"]  # its bundles merged all the same
    fs, _ = remote.filesystem()
    fs.rm(path_of(remote, r, NOTES_NAME))
    fs.invalidate_cache()
    assert w.sync().errors == {}
    assert w.sync().requests == {"ls": 1, "get": 1}  # read again only when it changes


def test_a_database_from_the_first_release_gets_the_new_tables_at_its_first_sync(
    devs: Devices
) -> None:
    w, r = devs.new("writer"), devs.new("reader")
    w.add(Note(title="w"))
    w.sync()
    with r.db.engine.begin() as conn:
        schema.unreadable.drop(conn)
        schema.peers.drop(conn)
    assert r.sync().errors == {} and titles(r) == ["w"]
    r.add(Note(title="r"))
    assert r.sync().pushed == 1
