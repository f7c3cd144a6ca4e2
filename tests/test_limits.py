"""Tests for the limits and containment of ``dimpledb_sa.core.values``,
``dimpledb_sa.sync.wire``, ``dimpledb_sa.sync.storage`` and ``dimpledb_sa.sync.pull``.

Values nest at most ``MAX_VALUE_DEPTH`` arrays/objects deep: refused at flush locally and in
every bundle, by an iterative walk, whatever the caller's stack. No text holds NUL: refused
at commit, and a remote file holding one is quarantined alike on SQLite and PostgreSQL. A
stored file larger than its limit is refused after a ranged read of one byte more, before it
is decrypted or parsed.
Any exception from reading one remote file, a native panic (a ``BaseException``) included,
fails only that file's author; a manifest listing thousands of missing bundles costs one
batch of requests. Nothing here asserts on time.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyrage
import pytest
from conftest import Remote
from databases import Databases
from models import Note
from pyrage import x25519
from sqlalchemy import JSON, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from syncworld import Device, Devices, device_set, read_manifest, titles, write_file

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog
from dimpledb_sa.core.clock import HybridClock, offset_id
from dimpledb_sa.core.errors import RemoteFormatError
from dimpledb_sa.core.values import MAX_VALUE_DEPTH, holds_nul, value_depth
from dimpledb_sa.sync.pull import BATCH
from dimpledb_sa.sync.storage import Storage, TooLargeError
from dimpledb_sa.sync.wire import (
    BundleInfo,
    ChangeRow,
    Manifest,
    bundle_name,
    decode_bundle,
    encode_bundle,
    encode_manifest,
    manifest_with,
    utc_now_iso,
)

WAIT = 30.0  # only ever reached when something is broken


def nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def nested_text(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def at_stack_depth(frames: int, fn: Callable[[], Any]) -> Any:
    """``fn()`` called ``frames`` Python frames deeper than here."""
    if frames <= 0:
        return fn()
    return at_stack_depth(frames - 1, fn)


def verdict(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except RemoteFormatError:
        return "rejected"
    return "accepted"


# --------------------------------------------------------------------------- value depth


def test_value_depth_is_an_iterative_walk() -> None:
    assert value_depth(1) == value_depth("x") == 0
    assert value_depth([]) == 1 and value_depth({"a": [{}]}) == 3
    assert value_depth(nest(MAX_VALUE_DEPTH)) == MAX_VALUE_DEPTH
    assert value_depth(nest(200_000)) == MAX_VALUE_DEPTH + 1  # no RecursionError
    loop: list[Any] = []
    loop.append(loop)
    assert value_depth(loop) == MAX_VALUE_DEPTH + 1  # a cycle ends too


class JBase(DeclarativeBase):
    pass


class Doc(JBase):
    __tablename__ = "doc"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    data: Mapped[Any] = mapped_column(JSON, nullable=True)


def test_a_too_deep_json_value_is_refused_at_flush(tmp_path: Path) -> None:
    db = dimple.DimpleDb(create_engine(f"sqlite:///{tmp_path / 'a.db'}"), JBase)
    db.create_all()
    Session_ = db.sessionmaker()
    with Session_() as s:
        s.add(Doc(data=nest(MAX_VALUE_DEPTH)))
        s.commit()
    for frames in (0, 500):
        with Session_() as s:
            s.add(Doc(data={"deep": nest(MAX_VALUE_DEPTH)}))
            with pytest.raises(ValueError, match=f"nested more than {MAX_VALUE_DEPTH}"):
                at_stack_depth(frames, s.commit)
    with Session_() as s:
        [doc] = s.scalars(select(Doc)).all()
        doc.data = nest(MAX_VALUE_DEPTH + 1)  # an update too
        with pytest.raises(ValueError, match="nested more than"):
            s.commit()
    with db.engine.connect() as conn:
        assert len(changelog.all_transactions(conn)) == 1
    db.close()


def _bundle(value_text: str) -> tuple[bytes, str]:
    author = dimple.new_id()
    clock = HybridClock()
    tx, first = clock.reserve_runs([1, 1])
    change: ChangeRow = (first, tx, "doc", dimple.new_id(), "data", None, value_text)
    return encode_bundle([(tx, author, [change])]), author


@pytest.mark.parametrize("frames", [0, 850])
def test_bundle_values_have_one_depth_limit_whatever_the_stack(frames: int) -> None:
    cases = {MAX_VALUE_DEPTH: "accepted", MAX_VALUE_DEPTH + 1: "rejected",
             960: "rejected", 5000: "rejected"}
    for depth, expected in cases.items():
        data, author = _bundle(nested_text(depth))
        got = at_stack_depth(frames, lambda d=data, a=author: verdict(
            lambda: decode_bundle(d, a)))
        assert got == expected, (depth, frames)


def test_a_deep_old_value_is_rejected_too() -> None:
    author = dimple.new_id()
    tx, first = HybridClock().reserve_runs([1, 1])
    change: ChangeRow = (first, tx, "doc", dimple.new_id(), "data",
                         nested_text(MAX_VALUE_DEPTH + 1), "1")
    with pytest.raises(RemoteFormatError, match=f"change {first} has a value nested too"):
        decode_bundle(encode_bundle([(tx, author, [change])]), author)


# --------------------------------------------------------------------------- file size


def test_a_file_larger_than_its_limit_is_refused_after_a_ranged_read(
    remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage.from_remote(remote.url, remote.storage_options)
    author = dimple.new_id()
    ids = sorted(dimple.new_id() for _ in range(4))
    fit, big, empty, missing = (bundle_name(i, i) for i in ids)
    storage.write_bundle(author, fit, b"x" * 1000)
    storage.write_bundle(author, big, b"x" * 5000)
    storage.write_bundle(author, empty, b"")
    storage.max_bundle_bytes = 1000
    ranges: list[tuple[Any, Any]] = []
    real = storage.fs.cat_ranges

    def spy(paths: list[str], starts: Any, ends: Any, **kw: Any) -> Any:
        ranges.append((starts, ends))
        return real(paths, starts, ends, **kw)

    monkeypatch.setattr(storage.fs, "cat_ranges", spy)
    got = storage.read_bundles(author, [fit, big, empty, missing])
    assert got[fit] == b"x" * 1000 and got[empty] == b""
    assert isinstance(got[big], TooLargeError) and "limit of 1000 bytes" in str(got[big])
    assert isinstance(got[missing], FileNotFoundError)
    assert ranges == [(0, 1001)]  # never more than one byte past the limit
    with pytest.raises(TooLargeError):
        storage.read_bundle(author, big)
    assert storage.read_bundle(author, fit) == b"x" * 1000
    storage.write_manifest(author, encode_manifest(Manifest(author, None, utc_now_iso())))
    storage.max_manifest_bytes = 10
    with pytest.raises(TooLargeError):
        storage.read_manifest(author)


def test_a_bundle_over_the_limit_fails_its_author_only_and_is_never_decrypted(
    devs: Devices, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    big, small, r = devs.new("big"), devs.new("small"), devs.new("reader")
    big.add(Note(title="big", body=secrets.token_urlsafe(20_000)))  # incompressible
    big.sync()
    small.add(Note(title="small"))
    small.sync()
    r.db.storage.max_bundle_bytes = 10_000
    sizes: list[int] = []
    real = r.db.cipher.decrypt

    def spy(data: bytes) -> bytes:
        sizes.append(len(data))
        return real(data)

    monkeypatch.setattr(r.db.cipher, "decrypt", spy)
    for _ in range(2):
        with pytest.raises(dimple.RemoteFormatError) as info:
            r.sync()
        report = info.value.report
        assert report is not None and set(report.errors) == {big.db.author_id}
        assert "larger than the limit" in report.errors[big.db.author_id]
        assert report.quarantined == 1 and titles(r) == ["small"]
    assert sizes and max(sizes) <= 10_000  # the large one was never decrypted
    big.sync()
    assert "put" not in big.sync().requests  # sending it again would not help
    r.db.storage.max_bundle_bytes = 1 << 20  # the limit is a setting
    assert r.sync().errors == {} and titles(r) == ["big", "small"]


def _forge(devs: Devices, remote: Remote, texts: list[str], table: str = "doc") -> str:
    """A new author with one encrypted bundle per JSON text: an insert of a ``table`` row
    whose ``data`` holds that text."""
    fs, root = remote.filesystem()
    author = dimple.new_id()
    clock = HybridClock()
    key = x25519.Identity.from_str(devs.identity).to_public()
    manifest = None
    for text in texts:
        eid = dimple.new_id()
        tx, first = clock.reserve_runs([1, 2])
        changes: list[ChangeRow] = [(first, tx, table, eid, "id", None, json.dumps(eid)),
                                    (offset_id(first, 1), tx, table, eid, "data", None, text)]
        name = bundle_name(tx, tx)
        write_file(fs, f"{root}/{author}/{name}",
                   bytes(pyrage.encrypt(encode_bundle([(tx, author, changes)]), [key])))
        manifest = manifest_with(manifest, author, BundleInfo(name, tx, tx, 1, utc_now_iso()))
    assert manifest is not None
    write_file(fs, f"{root}/{author}/dimple_db.json", encode_manifest(manifest))
    return author


def docs(dev: Device) -> list[Any]:
    with dev.db.engine.connect() as conn:
        return sorted(json.dumps(v) for v in conn.execute(select(Doc.data)).scalars())


def test_a_deeply_nested_value_fails_its_author_alike_on_every_replica(
    devs: Devices, remote: Remote
) -> None:
    honest, r1, r2 = (devs.new(n, models=JBase) for n in ("honest", "r1", "r2"))
    honest.add(Doc(data={"fine": True}))
    honest.sync()
    bad = _forge(devs, remote, [nested_text(960), json.dumps({"later": 1})])
    for dev, frames in ((r1, 0), (r2, 800)):  # the second syncs from deep in the stack
        with pytest.raises(dimple.RemoteFormatError) as info:
            at_stack_depth(frames, dev.sync)
        report = info.value.report
        assert report is not None and set(report.errors) == {bad}
        assert "nested too deeply" in report.errors[bad] and report.quarantined == 1
        assert docs(dev) == ['{"fine": true}', '{"later": 1}']
    assert r1.snapshot() == r2.snapshot()


# --------------------------------------------------------------------------- NUL in text


def test_holds_nul_tells_the_escape_from_an_escaped_backslash() -> None:
    for value, nul in [("a\x00b", True), ({"k\x00": 1}, True), (["\\\x00"], True),
                       ("\\u0000", False), ("\\\\u0000", False), ("x", False), (7, False)]:
        assert holds_nul(json.dumps(value)) is nul, value


def test_a_nul_in_a_text_is_refused_at_commit(tmp_path: Path) -> None:
    """String and JSON values (and keys) holding U+0000: ``ValueError`` at commit, nothing
    stored; a backslash followed by ``u0000`` is an ordinary string."""
    db = dimple.DimpleDb(create_engine(f"sqlite:///{tmp_path / 'a.db'}"), JBase)
    db.create_all()
    Session_ = db.sessionmaker()
    for data in ("a\x00b", {"k\x00": 1}, [{"deep": "\x00"}]):
        with Session_() as s:
            s.add(Doc(data=data))
            with pytest.raises(ValueError, match="NUL"):
                s.commit()
    with Session_() as s:
        s.add(Doc(data="\\u0000"))
        s.commit()
        [doc] = s.scalars(select(Doc)).all()
        doc.data = {"x": "\x00"}  # an update too
        with pytest.raises(ValueError, match="NUL"):
            s.commit()
    with db.engine.connect() as conn:
        assert len(changelog.all_transactions(conn)) == 1
        assert conn.execute(select(Doc.data)).scalars().all() == ["\\u0000"]
    db.close()


@pytest.mark.postgresql
def test_a_bundle_with_a_nul_fails_its_author_alike_on_sqlite_and_postgresql(
        tmp_path: Path, pg_server: Any, databases: Databases) -> None:
    """A forged bundle holding a NUL is quarantined by a SQLite and a PostgreSQL replica
    alike (the PostgreSQL one could not store it), and both apply the rest."""
    url = f"memory://nul-{secrets.token_hex(8)}/remote"
    with device_set(tmp_path, url, databases=databases) as devs:
        honest = devs.new("honest", models=JBase)
        honest.add(Doc(data={"fine": "\\u0000"}))
        honest.sync()
        bad = _forge(devs, Remote("memory", url), [json.dumps({"k": "a\x00"}),
                                                json.dumps({"later": 1})])
        replicas = [devs.new("s", models=JBase, database="sqlite"),
                    devs.new("p", models=JBase, database="postgresql")]
        for dev in replicas:
            with pytest.raises(dimple.RemoteFormatError) as info:
                dev.sync()
            report = info.value.report
            assert report is not None and set(report.errors) == {bad}
            assert "NUL" in report.errors[bad] and report.quarantined == 1
            assert docs(dev) == ['{"fine": "\\\\u0000"}', '{"later": 1}']


# --------------------------------------------------------------------------- containment


class NativePanic(BaseException):
    """Stands in for pyo3's ``PanicException``, a ``BaseException`` that pyrage raises for
    input it cannot handle (a 1 GB file, say), which cannot be produced on demand here."""


def _panicking(dev: Device, monkeypatch: pytest.MonkeyPatch, on: Callable[[bytes], bool],
               exc: BaseException) -> None:
    real = dev.db.cipher.decrypt

    def decrypt(data: bytes) -> bytes:
        if on(data):
            raise exc
        return real(data)

    monkeypatch.setattr(dev.db.cipher, "decrypt", decrypt)


def _bundle_bytes(remote: Remote, dev: Device) -> bytes:
    fs, root = remote.filesystem()
    [info] = read_manifest(fs, root, dev.db.author_id)["bundles"]
    fs.invalidate_cache()
    return bytes(fs.cat_file(f"{root}/{dev.db.author_id}/{info['filename']}"))


def test_a_native_panic_fails_one_author_and_background_sync_goes_on(
    devs: Devices, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile, honest, r = devs.new("hostile"), devs.new("honest"), devs.new("reader")
    hostile.add(Note(title="hostile"))
    hostile.sync()
    honest.add(Note(title="honest"))
    honest.sync()
    poison = _bundle_bytes(remote, hostile)
    _panicking(r, monkeypatch, lambda d: d == poison, NativePanic("age: capacity overflow"))
    failed, ok = threading.Event(), threading.Event()
    bg = r.db.start_sync(interval=3600, on_error=lambda e: failed.set(),
                         on_sync=lambda rep: ok.set())
    assert failed.wait(WAIT)
    assert isinstance(bg.last_error, dimple.SyncError)
    assert bg.last_report is not None and set(bg.last_report.errors) == {hostile.db.author_id}
    assert "NativePanic: age: capacity overflow" in bg.last_report.errors[hostile.db.author_id]
    assert titles(r) == ["honest"] and bg.running
    monkeypatch.undo()  # the file reads again: the next sync merges it
    bg.trigger()
    assert ok.wait(WAIT) and bg.last_error is None
    assert titles(r) == ["honest", "hostile"]
    r.db.stop_sync()


def test_background_sync_reports_a_huge_and_a_deep_author_and_goes_on(
    devs: Devices, remote: Remote
) -> None:
    honest, huge, r = (devs.new(n, models=JBase) for n in ("honest", "huge", "reader"))
    honest.add(Doc(data=[1]))
    honest.sync()
    huge.add(Doc(data=secrets.token_urlsafe(50_000)))  # incompressible
    huge.sync()
    deep = _forge(devs, remote, [nested_text(MAX_VALUE_DEPTH + 1)])
    r.db.storage.max_bundle_bytes = 20_000  # stands in for a 1 GB bundle
    reports: list[dimple.SyncReport] = []
    twice = threading.Event()

    def on_error(exc: BaseException) -> None:
        assert isinstance(exc, dimple.RemoteFormatError) and exc.report is not None
        reports.append(exc.report)
        if len(reports) == 2:
            twice.set()
        else:
            r.db.start_sync().trigger()  # the running handle: sync again at once

    bg = r.db.start_sync(interval=3600, on_error=on_error)
    assert twice.wait(WAIT) and bg.running
    for report in reports:
        assert set(report.errors) == {huge.db.author_id, deep}
        assert "larger than the limit" in report.errors[huge.db.author_id]
        assert "nested too deeply" in report.errors[deep]
    assert docs(r) == ["[1]"]
    r.db.stop_sync()


def test_keyboard_interrupt_is_not_contained(
    devs: Devices, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, r = devs.new("writer"), devs.new("reader")
    w.add(Note(title="w"))
    w.sync()
    _panicking(r, monkeypatch, lambda d: True, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        r.sync()
    monkeypatch.undo()
    assert r.sync().errors == {} and titles(r) == ["w"]


# --------------------------------------------------------------------------- missing files


def test_a_manifest_of_ten_thousand_missing_bundles_costs_one_batch(
    devs: Devices, remote: Remote
) -> None:
    w, r = devs.new("writer"), devs.new("reader")
    w.add(Note(title="w"))
    w.sync()
    author = dimple.new_id()
    entries = [BundleInfo(bundle_name(tx, tx), tx, tx, 1, utc_now_iso())
               for tx in HybridClock().reserve(10_000)]
    manifest = Manifest(author, entries[-1].last_transaction_id, utc_now_iso(), tuple(entries))
    fs, root = remote.filesystem()
    write_file(fs, f"{root}/{author}/dimple_db.json", encode_manifest(manifest))
    gets = []
    for _ in range(2):
        with pytest.raises(dimple.SyncError) as info:
            r.sync()
        report = info.value.report
        assert report is not None and set(report.errors) == {author}
        assert "missing" in report.errors[author] and titles(r) == ["w"]
        gets.append(report.requests["get"])
    # two manifests and one batch of bundles; the first sync also read the writer's bundle,
    # both authors' notes files (their manifests were new to us), our own manifest (to
    # rewrite it, so that the other authors notice our new notes) and, in the push, our own
    # manifest once more (a push checks what the remote lists: a new, empty remote gets our
    # whole history; a handle that found none does not read it again)
    assert gets == [2 + BATCH + 1 + 2 + 1 + 1, 2 + BATCH]
