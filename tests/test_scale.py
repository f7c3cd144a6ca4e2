"""Sync at scale: bundle format 2 (gzip inside age), bounded stored bundle size
(``Storage.max_stored_bundle_bytes``), pulls that merge and commit in bounded batches (an
interrupted pull, by a failing storage call or a killed process, loses nothing and
resumes), and the ``progress=`` callback. Sizes and speed at scale are measured by
``benchmarks/scale.py``."""

from __future__ import annotations

import gzip
import json
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Remote
from models import Note
from syncworld import Devices, read_manifest, titles

import dimpledb_sa as dimple
from dimpledb_sa.core.errors import RemoteFormatError
from dimpledb_sa.sync import pull as pull_mod
from dimpledb_sa.sync import push as push_mod
from dimpledb_sa.sync.compress import gunzip_bounded, is_gzip
from dimpledb_sa.sync.storage import Storage
from dimpledb_sa.sync.wire import (
    TxRecord,
    decode_bundle,
    encode_bundle,
    pack_bundle,
)

AUTHOR = "01933b2d-1234-7890-abcd-ef1234567890"
MEMORY_ONLY = pytest.mark.parametrize("remote", ["memory"], indirect=True)
LOCAL_ONLY = pytest.mark.parametrize("remote", ["local"], indirect=True)


def uid(n: int, k: int = 0) -> str:
    return f"01933b2d-{k:04x}-7000-8000-{n:012x}"


def txs(n: int, changes: int = 3, size: int = 40) -> list[TxRecord]:
    """``n`` transactions of ``changes`` changes with incompressible values of ``size``."""
    out: list[TxRecord] = []
    for t in range(n):
        tid = uid(t + 1)
        out.append((tid, AUTHOR, [
            (uid(t + 1, c + 1), tid, "note", uid(t + 1, 0xFFF), f"a{c}", None,
             json.dumps(secrets.token_hex(size // 2)))
            for c in range(changes)]))
    return out


# --------------------------------------------------------------------------- format 2


def test_format_2_round_trips_and_format_1_still_reads() -> None:
    sample = txs(5)
    packed = pack_bundle(sample)
    assert is_gzip(packed) and gzip.decompress(packed) == encode_bundle(sample)
    assert decode_bundle(packed, AUTHOR) == sample
    assert decode_bundle(encode_bundle(sample), AUTHOR) == sample  # format 1


def test_gunzip_is_bounded_and_strict() -> None:
    bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
    assert len(bomb) < 10_000
    with pytest.raises(RemoteFormatError, match="more than 1000000 bytes"):
        gunzip_bounded(bomb, "bundle x", limit=1_000_000)
    assert gunzip_bounded(bomb, "bundle x", limit=5_000_002).startswith(b"[ ")
    good = gzip.compress(b"[]")
    for bad, why in ((good[:-3], "truncated"), (good + b"\x00", "after its gzip"),
                     (good + good, "after its gzip"), (b"\x1f\x8b" + b"junk" * 10, "not a valid")):
        with pytest.raises(RemoteFormatError, match=why):
            decode_bundle(bad, AUTHOR)


# --------------------------------------------------------------------------- size rule


@MEMORY_ONLY
def test_a_long_offline_period_is_pushed_as_several_bundles(devs: Devices, remote: Remote
                                                            ) -> None:
    a, b = devs.new("a"), devs.new("b")
    a.db.storage.max_stored_bundle_bytes = 30_000
    for i in range(12):
        a.add(Note(title=f"n{i}", body=secrets.token_urlsafe(3_000)))
    assert a.sync().pushed == 12
    fs, root = remote.filesystem()
    bundles = read_manifest(fs, root, a.db.author_id)["bundles"]
    assert len(bundles) >= 2
    assert sum(x["transaction_count"] for x in bundles) == 12
    for info in bundles:
        assert fs.size(f"{root}/{a.db.author_id}/{info['filename']}") <= 30_000
    assert b.sync().pulled == 12 and len(titles(b)) == 12


@MEMORY_ONLY
def test_a_bundle_that_comes_out_too_large_is_cut_in_two_until_it_fits(
    devs: Devices, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(push_mod, "_json_size", lambda tx: 0)  # the estimate is off
    a, b = devs.new("a"), devs.new("b")
    a.db.storage.max_stored_bundle_bytes = 20_000
    for i in range(9):
        a.add(Note(title=f"n{i}", body=secrets.token_urlsafe(4_000)))
    a.add(Note(title="big", body=secrets.token_urlsafe(30_000)))  # alone over the limit
    assert a.sync().pushed == 10
    fs, root = remote.filesystem()
    bundles = read_manifest(fs, root, a.db.author_id)["bundles"]
    assert sum(x["transaction_count"] for x in bundles) == 10
    sizes = {x["transaction_count"]: fs.size(f"{root}/{a.db.author_id}/{x['filename']}")
             for x in bundles}
    assert len(bundles) >= 4
    assert all(size <= 20_000 for n, size in sizes.items() if n > 1)
    last = bundles[-1]
    assert last["transaction_count"] == 1  # the large transaction is a bundle on its own
    assert b.sync().pulled == 10 and len(titles(b)) == 10


# --------------------------------------------------------------------------- bounded pull


def _small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every bundle read in its own backend call and committed on its own."""
    monkeypatch.setattr(pull_mod, "BATCH", 1)
    monkeypatch.setattr(pull_mod, "MERGE_CHANGES", 1)


def _writer_with_bundles(devs: Devices, n: int) -> list[str]:
    a = devs.new("a")
    for i in range(n):
        a.add(Note(title=f"n{i:02}"))
        a.sync()  # one bundle per sync
    return [f"n{i:02}" for i in range(n)]


@MEMORY_ONLY
def test_a_pull_interrupted_by_a_failing_storage_call_keeps_what_it_merged(
    devs: Devices, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small_batches(monkeypatch)
    expected = _writer_with_bundles(devs, 6)
    r = devs.new("r")
    real = Storage.read_bundles
    calls: list[list[str]] = []

    def flaky(self: Storage, author: str, names: Any) -> Any:
        calls.append(list(names))
        if len(calls) == 4:
            raise OSError("connection reset")
        return real(self, author, names)

    monkeypatch.setattr(Storage, "read_bundles", flaky)
    with pytest.raises(dimple.SyncError) as info:
        r.sync()
    assert "connection reset" in str(info.value)
    assert titles(r) == expected[:3]  # the three bundles before the failure were committed
    calls.clear()
    report = r.sync()
    assert titles(r) == expected and report.pulled == 3
    assert len(calls) == 3  # it resumed after the committed ones


@LOCAL_ONLY
def test_a_pull_killed_midway_keeps_what_it_merged_and_resumes(
    devs: Devices, remote: Remote, tmp_path: Path
) -> None:
    expected = _writer_with_bundles(devs, 6)
    r = devs.new("r")
    devs.close(r)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = {[str(Path(__file__).parent), *sys.path]!r}
        from syncworld import sqlite_engine
        from models import SyncBase
        import dimpledb_sa as dimple
        from dimpledb_sa.sync import pull
        from dimpledb_sa.sync.storage import Storage
        pull.BATCH, pull.MERGE_CHANGES = 1, 1
        real, calls = Storage.read_bundles, []
        def dying(self, author, names):
            calls.append(names)
            if len(calls) == 4:
                os._exit(7)  # killed mid-pull: no cleanup, no rollback handlers
            return real(self, author, names)
        Storage.read_bundles = dying
        db = dimple.DimpleDb(sqlite_engine({str(r.path)!r}), SyncBase,
                             remote={remote.url!r}, identity={devs.identity!r})
        db.sync()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert done.returncode == 7, done.stderr.decode()[-2000:]
    r = devs.new("r", create=False)
    assert titles(r) == expected[:3]
    assert r.sync().pulled == 3 and titles(r) == expected


@MEMORY_ONLY
def test_merging_again_what_an_interrupted_pull_committed_changes_nothing(
    devs: Devices, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small_batches(monkeypatch)
    expected = _writer_with_bundles(devs, 4)
    r = devs.new("r")
    r.sync()
    before = r.snapshot()
    with r.db.engine.begin() as conn:  # forget the cursors: every bundle is read again
        from dimpledb_sa.core import schema
        conn.execute(schema.cursors.delete())
    assert r.sync().applied == 0 and r.snapshot() == before and titles(r) == expected


# --------------------------------------------------------------------------- progress


@MEMORY_ONLY
def test_progress_reports_each_phase_up_to_its_total(
    devs: Devices, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small_batches(monkeypatch)
    expected = _writer_with_bundles(devs, 5)
    r = devs.new("r")
    r.add(Note(title="mine"))
    calls: list[tuple[str, int, int]] = []
    r.db.sync(progress=lambda phase, done, total: calls.append((phase, done, total)))
    assert titles(r) == sorted([*expected, "mine"])
    by_phase: dict[str, list[tuple[int, int]]] = {}
    for phase, done, total in calls:
        by_phase.setdefault(phase, []).append((done, total))
    assert {"push", "pull", "merge"} <= set(by_phase)
    for phase, seen in by_phase.items():
        dones = [d for d, _ in seen]
        assert dones == sorted(dones), phase
        assert all(d <= t for d, t in seen), phase
        assert seen[-1][0] == seen[-1][1], phase
    assert by_phase["push"][-1] == (1, 1)
    assert by_phase["pull"][-1] == (5, 5)
    assert by_phase["merge"][-1][1] > 0


@MEMORY_ONLY
def test_a_new_device_merges_a_large_snapshot_piece_by_piece(
    devs: Devices, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dimpledb_sa.sync import snapshot

    a = devs.new("a")
    for i in range(30):
        a.add(Note(title=f"n{i:02}"))
    a.sync()
    a.add(Note(title="after"))
    assert a.db.compact() >= 0
    monkeypatch.setattr(snapshot, "PIECE_BYTES", 400)  # a piece every few transactions
    monkeypatch.setattr(pull_mod, "MERGE_CHANGES", 3)  # and a commit per piece or two
    commits: list[int] = []
    real = pull_mod._save

    def counting(conn: Any, pulls: Any) -> None:
        commits.append(1)
        real(conn, pulls)

    monkeypatch.setattr(pull_mod, "_save", counting)
    b = devs.new("b")
    b.sync()
    assert titles(b) == titles(a) and len(commits) > 3
