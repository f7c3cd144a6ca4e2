"""Tests for ``dimpledb_sa.sync.run`` when things go wrong: hostile or broken remote data,
and a failing storage backend.

Bad data from one author (wrong key, corrupt, truncated or tampered file, malformed JSON,
transactions signed with another author, unsafe names) is written straight into the remote
next to honest data, on every backend. The sync must merge everything readable, push local
work, then raise ``SyncError`` (``DecryptionError`` / ``RemoteFormatError``) naming the bad
author, and retry on the next sync. Storage faults are injected by :class:`FlakyFS`, a
memory filesystem whose k-th call raises ``OSError``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
from conftest import Remote
from fsspec.implementations.memory import MemoryFileSystem
from models import Note
from pyrage import x25519
from sqlalchemy import select, update
from syncworld import (
    Device,
    Devices,
    assert_converged,
    device_set,
    read_manifest,
    sync_all,
    titles,
    write_file,
)

import dimpledb_sa as dimple
from dimpledb_sa.core import schema
from dimpledb_sa.core.clock import HybridClock, offset_id
from dimpledb_sa.sync.crypto import generate_identity
from dimpledb_sa.sync.wire import (
    BundleInfo,
    ChangeRow,
    bundle_name,
    encode_bundle,
    encode_manifest,
    manifest_with,
    utc_now_iso,
)


def try_sync(dev: Device) -> dimple.SyncReport:
    """Sync, and return the report also when the sync raises ``SyncError``."""
    try:
        return dev.sync()
    except dimple.SyncError as e:
        assert e.report is not None
        return e.report


# --------------------------------------------------------------------------- hostile data


class World:
    """An honest author ``a``, an author ``b`` whose files the test spoils, and ``victim``
    with local work not pushed yet."""

    def __init__(self, devs: Devices, remote: Remote) -> None:
        self.devs = devs
        self.fs, self.root = remote.filesystem()
        self.a, self.b, self.victim = devs.new("a"), devs.new("b"), devs.new("victim")
        self.victim.add(Note(title="victim, before"))
        self.victim.sync()
        self.a.add(Note(title="from a"))
        self.a.sync()
        self.b.add(Note(title="from b"))
        self.b.sync()
        self.victim.add(Note(title="victim, local"))
        self.saved: dict[str, bytes] = {}

    def path(self, author: str, name: str = "dimple_db.json") -> str:
        return f"{self.root}/{author}/{name}"

    def b_bundle(self) -> str:
        [info] = read_manifest(self.fs, self.root, self.b.db.author_id)["bundles"]
        return self.path(self.b.db.author_id, info["filename"])

    def replace(self, path: str, data: bytes) -> None:
        self.fs.invalidate_cache()
        self.saved.setdefault(path, bytes(self.fs.cat_file(path)))
        write_file(self.fs, path, data)

    def restore(self) -> None:
        for path, data in self.saved.items():
            write_file(self.fs, path, data)
        self.saved.clear()

    def encrypt(self, data: bytes) -> bytes:
        key = x25519.Identity.from_str(self.devs.identity)
        return bytes(pyrage.encrypt(data, [key.to_public()]))


def spoil_wrong_key(w: World) -> str:
    """A third author that encrypts only to its own key; the fix: a re-encrypted copy."""
    own_key, _ = generate_identity()
    stranger = w.devs.new("stranger", identity=own_key)
    stranger.add(Note(title="from the stranger"))
    assert len(try_sync(stranger).errors) == 3  # it cannot read the others either
    author = stranger.db.author_id
    [info] = read_manifest(w.fs, w.root, author)["bundles"]
    path = w.path(author, info["filename"])
    w.fs.invalidate_cache()
    plain = pyrage.decrypt(bytes(w.fs.cat_file(path)), [x25519.Identity.from_str(own_key)])
    w.saved[path] = w.encrypt(plain)  # what restore() writes: readable by everyone
    return author


def spoil_corrupt(w: World) -> str:
    w.replace(w.b_bundle(), os.urandom(300))
    return w.b.db.author_id


def spoil_truncated(w: World) -> str:
    path = w.b_bundle()
    data = bytes(w.fs.cat_file(path))
    w.replace(path, data[: len(data) * 2 // 3])
    return w.b.db.author_id


def spoil_tampered(w: World) -> str:
    path = w.b_bundle()
    data = bytearray(w.fs.cat_file(path))
    data[-40] ^= 0x01  # one bit of the payload
    w.replace(path, bytes(data))
    return w.b.db.author_id


def spoil_malformed_json(w: World) -> str:
    w.replace(w.b_bundle(), w.encrypt(b'[{"id": "01933b2e-3f47-7b12-9c8d-1234567890ab", '))
    return w.b.db.author_id


def spoil_foreign_author(w: World) -> str:
    """b's bundle and manifest copied into another author's folder: its transactions still
    name b as their author."""
    impostor = str(uuid.uuid4())
    b = w.b.db.author_id
    manifest = read_manifest(w.fs, w.root, b)
    manifest["author_id"] = impostor
    bundle = w.b_bundle()
    write_file(w.fs, f"{w.root}/{impostor}/{bundle.rsplit('/', 1)[1]}",
               bytes(w.fs.cat_file(bundle)))
    write_file(w.fs, w.path(impostor), json.dumps(manifest).encode())
    w.saved[f"{w.root}/{impostor}"] = b""  # restore() removes the folder
    return impostor


def _spoil_manifest(w: World, filename: Callable[[str], str]) -> str:
    b = w.b.db.author_id
    manifest = read_manifest(w.fs, w.root, b)
    manifest["bundles"][0]["filename"] = filename(manifest["bundles"][0]["filename"])
    w.replace(w.path(b), json.dumps(manifest).encode())
    return b


def spoil_bad_file_name(w: World) -> str:
    return _spoil_manifest(w, lambda name: "notes.json")


def spoil_escaping_file_name(w: World) -> str:
    a = w.a.db.author_id
    return _spoil_manifest(w, lambda name: f"../{a}/{name}")


def spoil_bad_folder_name(w: World) -> str:
    write_file(w.fs, f"{w.root}/not-an-author/dimple_db.json", b"{}")
    w.saved[f"{w.root}/not-an-author"] = b""
    return "not-an-author"


def _forged_author(w: World, values: Callable[[str], dict[str, str | None]]) -> str:
    """A new author folder holding one well-formed, well-encrypted bundle: one transaction
    inserting a note ``eid`` with the JSON texts ``values(eid)`` gives."""
    author = str(uuid.uuid4())
    clock = HybridClock()
    eid = str(uuid.uuid4())
    tx_id, first = clock.reserve_runs([1, 5])
    fields = values(eid)
    changes: list[ChangeRow] = [(offset_id(first, k), tx_id, "note", eid, attr, None, v)
                                for k, (attr, v) in enumerate(fields.items())]
    name = bundle_name(tx_id, tx_id)
    write_file(w.fs, w.path(author, name), w.encrypt(encode_bundle([(tx_id, author,
                                                                     changes)])))
    manifest = manifest_with(None, author, BundleInfo(name, tx_id, tx_id, 1, utc_now_iso()))
    write_file(w.fs, w.path(author), encode_manifest(manifest))
    w.saved[f"{w.root}/{author}"] = b""
    return author


def spoil_key_of_another_row(w: World) -> str:
    """An insert whose key value is not its entity id, but an existing row's."""
    taken = w.a.rows(Note)[0][0]
    return _forged_author(w, lambda eid: {"id": json.dumps(taken), "title": '"t"',
                                          "body": None, "done": "false", "rank": "1"})


def spoil_unstorable_value(w: World) -> str:
    """A JSON object for a string column: well-formed JSON that no row can hold."""
    return _forged_author(w, lambda eid: {"id": json.dumps(eid), "title": '{"a": [1]}',
                                          "body": None, "done": "false", "rank": "1"})


SPOILERS: dict[str, tuple[Callable[[World], str], type[dimple.SyncError]]] = {
    "wrong-key": (spoil_wrong_key, dimple.DecryptionError),
    "corrupt": (spoil_corrupt, dimple.DecryptionError),
    "truncated": (spoil_truncated, dimple.DecryptionError),
    "tampered": (spoil_tampered, dimple.DecryptionError),
    "malformed-json": (spoil_malformed_json, dimple.RemoteFormatError),
    "foreign-author": (spoil_foreign_author, dimple.RemoteFormatError),
    "bad-file-name": (spoil_bad_file_name, dimple.RemoteFormatError),
    "escaping-file-name": (spoil_escaping_file_name, dimple.RemoteFormatError),
    "bad-folder-name": (spoil_bad_folder_name, dimple.RemoteFormatError),
    "key-of-another-row": (spoil_key_of_another_row, dimple.RemoteFormatError),
    "unstorable-value": (spoil_unstorable_value, dimple.RemoteFormatError),
}


BYTES_ONLY = ("wrong-key", "corrupt", "truncated", "tampered", "malformed-json")
"""Spoilers of a file's bytes alone, read back the same from every backend: their runs
take the memory remote only (the others also take each backend's listing and names)."""


@pytest.mark.parametrize("case", [c for c in SPOILERS if c not in BYTES_ONLY])
def test_bad_data_from_one_author_does_not_stop_the_others(
    devs: Devices, remote: Remote, case: str
) -> None:
    bad_data_from_one_author_does_not_stop_the_others(devs, remote, case)


@pytest.mark.parametrize("remote", ["memory"], indirect=True)
@pytest.mark.parametrize("case", BYTES_ONLY)
def test_bad_bytes_from_one_author_do_not_stop_the_others(
    devs: Devices, remote: Remote, case: str
) -> None:
    bad_data_from_one_author_does_not_stop_the_others(devs, remote, case)


def bad_data_from_one_author_does_not_stop_the_others(devs: Devices, remote: Remote,
                                                      case: str) -> None:
    w = World(devs, remote)
    spoil, error = SPOILERS[case]
    bad = spoil(w)
    victim = w.victim

    with pytest.raises(error) as info:
        victim.sync()
    report = info.value.report
    assert report is not None and isinstance(info.value, dimple.SyncError)
    assert set(report.errors) == {bad}, report.errors
    assert report.pushed == 1  # local work went out all the same
    assert "from a" in titles(victim)  # the honest author's data was merged
    assert "victim, local" in titles(victim)
    if bad != w.b.db.author_id:
        assert "from b" in titles(victim)
    else:
        assert "from b" not in titles(victim)
    try_sync(w.a)
    assert "victim, local" in titles(w.a)

    with pytest.raises(error) as info:  # the next sync retries, and fails the same way
        victim.sync()
    assert info.value.report is not None and set(info.value.report.errors) == {bad}

    for path in [p for p, data in w.saved.items() if not data]:
        w.fs.rm(path, recursive=True)
        del w.saved[path]
    w.restore()
    report = victim.sync()
    assert report.errors == {}
    expected = ["from a", "from b", "victim, before", "victim, local"]
    if case == "wrong-key":
        expected.append("from the stranger")
    assert titles(victim) == sorted(expected)
    sync_all(w.a, w.b, victim)
    assert_converged(w.a, w.b, victim)


def test_several_bad_authors_are_all_named(devs: Devices, remote: Remote) -> None:
    w = World(devs, remote)
    bad = {spoil_tampered(w), spoil_bad_folder_name(w), spoil_foreign_author(w)}
    with pytest.raises(dimple.SyncError) as info:  # mixed kinds: the base class
        w.victim.sync()
    assert type(info.value) is dimple.SyncError
    assert info.value.report is not None and set(info.value.report.errors) == bad
    for author in bad:
        assert author in str(info.value)
    assert "from a" in titles(w.victim)


def test_a_later_bundle_of_a_bad_author_merges_all_the_same(
    devs: Devices, remote: Remote
) -> None:
    """An unreadable bundle is set aside: the author's later bundles merge at once, and the
    bad one once it reads again (no head-of-line blocking)."""
    w = World(devs, remote)
    path = w.b_bundle()
    w.b.add(Note(title="from b, later"))
    w.b.sync()
    w.replace(path, os.urandom(100))
    with pytest.raises(dimple.DecryptionError):
        w.victim.sync()
    assert "from b" not in titles(w.victim) and "from b, later" in titles(w.victim)
    w.restore()
    w.victim.sync()
    assert {"from b", "from b, later"} <= set(titles(w.victim))


@pytest.mark.parametrize("damage", ["deleted", "garbage", "rolled-back"])
def test_our_own_damaged_manifest_is_rebuilt_by_the_next_push(
    devs: Devices, remote: Remote, damage: str
) -> None:
    """Our manifest lost, unreadable or older than what we pushed: the next push lists
    every transaction again, so that a device that never synced still gets them all."""
    fs, root = remote.filesystem()
    a, b = devs.new("a"), devs.new("b")
    path = f"{root}/{a.db.author_id}/dimple_db.json"
    a.add(Note(title="one"))
    a.sync()
    fs.invalidate_cache()
    first = bytes(fs.cat_file(path))
    a.add(Note(title="two"))
    a.sync()
    b.sync()
    if damage == "deleted":
        fs.rm(path)
    else:
        write_file(fs, path, b"\x00 not json" if damage == "garbage" else first)
    restarted = devs.new("a-restarted", file=a.path, create=False)  # no cached manifest
    devs.close(a)
    restarted.add(Note(title="three"))
    report = restarted.sync()
    rolled_back = damage == "rolled-back"
    assert report.errors == {} and report.pushed == (2 if rolled_back else 3)
    assert len(read_manifest(fs, root, restarted.db.author_id)["bundles"]) == (
        2 if rolled_back else 1)
    assert b.sync().applied == 5
    fresh = devs.new("fresh")
    assert fresh.sync().errors == {}
    for d in (b, fresh):
        assert titles(d) == ["one", "three", "two"]
    assert_converged(restarted, b, fresh)


# --------------------------------------------------------------------------- storage faults


class FlakyFS(MemoryFileSystem):
    """A memory filesystem that can fail its k-th call (``ls``, ``cat_file``, ``cat``,
    ``pipe_file``, ``mv``), before or after doing the work."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[tuple[str, str]] = []
        self.fail: Callable[[int, str, str], bool] | None = None
        self.after = False
        self.fired: list[tuple[str, str]] = []
        self._depth = 0

    def arm(self, fail: Callable[[int, str, str], bool], *, after: bool = False) -> None:
        self.calls, self.fired, self.fail, self.after = [], [], fail, after

    def disarm(self) -> None:
        self.fail = None

    def _call(self, op: str, path: Any, work: Callable[[], Any]) -> Any:
        if self._depth:
            return work()
        self.calls.append((op, str(path)))
        boom = self.fail is not None and self.fail(len(self.calls), op, str(path))
        if boom and not self.after:
            self.fired.append((op, str(path)))
            raise OSError(f"injected failure before {op} {path}")
        self._depth += 1
        try:
            out = work()
        except Exception:
            if not boom:
                raise
            out = None  # it failed by itself (a missing file): the injected failure wins
        finally:
            self._depth -= 1
        if boom:
            self.fired.append((op, str(path)))
            raise OSError(f"injected failure after {op} {path}")
        return out

    def ls(self, path: str, detail: bool = True, **kw: Any) -> Any:
        return self._call("ls", path, lambda: super(FlakyFS, self).ls(path, detail, **kw))

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kw: Any) -> Any:
        return self._call("cat_file", path,
                          lambda: super(FlakyFS, self).cat_file(path, start, end, **kw))

    def cat(self, path: Any, recursive: bool = False, on_error: str = "raise",
            **kw: Any) -> Any:
        return self._call("cat", path,
                          lambda: super(FlakyFS, self).cat(path, recursive, on_error, **kw))

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kw: Any) -> Any:
        return self._call("pipe_file", path,
                          lambda: super(FlakyFS, self).pipe_file(path, value, mode, **kw))

    def mv(self, path1: str, path2: str, *args: Any, **kw: Any) -> Any:
        return self._call("mv", path2, lambda: super(FlakyFS, self).mv(path1, path2, *args,
                                                                       **kw))


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[tuple[FlakyFS, Devices]]:
    fs = FlakyFS(skip_instance_cache=True)
    root = f"/flaky-{uuid.uuid4().hex}"
    with device_set(tmp_path, fs, path=root) as devs:
        yield fs, devs
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
def test_each_storage_call_failing_in_turn_loses_nothing(
    flaky: tuple[FlakyFS, Devices], after: bool
) -> None:
    fs, devs = flaky
    a, b = devs.new("a"), devs.new("b")
    made = ["a0", "b0"]
    a.add(Note(title="a0"))
    b.add(Note(title="b0"))
    sync_all(a, b)  # both authors exist; a has written its manifest and keeps it
    k = 0
    while True:
        k += 1
        for d in (a, b):
            made.append(f"{d.name}{k}")
            d.add(Note(title=made[-1]))
        b.sync()
        fs.arm(lambda n, op, path, k=k: n == k, after=after)  # type: ignore[misc]
        try:
            a.sync()
        except dimple.SyncError as e:
            assert fs.fired, f"sync raised without a failure: {e}"
            assert e.report is not None and (e.report.errors or "list" in str(e))
        else:
            assert not fs.fired
        finally:
            fs.disarm()
        if k > len(fs.calls):
            break
        assert fs.fired
        assert f"a{k}" in titles(a)  # local data stays
        a.sync()
        b.sync()
        assert titles(a) == titles(b) == sorted(made)
    assert k >= 8, fs.calls  # push: 2 pipe_file + 2 mv; pull: ls, cat_file, cat
    sync_all(a, b)
    assert titles(a) == sorted(made)
    assert_converged(a, b)


@pytest.mark.parametrize("more_work", [False, True])
def test_crash_between_bundle_and_manifest_is_repaired(
    flaky: tuple[FlakyFS, Devices], more_work: bool
) -> None:
    fs, devs = flaky
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title="first"))
    sync_all(a, b)
    a.add(Note(title="second"))
    # the manifest's write fails (the push reads it first: that still works)
    fs.arm(lambda n, op, path: op == "pipe_file" and "dimple_db.json" in path)
    with pytest.raises(dimple.SyncError) as info:
        a.sync()
    fs.disarm()
    assert info.value.report is not None and "push" in info.value.report.errors
    assert [op for op, _ in fs.fired] == ["pipe_file"]
    assert b.sync().pulled == 0  # the new bundle is not listed yet
    if more_work:
        a.add(Note(title="third"))
    pushed = a.sync().pushed
    assert pushed == (2 if more_work else 1)
    assert b.sync().pulled == pushed
    assert titles(b) == sorted(["first", "second"] + (["third"] if more_work else []))
    assert_converged(a, b)


def test_crash_after_the_manifest_before_the_local_commit(
    flaky: tuple[FlakyFS, Devices]
) -> None:
    """The remote got bundle and manifest, but the database never recorded the push: the
    next push starts after the manifest's last transaction (nothing is sent twice, nothing
    is lost), and readers take each transaction once."""
    fs, devs = flaky
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title="first"))
    a.sync()
    b.sync()
    with a.db.engine.connect() as conn:
        before = conn.execute(select(schema.meta.c.value).where(
            schema.meta.c.key == "pushed_through")).scalar_one()
    a.add(Note(title="second"))
    a.add(Note(title="third"))
    a.sync()
    with a.db.engine.begin() as conn:
        conn.execute(update(schema.meta).where(schema.meta.c.key == "pushed_through")
                     .values(value=before))
    a.add(Note(title="fourth"))
    assert a.sync().pushed == 1
    manifest = read_manifest(fs, devs.path or "", a.db.author_id)
    assert [m["transaction_count"] for m in manifest["bundles"]] == [1, 2, 1]
    report = b.sync()
    assert report.pulled >= 3 and report.errors == {}
    fresh = devs.new("fresh")
    report = fresh.sync()
    assert report.errors == {}
    for d in (a, b, fresh):
        assert titles(d) == ["first", "fourth", "second", "third"]
    sync_all(a, b, fresh)
    assert_converged(a, b, fresh)


def test_an_unreachable_remote_raises_sync_error_and_keeps_local_work(
    flaky: tuple[FlakyFS, Devices]
) -> None:
    fs, devs = flaky
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title="offline work"))
    fs.arm(lambda n, op, path: True)
    for _ in range(2):
        with pytest.raises(dimple.SyncError):
            a.sync()
    fs.disarm()
    assert titles(a) == ["offline work"]
    assert a.sync().pushed == 1
    b.sync()
    assert titles(b) == ["offline work"]

