"""Push: no database lock held during remote I/O, one pusher at a time by the push lease,
each transaction uploaded once, the whole history to a new remote, big pushes in several
bundles, and stale temporary files removed.

Timings are not asserted here: ``benchmarks/push_while_committing.py`` measures how long
commits wait during a big push. These tests give commits a short or no busy timeout, so a
commit that met a held lock fails instead of waiting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import fsspec
import pytest
from models import Note
from models import SyncBase as Base
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session
from syncworld import (
    Device,
    Devices,
    device_set,
    read_manifest,
    sync_all,
)

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog, meta
from dimpledb_sa.sync import lease, push
from dimpledb_sa.sync.crypto import generate_identity
from dimpledb_sa.sync.storage import STALE_TEMPORARY_SECONDS, temporary_name


@pytest.fixture
def devs(tmp_path: Path) -> Iterator[Devices]:
    with device_set(tmp_path, str(tmp_path / "remote")) as d:  # a local folder
        yield d


def manifest(devs: Devices, dev: Device) -> dict[str, Any]:
    fs, root = fsspec.core.url_to_fs(devs.remote)
    return read_manifest(fs, root, dev.db.author_id)


def own_transactions(dev: Device) -> list[str]:
    with dev.db.engine.connect() as conn:  # folded and pending
        return changelog.transaction_ids(conn, dev.db.author_id)


def assert_each_uploaded_once(devs: Devices, dev: Device) -> None:
    """Every transaction of ``dev`` is in exactly one listed bundle (counts and ranges)."""
    bundles = manifest(devs, dev)["bundles"]
    txs = own_transactions(dev)
    assert sum(b["transaction_count"] for b in bundles) == len(txs)
    for earlier, later in pairwise(bundles):
        assert earlier["last_transaction_id"] < later["first_transaction_id"]
    assert bundles[0]["first_transaction_id"] == txs[0]
    assert bundles[-1]["last_transaction_id"] == txs[-1]


def titles(dev: Device) -> list[str]:
    with dev.db.engine.connect() as conn:
        return sorted(conn.execute(select(Note.title)).scalars())


def no_wait_commit(path: Path, title: str) -> None:
    """A tracked-table write through another connection that never waits for a lock."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO note (id, title, done) VALUES (:i, :t, 0)"),
                         {"i": dimple.new_id(), "t": title})
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- no lock


def test_commits_during_the_upload_never_wait(devs: Devices) -> None:
    a = devs.new("a")
    a.add(*(Note(title=f"n{i}") for i in range(3)))
    storage = a.db.storage
    seen: list[str] = []
    for attr in ("write_bundle", "write_manifest", "read_manifest"):
        real = getattr(storage, attr)

        def during(*args: Any, real: Any = real, attr: str = attr) -> Any:
            no_wait_commit(a.path, f"during {attr}")  # fails at once if a lock is held
            seen.append(attr)
            return real(*args)

        setattr(storage, attr, during)
    assert a.sync().pushed == 1
    assert seen == ["read_manifest", "write_bundle", "write_manifest"]


def test_a_push_of_100000_changes_while_the_app_commits_every_50_ms(tmp_path: Path) -> None:
    """The acceptance test: every commit succeeds (the benchmark prints the waits). The
    commits wait at most 2 s for a lock, and each bundle upload takes longer than that, so
    a push holding the lock during an upload would fail them."""
    path = tmp_path / "big.db"
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 2})
    key, _ = generate_identity()
    db = dimple.DimpleDb(engine, Base, remote=str(tmp_path / "remote"), identity=key)
    db.create_all()
    with Session(engine) as s:
        for start in range(0, 20_000, 2_000):
            s.add_all(Note(title=f"note {i}", body="x" * 40) for i in range(start, start + 2_000))
            s.commit()
    storage = db.storage
    real = storage.write_bundle

    def slow_upload(author: str, name: str, data: bytes) -> None:
        time.sleep(2.5)  # a slow remote: longer than the commits' busy timeout
        real(author, name, data)

    storage.write_bundle = slow_upload  # type: ignore[method-assign]
    done = threading.Event()
    results: list[BaseException | None] = []
    reports: list[dimple.SyncReport] = []

    def pusher() -> None:
        try:
            reports.append(db.sync())
        finally:
            done.set()

    thread = threading.Thread(target=pusher)
    thread.start()
    Maker = db.sessionmaker()
    while not done.is_set() or len(results) < 3:
        try:
            with Maker() as s:
                s.add(Note(title=f"app {len(results)}"))
                s.commit()
            results.append(None)
        except Exception as e:  # every failure is the test's finding
            results.append(e)
        time.sleep(0.05)
    thread.join()
    assert [r for r in results if r is not None] == []
    assert reports[0].pushed >= 10 and reports[0].errors == {}
    # the app's commits the push did not take go with the next one: each exactly once
    assert reports[0].pushed + db.sync().pushed == 10 + len(results)
    db.close()
    engine.dispose()


# --------------------------------------------------------------------------- the lease


def blocking_upload(dev: Device) -> tuple[threading.Event, threading.Event]:
    """Make ``dev``'s next bundle upload wait: (started, release)."""
    started, release = threading.Event(), threading.Event()
    storage = dev.db.storage
    real = storage.write_bundle

    def write_bundle(author: str, name: str, data: bytes) -> None:
        started.set()
        assert release.wait(30)
        real(author, name, data)

    storage.write_bundle = write_bundle  # type: ignore[method-assign]
    return started, release


def test_a_second_pusher_skips_while_the_first_uploads(devs: Devices) -> None:
    a1, b = devs.new("a"), devs.new("b")
    a2 = devs.new("a-again", file=a1.path, create=False)
    a1.add(Note(title="first"))
    started, release = blocking_upload(a1)
    reports: list[dimple.SyncReport] = []
    thread = threading.Thread(target=lambda: reports.append(a1.sync()))
    thread.start()
    assert started.wait(30)
    a2.add(Note(title="second"))  # a commit while a1 uploads
    report = a2.sync()
    assert (report.pushed, report.push_skipped, report.errors) == (0, True, {})
    release.set()
    thread.join()
    assert reports[0].pushed == 1 and not reports[0].push_skipped
    assert a2.sync().pushed == 1  # "second", once
    assert a1.sync().pushed == 0
    assert_each_uploaded_once(devs, a1)
    b.sync()
    assert titles(b) == ["first", "second"]


def test_threads_and_handles_upload_each_transaction_once(devs: Devices) -> None:
    a = devs.new("a")
    handles = [a] + [devs.new(f"a{i}", file=a.path, create=False) for i in range(2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def work(dev: Device, tag: str) -> None:
        try:
            barrier.wait()
            for i in range(5):
                dev.add(Note(title=f"{tag}{i}"))
                dev.sync()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(h, f"{h.name}-{k}-"))
               for h in handles for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    a.sync()
    assert len(own_transactions(a)) == 30
    assert_each_uploaded_once(devs, a)


PUSHER = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from models import Note
from syncworld import (
    Devices,
)

devs = Devices(Path(sys.argv[2]), sys.argv[3], identity=sys.argv[4])
dev = devs.new("process", file=Path(sys.argv[5]), create=False)
for i in range(8):
    dev.add(Note(title=f"{sys.argv[6]}{i}"))
    dev.sync()
devs.close()
"""


def test_processes_pushing_one_file_upload_each_transaction_once(devs: Devices,
                                                                 tmp_path: Path) -> None:
    a = devs.new("a")
    script = tmp_path / "pusher.py"
    script.write_text(PUSHER)
    procs = [subprocess.Popen(
        [sys.executable, str(script), str(Path(__file__).parent), str(tmp_path), devs.remote,
         devs.identity, str(a.path), f"p{k}-"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for k in range(2)]
    for i in range(8):
        a.add(Note(title=f"main{i}"))
        a.sync()
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out.decode()
    a.sync()
    assert len(own_transactions(a)) == 24
    assert_each_uploaded_once(devs, a)
    fresh = devs.new("fresh")
    fresh.sync()
    assert len(fresh.rows(Note)) == 24


def put_lease(dev: Device, holder: str, expires: float) -> None:
    with dev.db.engine.begin() as conn:
        meta.put(conn, meta.PUSH_LEASE, lease.Lease(holder, expires).encode())


def test_a_live_lease_of_another_host_is_respected_until_it_expires(devs: Devices) -> None:
    a = devs.new("a")
    a.add(Note(title="waiting"))
    put_lease(a, "other-host:123:abc", time.time() + 60)
    report = a.sync()
    assert (report.pushed, report.push_skipped) == (0, True)
    put_lease(a, "other-host:123:abc", time.time() - 1)  # it expired: taken over
    assert a.sync().pushed == 1


def test_the_lease_of_a_process_that_died_is_taken_over_at_once(devs: Devices) -> None:
    a = devs.new("a")
    a.add(Note(title="after a crash"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    put_lease(a, lease.new_holder().replace(f":{os.getpid()}:", f":{dead.pid}:"),
              time.time() + 60)
    assert a.sync().pushed == 1


KILLED = """
import os, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from models import Note
from syncworld import (
    Devices,
)

devs = Devices(Path(sys.argv[2]), sys.argv[3], identity=sys.argv[4])
dev = devs.new("killed", file=Path(sys.argv[5]), create=False)
dev.add(Note(title="from the killed process"))
storage = dev.db.storage
real = storage.fs.pipe_file
def pipe_file(path, data, **kw):
    real(path, data[: len(data) // 2], **kw)  # half a temporary file, then the end
    os._exit(9)
storage.fs.pipe_file = pipe_file
dev.sync()
"""


def test_a_push_killed_mid_upload_loses_nothing(devs: Devices, tmp_path: Path) -> None:
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title="before"))
    a.sync()
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    proc = subprocess.run(
        [sys.executable, str(script), str(Path(__file__).parent), str(tmp_path), devs.remote,
         devs.identity, str(a.path)], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()
    with a.db.engine.connect() as conn:
        assert meta.get(conn, meta.PUSH_LEASE) is not None  # left behind by the crash
    folder = Path(devs.remote) / a.db.author_id
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert a.sync().pushed == 1  # its process is gone: the lease is taken over at once
    b.sync()
    assert titles(b) == ["before", "from the killed process"]


def test_a_push_that_lost_its_lease_stops_before_the_manifest(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title="one"))
    storage = a.db.storage
    real = storage.write_bundle

    def write_bundle(author: str, name: str, data: bytes) -> None:
        real(author, name, data)
        put_lease(a, "other-host:1:taken-over", time.time() + 60)  # ours expired meanwhile

    storage.write_bundle = write_bundle  # type: ignore[method-assign]
    report = a.sync()
    assert (report.pushed, report.push_skipped, report.errors) == (0, True, {})
    storage.write_bundle = real  # type: ignore[method-assign]
    assert b.sync().pulled == 0  # the manifest was not written
    put_lease(a, "other-host:1:taken-over", time.time() - 1)
    assert a.sync().pushed == 1
    assert b.sync().pulled == 1


# --------------------------------------------------------------------------- what is pushed


def test_a_new_empty_remote_gets_the_whole_history(devs: Devices, tmp_path: Path) -> None:
    a = devs.new("a")
    for i in range(3):
        a.add(Note(title=f"n{i}"))
        a.sync()
    devs.close(a)
    other = str(tmp_path / "new-remote")
    moved = Devices(tmp_path, other, identity=devs.identity)
    try:
        a2 = moved.new("a", file=a.path, create=False)
        report = a2.sync()  # nothing new since the last sync: everything, all the same
        assert report.pushed == 3
        fresh = moved.new("fresh")
        fresh.sync()
        assert titles(fresh) == ["n0", "n1", "n2"]
        assert a2.sync().pushed == 0
    finally:
        moved.close()


def test_a_big_push_is_split_into_bundles(devs: Devices, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setattr(push, "MAX_BUNDLE_CHANGES", 10)  # two notes of 5 changes
    a, b = devs.new("a"), devs.new("b")
    for i in range(5):
        a.add(Note(title=f"n{i}"))
    assert a.sync().pushed == 5
    assert [x["transaction_count"] for x in manifest(devs, a)["bundles"]] == [2, 2, 1]
    assert_each_uploaded_once(devs, a)
    assert b.sync().pulled == 5
    sync_all(a, b)
    assert a.snapshot() == b.snapshot()


def test_big_values_split_bundles_by_size(devs: Devices, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setattr(push, "MAX_BUNDLE_BYTES", 30_000)
    a, b = devs.new("a"), devs.new("b")
    for i in range(4):
        a.add(Note(title=f"n{i}", body="x" * 20_000))  # two would not fit in one bundle
    a.add(Note(title="small"), Note(title="smaller"))
    assert a.sync().pushed == 5
    fs, root = fsspec.core.url_to_fs(devs.remote)
    bundles = manifest(devs, a)["bundles"]
    assert [x["transaction_count"] for x in bundles] == [1, 1, 1, 2]  # the small one joins
    sizes = [fs.size(f"{root}/{a.db.author_id}/{x['filename']}") for x in bundles]
    assert all(size < 30_000 for size in sizes)
    assert b.sync().pulled == 5


def test_stale_temporary_files_are_removed_and_readers_ignore_them(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    a.add(Note(title="one"))
    a.sync()
    folder = Path(devs.remote) / a.db.author_id
    old = temporary_name("dimple_db.json", time.time() - STALE_TEMPORARY_SECONDS - 60)
    young = temporary_name("dimple_db.json")
    legacy = f".dimple_db.json.{'ab' * 16}.tmp"  # an older release's name: aged by mtime
    for name in (old, young, legacy):
        (folder / name).write_bytes(b"half a manifest")
    past = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(folder / legacy, (past, past))
    assert b.sync().errors == {}
    a.db.remote.cleaned_at = float("-inf")  # a new handle would clean at its first push
    a.add(Note(title="two"))
    a.sync()
    names = {p.name for p in folder.iterdir()}
    assert young in names and old not in names and legacy not in names
    assert b.sync().pulled == 1


def test_reauthor_is_refused_while_a_push_holds_the_lease(devs: Devices) -> None:
    a = devs.new("a")
    put_lease(a, "other-host:1:pushing", time.time() + 60)
    with pytest.raises(dimple.ConfigurationError, match="in progress"):
        a.db.reauthor()


def test_a_handle_opened_before_reauthor_uses_the_new_id(devs: Devices) -> None:
    a, b = devs.new("a"), devs.new("b")
    stale = devs.new("a-again", file=a.path, create=False)
    a.add(Note(title="pushed"))
    a.sync()
    old = stale.db.author_id
    new = a.db.reauthor()
    stale.add(Note(title="after"))
    with a.db.engine.connect() as conn:  # folded and pending
        authors = {who: tx for tx, who in changelog.all_transactions(conn)}
    assert set(authors) == {old, new}
    assert stale.db.author_id == new
    assert stale.sync().pushed == 1
    b.sync()
    assert titles(b) == ["after", "pushed"]
    assert json.loads(json.dumps(manifest(devs, a)))["author_id"] == new


def test_the_push_fold_skips_what_another_fold_moved_meanwhile(devs: Devices) -> None:
    from dimpledb_sa.core import changelog

    a = devs.new("a")
    a.add(Note(title="one"))
    a.add(Note(title="two"))
    with a.db.engine.connect() as conn:
        unpacked = changelog.unpacked_pending(conn, 10)
    assert len(unpacked) == 2
    with a.db.engine.begin() as conn:
        assert changelog.fold(conn, limit=1) == 1  # a commit's fold got there first
    with a.db.engine.begin() as conn:
        assert changelog.fold_unpacked(conn, unpacked) == 1  # only "two" is left to move
        assert changelog.last_pending(conn) is None
    assert len(a.log()) == 10  # every change once (change_log checks for duplicates)
    assert a.sync().pushed == 2


def test_a_push_folds_everything_that_was_pending(devs: Devices) -> None:
    """The push folds between its reads and uploads (and the rest at its end): afterwards
    nothing is pending, every change is in the log once, and the bundles hold them all."""
    from dimpledb_sa.core import changelog

    a = devs.new("a")
    for i in range(6):
        a.add(*(Note(title=f"n{i}-{k}") for k in range(30)))
    with a.db.engine.connect() as conn:
        assert changelog.last_pending(conn) is not None
    assert a.sync().pushed == 6
    with a.db.engine.connect() as conn:
        assert changelog.last_pending(conn) is None
    assert len(a.log()) == 6 * 30 * 5  # change_log checks for duplicates
    b = devs.new("b")
    b.sync()
    assert len(b.rows(Note)) == 180
