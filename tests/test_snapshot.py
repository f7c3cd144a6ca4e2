"""Snapshots, compaction and bootstrap (``db.snapshot``, ``db.compact``), and
``db.prune_history``: a device that is new, or whose cursor points into removed bundles,
merges the newest snapshot and the bundles after it and ends with the same rows."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import timedelta
from pathlib import Path

import fsspec
import pytest
from models import Folder, Item, Note, OldSyncBase, SyncBase
from sqlalchemy import select
from syncworld import Device, device_set, sync_all

from dimpledb_sa.core import changelog, meta, schema
from dimpledb_sa.core.errors import RemoteFormatError, SyncError
from dimpledb_sa.sync import bootstrap, snapshot
from dimpledb_sa.sync.wire import decode_manifest, is_bundle_name


def _url() -> str:
    return f"memory://snap-{uuid.uuid4().hex}/remote"


def _files(dev: Device) -> list[str]:
    return dev.db.storage.list_files(dev.db.replica.author_id)


def _bundles(dev: Device) -> list[str]:
    return [f for f in _files(dev) if is_bundle_name(f)]


def _manifest_names(dev: Device) -> list[str]:
    me = dev.db.replica.author_id
    data = dev.db.storage.read_manifest(me)
    assert data is not None
    return [b.filename for b in decode_manifest(data, me).bundles]


def _history(dev: Device, n: int = 4) -> list[str]:
    """Several pushed bundles: inserts, updates, a delete and a re-insert."""
    ids = [f"n{k}" for k in range(n)]
    for k, eid in enumerate(ids):
        dev.add(Note(id=eid, title=f"t{k}", rank=k))
        dev.sync()
    dev.edit(Note, ids[0], title="edited", body="b")
    dev.sync()
    dev.delete(Note, ids[1])
    dev.sync()
    dev.delete(Note, ids[2])
    dev.sync()
    dev.add(Note(id=ids[2], title="back"))
    dev.sync()
    return ids


def test_compact_then_a_new_device_bootstraps_from_the_snapshot(tmp_path: Path) -> None:
    with device_set(tmp_path, _url()) as devs:
        a = devs.new("a")
        _history(a)
        before = len(_bundles(a))
        removed = a.db.compact()
        assert removed == before - 1  # the newest bundle stays listed
        assert _bundles(a) == _manifest_names(a)
        names = [f for f in _files(a) if snapshot.is_snapshot_name(f)]
        assert len(names) == 1
        # encrypted: the file is not JSON
        blob = a.db.storage.read_snapshot(a.db.replica.author_id, names[0])
        with pytest.raises(ValueError):
            json.loads(blob)
        c = devs.new("c")
        report = c.sync()
        assert report.errors == {}
        assert c.snapshot() == a.snapshot()
        assert c.get(Note, "n1") is None
        assert c.get(Note, "n2") == {"id": "n2", "title": "back", "body": None,
                                     "done": False, "rank": None}
        # it holds only the winning changes
        assert c.log() <= a.log()
        assert len(c.log()) < len(a.log())


def test_a_device_offline_across_a_compaction_converges(tmp_path: Path) -> None:
    """B's cursor points into bundles A removes; B has unpushed edits and deletes."""
    with device_set(tmp_path, _url()) as devs:
        a, b = devs.new("a"), devs.new("b")
        a.add(Note(id="x", title="x"), Note(id="y", title="y"), Note(id="z", title="z"))
        a.sync()
        b.sync()  # B's cursor: A's first bundle
        # offline, B edits x, deletes y, inserts w
        b.edit(Note, "x", body="from b")
        b.delete(Note, "y")
        b.add(Note(id="w", title="w"))
        # meanwhile A deletes z, edits x, and inserts and deletes v, over several bundles
        a.delete(Note, "z")
        a.sync()
        a.edit(Note, "x", title="x2")
        a.sync()
        a.add(Note(id="v", title="v"))
        a.sync()
        a.delete(Note, "v")
        a.sync()
        a.add(Note(id="u", title="u"))
        a.sync()
        assert a.db.compact() >= 3
        first = _manifest_names(a)[0]
        assert all(not f.startswith(first.split("_")[0]) or f == first
                   for f in _bundles(a))
        sync_all(b, a)
        assert a.snapshot() == b.snapshot()
        assert b.get(Note, "z") is None and b.get(Note, "v") is None  # not resurrected
        assert b.get(Note, "y") is None and a.get(Note, "y") is None
        assert a.get(Note, "x") == {"id": "x", "title": "x2", "body": "from b",
                                    "done": False, "rank": None}
        assert a.get(Note, "w") is not None and b.get(Note, "u") is not None
        # a third, new device agrees too
        c = devs.new("c")
        c.sync()
        assert c.snapshot() == a.snapshot()


def test_compaction_never_removes_what_its_snapshot_does_not_cover(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    with device_set(tmp_path, _url(), encryption=False) as devs:
        a = devs.new("a")
        _history(a, 3)
        listed = _manifest_names(a)
        # the snapshot covers less than the manifest lists (another handle pushed after
        # it): nothing is removed
        real = snapshot.write

        def stale(replica: object, remote: object) -> str | None:
            name = real(replica, remote)  # type: ignore[arg-type]
            assert name is not None
            last = decode_manifest(a.db.storage.read_manifest(a.db.replica.author_id) or b"",
                                   a.db.replica.author_id).bundles[-2].last_transaction_id
            return snapshot.snapshot_name(last)

        monkeypatch.setattr(snapshot, "write", stale)
        assert a.db.compact() == 0
        assert _manifest_names(a) == listed == _bundles(a)
        monkeypatch.setattr(snapshot, "write", real)
        # unpushed transactions are pushed first; every bundle removed is covered
        a.add(Note(id="late", title="late"))
        removed = a.db.compact()
        snaps = [f for f in _files(a) if snapshot.is_snapshot_name(f)]
        assert len(snaps) == 1
        last = snapshot.parse_snapshot_name(snaps[0])
        assert removed == len(listed)
        for f in _bundles(a):
            assert f.split("_")[1][:36] >= last
        plain = json.loads(gzip.decompress(
            a.db.storage.read_snapshot(a.db.replica.author_id, snaps[0])))
        assert plain["last_transaction_id"] == last
        with a.db.engine.connect() as conn:
            known = {tx for tx, _ in changelog.all_transactions(conn)}
        assert {tx["id"] for tx in plain["transactions"]} <= known


def test_held_changes_survive_compaction(tmp_path: Path) -> None:
    """An older schema (no ``rank``) bootstrapping from a snapshot holds ``rank`` and takes
    it once it has the column."""
    with device_set(tmp_path, _url()) as devs:
        a = devs.new("a")
        a.add(Note(id="r", title="r", rank=5))
        a.sync()
        a.edit(Note, "r", rank=6)
        a.sync()
        a.db.compact()
        old = devs.new("old", models=OldSyncBase)
        old.sync()
        assert ("note", "r", "rank") in {h[:3] for h in old.held()}
        devs.close(old)
        new = devs.new("old", models=SyncBase, create=False)
        new.db.create_all()
        with new.db.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE note ADD COLUMN rank INTEGER")
        new.db.replay_held()
        assert new.get(Note, "r") == a.get(Note, "r")


def test_snapshot_returns_its_name_and_covers_everything_pushed(tmp_path: Path) -> None:
    with device_set(tmp_path, _url(), encryption=False) as devs:
        a = devs.new("a")
        a.add(Folder(id="f", name="f"), Item(id="i", folder_id="f", label="l"))
        name = a.db.snapshot()
        with a.db.engine.connect() as conn:
            pushed = meta.get(conn, meta.PUSHED_THROUGH)
        assert name == f"snapshot_{pushed}.json"
        doc = json.loads(gzip.decompress(a.db.storage.read_snapshot(a.db.replica.author_id, name)))
        assert doc["format"] == "dimpledb-snapshot" and doc["held"] == []
        b = devs.new("b")
        b.sync()
        assert b.snapshot() == a.snapshot()


def test_prune_history_keeps_winners_and_unpushed(tmp_path: Path) -> None:
    with device_set(tmp_path, _url(), encryption=False) as devs:
        a, b = devs.new("a"), devs.new("b")
        a.add(Note(id="p", title="1"), Note(id="q", title="q"))
        for t in "234":
            a.edit(Note, "p", title=t)
        a.delete(Note, "q")
        a.sync()
        a.edit(Note, "p", title="unpushed")  # an unpushed transaction is never pruned
        log = a.log()
        removed = a.db.prune_history(older_than=timedelta(0))
        # titles 1, 2, 3 (4 is the pushed winner) and q's insert of its key (superseded by
        # the delete marker, which stays)
        assert removed == 4
        assert len(a.log()) == len(log) - 4
        with a.db.engine.connect() as conn:
            assert meta.get(conn, meta.PRUNED_BEFORE) is not None
        assert a.db.prune_history(older_than=timedelta(0)) == 0
        assert a.db.prune_history(older_than=timedelta(days=1)) == 0
        sync_all(a, b)
        assert b.snapshot() == a.snapshot()
        assert b.get(Note, "q") is None
        assert a.get(Note, "p")["title"] == "unpushed"  # type: ignore[index]
        # compaction after a prune still bootstraps a new device to the same rows
        a.db.compact()
        c = devs.new("c")
        c.sync()
        assert c.snapshot() == a.snapshot()


def _drop(url: str) -> None:
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.mark.parametrize("version", snapshot.VERSIONS)
def test_snapshot_codec_reads_any_field_order_and_rejects_what_is_not_sound(version: int
                                                                            ) -> None:
    """Both versions read (1: a bundle's array, as earlier releases wrote; 2: packed
    runs); an unknown version, or one whose transactions are the other version's, does
    not."""
    author = "0190aaaa-0000-7000-8000-000000000001"
    tx = "0190aaaa-0000-7000-8000-000000000002"
    change = (tx, tx, "note", "n", "id", None, '"n"')
    snap = snapshot.Snapshot(author, tx, [(tx, author, [change])],
                             [("note", "n", "rank", "unknown column")])
    data = snapshot.encode(snap, version)
    assert json.loads(data)["version"] == version
    name = snapshot.snapshot_name(tx)
    reordered = json.dumps(dict(reversed(list(json.loads(data).items())))).encode()
    for blob in (data, gzip.compress(data), reordered):  # format 2 is gzipped, 1 is not
        got = snapshot.decode(blob, author, name)
        assert (got.last, got.transactions, got.held) == (tx, snap.transactions, snap.held)
    other = "0190aaaa-0000-7000-8000-000000000003"
    with pytest.raises(RemoteFormatError):
        snapshot.decode(data, other, name)  # another author's folder
    with pytest.raises(RemoteFormatError):
        snapshot.decode(data, author, snapshot.snapshot_name(other))  # name and content differ
    for wrong in (3, 3 - version):
        doc = json.loads(data)
        doc["version"] = wrong
        with pytest.raises(RemoteFormatError):
            snapshot.decode(json.dumps(doc).encode(), author, name)
    assert snapshot.is_snapshot_name(name) and not snapshot.is_snapshot_name("snapshot_x.json")


def test_a_snapshot_that_cannot_be_applied_keeps_the_cursor(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from dimpledb_sa.sync import pull

    with device_set(tmp_path, _url(), encryption=False) as devs:
        a = devs.new("a")
        _history(a, 3)
        a.db.compact()
        c = devs.new("c")
        real = pull.merge

        def failing(replica: object, conn: object, txs: object) -> object:
            raise ValueError("no")

        def general(*args: object) -> object:
            raise bootstrap.NotBulk("the general merge")

        monkeypatch.setattr(pull, "merge", failing)
        monkeypatch.setattr(bootstrap, "merge_new", general)  # the bulk path steps aside
        with pytest.raises(SyncError) as info:
            c.sync()
        assert "snapshot_" in str(info.value)
        with c.db.engine.connect() as conn:
            assert conn.execute(select(schema.cursors)).all() == []
        monkeypatch.setattr(pull, "merge", real)
        assert c.sync().errors == {}
        assert c.snapshot() == a.snapshot()


@pytest.mark.parametrize("version", snapshot.VERSIONS)
def test_a_snapshot_decodes_in_pieces_as_it_does_whole(monkeypatch: pytest.MonkeyPatch,
                                                        version: int) -> None:
    """Pieces cut between transactions give the transactions decoded whole; a value that
    holds the cut's text, a reordered file or a bad piece fall back to decoding it whole."""
    author = "0190aaaa-0000-7000-8000-000000000001"
    txs = []
    for t in range(40):
        tx = f"0190aaaa-{t + 1:04x}-7000-8000-000000000002"
        value = json.dumps([{"a": 1}, {"b": t}]).replace(", ", ",\n") if t == 17 else '"v"'
        txs.append((tx, author, [(f"0190aaaa-{t + 1:04x}-7000-8000-00000000000{k}", tx,
                                  "note", f"n{t}", attr, None, val)
                                 for k, attr, val in ((3, "id", f'"n{t}"'), (4, "body", value))]))
    last = txs[-1][0]
    snap = snapshot.Snapshot(author, last, txs, [])
    name = snapshot.snapshot_name(last)
    data = snapshot.encode(snap, version)
    monkeypatch.setattr(snapshot, "PIECE_BYTES", 600)
    for blob in (data, gzip.compress(data), gzip.compress(data.replace(b',"v"', b',"w"'))):
        got_last, pieces = snapshot.decode_in_pieces(blob, author, name)
        parts = list(pieces)
        assert got_last == last and len(parts) > 3
        flat = [tx for part in parts for tx in part]
        assert [t[0] for t in flat] == [t[0] for t in txs]
    whole = snapshot.decode(data, author, name).transactions  # values made canonical
    plain = [tx for part in snapshot.decode_in_pieces(data, author, name)[1] for tx in part]
    assert plain == whole
    reordered = json.dumps(dict(reversed(list(json.loads(data).items())))).encode()
    assert [tx for p in snapshot.decode_in_pieces(reordered, author, name)[1] for tx in p
            ] == whole
    bad = gzip.compress(data.replace(txs[30][0].encode(), b"not-an-id", 1))
    _, pieces = snapshot.decode_in_pieces(bad, author, name)
    with pytest.raises(RemoteFormatError):
        list(pieces)


def test_a_snapshot_streamed_in_small_chunks_is_the_same_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the log a row at a time and encoding a run per chunk gives the
    transactions and held list that the defaults give (the latest change of every entity
    and attribute, in transaction order)."""
    with device_set(tmp_path, _url(), encryption=False) as devs:
        a = devs.new("a")
        _history(a, 5)
        me = a.db.replica.author_id

        def written() -> snapshot.Snapshot:
            name = a.db.snapshot()
            return snapshot.decode(a.db.storage.read_snapshot(me, name), me, name)

        whole = written()
        monkeypatch.setattr(snapshot, "READ_ROWS", 1)
        monkeypatch.setattr(snapshot, "ENCODE_RUNS", 1)
        small = written()
        assert (small.last, small.transactions, small.held) == (
            whole.last, whole.transactions, whole.held)
        # the latest change of each (entity, attribute) among everything logged
        latest: dict[tuple[str, str, str], tuple[str, ...]] = {}
        for ch in sorted(a.log()):
            latest[ch[2:5]] = ch
        assert sorted(ch for tx in whole.transactions for ch in tx[2]) == sorted(latest.values())
        assert [tx[0] for tx in whole.transactions] == sorted({ch[1] for ch in latest.values()})
