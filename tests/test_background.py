"""Tests for ``dimpledb_sa.sync.background``: background sync (``db.start_sync`` /
``db.stop_sync``).

Every wait is on an event the sync thread sets, with a generous timeout that only turns a
hang into a failure; nothing asserts on elapsed time.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from models import TextBase as Base
from models import TextNote as Note
from sqlalchemy import create_engine, select

import dimpledb_sa as dimple
from dimpledb_sa.sync.background import BackgroundSync
from dimpledb_sa.sync.crypto import generate_identity

WAIT = 30.0  # only ever reached when something is broken


class FlakyFS(MemoryFileSystem):  # type: ignore[misc]
    """An in-memory remote whose next ``fail`` backend calls raise ``error``."""

    cachable = False  # a fresh instance (and counter) per test

    def __init__(self, fail: int = 0, error: type[Exception] = ConnectionError,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.fail = fail
        self.error = error
        self.failed = 0
        self.lock = threading.Lock()

    def _maybe_fail(self) -> None:
        with self.lock:
            if self.fail > 0:
                self.fail -= 1
                self.failed += 1
                raise self.error("simulated network failure")

    def ls(self, path: str, detail: bool = True, **kw: Any) -> Any:
        self._maybe_fail()
        return super().ls(path, detail=detail, **kw)

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kw: Any) -> Any:
        self._maybe_fail()
        return super().cat_file(path, start=start, end=end, **kw)

    def pipe_file(self, path: str, value: Any, *args: Any, **kw: Any) -> Any:
        self._maybe_fail()
        return super().pipe_file(path, value, *args, **kw)


@pytest.fixture
def root() -> Iterator[str]:
    top = f"/dimpledb-bg-{uuid.uuid4().hex}"
    yield f"{top}/remote"
    mem = MemoryFileSystem()
    if mem.exists(top):
        mem.rm(top, recursive=True)


@pytest.fixture
def key() -> str:
    return generate_identity()[0]


@pytest.fixture
def make_db(tmp_path: Path, key: str) -> Iterator[Callable[..., dimple.DimpleDb]]:
    made: list[dimple.DimpleDb] = []

    def make(name: str, remote: Any, **kw: Any) -> dimple.DimpleDb:
        engine = create_engine(f"sqlite:///{tmp_path / name}.db")
        kw.setdefault("identity", key)
        db = dimple.DimpleDb(engine, Base, remote=remote, **kw)
        db.create_all()
        made.append(db)
        return db

    yield make
    for db in made:
        db.close()
        db.engine.dispose()


def wait_until(bg: BackgroundSync, condition: Callable[[], bool]) -> None:
    """Wait for syncs until ``condition()`` holds (each wait is for one more sync)."""
    for _ in range(1000):
        if condition():
            return
        bg.synced.clear()
        if condition():
            return
        assert bg.synced.wait(WAIT), f"no successful sync: last error {bg.last_error!r}"
    raise AssertionError("condition never held")


def add_note(db: dimple.DimpleDb, text: str) -> str:
    with db.sessionmaker()() as s:
        note = Note(text=text)
        s.add(note)
        s.commit()
        return note.id


def texts(db: dimple.DimpleDb) -> list[str]:
    with db.sessionmaker()() as s:
        return sorted(s.scalars(select(Note.text)))


def test_pulls_in_the_background_and_stops_cleanly(make_db: Any, root: str) -> None:
    a = make_db("a", f"memory:/{root}")
    b = make_db("b", f"memory:/{root}")
    add_note(a, "from a")
    a.sync()
    bg = b.start_sync(interval=0.01)
    assert isinstance(bg, BackgroundSync) and bg.running
    assert b.start_sync(interval=0.01) is bg  # a second call returns the running one
    wait_until(bg, lambda: texts(b) == ["from a"])
    thread = bg._thread
    b.stop_sync()
    assert thread is not None and not thread.is_alive()
    assert not bg.running and bg.last_error is None and bg.failures == 0
    b.stop_sync()  # twice is fine


def test_retries_network_errors_with_backoff_then_syncs(make_db: Any, root: str) -> None:
    fs = FlakyFS(fail=5)
    a = make_db("a", fs, path=root)
    add_note(a, "pushed after the outage")
    errors: list[BaseException] = []
    reports: list[dimple.SyncReport] = []
    bg = a.start_sync(interval=3600, retry_delay=0.001, max_backoff=0.005,
                      on_error=errors.append, on_sync=reports.append)
    assert bg.synced.wait(WAIT), f"never recovered: {bg.last_error!r}"
    assert fs.failed == 5
    assert errors and all(isinstance(e, OSError | dimple.SyncError) for e in errors)
    assert reports[-1].pushed == 1 and reports[-1].ok
    assert bg.last_error is None and bg.failures == 0
    assert a.stop_sync() is None and not bg.running
    assert MemoryFileSystem().exists(f"{root}/{a.author_id}/dimple_db.json")


def test_unexpected_errors_never_reach_the_app(make_db: Any, root: str) -> None:
    fs = FlakyFS(fail=3, error=RuntimeError)
    a = make_db("a", fs, path=root)
    errors: list[BaseException] = []
    bg = a.start_sync(interval=3600, retry_delay=0.001, max_backoff=0.001,
                      on_error=errors.append)
    assert bg.synced.wait(WAIT)
    assert any(isinstance(e, RuntimeError) for e in errors)
    a.stop_sync()


def test_stop_wakes_a_sleeping_thread(make_db: Any, root: str) -> None:
    a = make_db("a", f"memory:/{root}")
    bg = a.start_sync(interval=3600)
    assert bg.synced.wait(WAIT)
    assert bg.stop(timeout=WAIT) is True  # would time out if stop waited for the interval
    assert not bg.running


def test_unreadable_author_is_reported_not_retried_in_a_hurry(
        make_db: Any, root: str) -> None:
    a = make_db("a", f"memory:/{root}", identity=generate_identity()[0])
    add_note(a, "secret")
    a.sync()
    b = make_db("b", f"memory:/{root}")  # another key: cannot read a's bundles
    done = threading.Event()
    bg = b.start_sync(interval=3600, on_error=lambda e: done.set())
    assert done.wait(WAIT)
    assert isinstance(bg.last_error, dimple.DecryptionError)
    assert bg.failures >= 1  # counted (the app must see it), but retried at the interval
    assert bg.last_report is not None and a.author_id in bg.last_report.errors
    b.stop_sync()


def test_sync_on_commit_pushes_local_edits(make_db: Any, root: str) -> None:
    a = make_db("a", f"memory:/{root}")
    pushed = threading.Event()

    def on_sync(report: dimple.SyncReport) -> None:
        if report.pushed:
            pushed.set()

    bg = a.start_sync(interval=3600, sync_on_start=False, sync_on_commit=True,
                      on_sync=on_sync)
    add_note(a, "right away")
    assert pushed.wait(WAIT)
    a.stop_sync()
    assert bg.syncs >= 1
    add_note(a, "after stop")  # no receiver left: nothing happens, nothing breaks


def test_sync_on_stop_pushes_the_last_edits(make_db: Any, root: str) -> None:
    a = make_db("a", f"memory:/{root}")
    bg = a.start_sync(interval=3600, sync_on_start=False, sync_on_stop=True)
    add_note(a, "last words")
    a.stop_sync()
    assert bg.last_report is not None and bg.last_report.pushed == 1
    assert bg.syncs == 1


def test_a_raising_callback_is_logged_and_ignored(
        make_db: Any, root: str, caplog: pytest.LogCaptureFixture) -> None:
    a = make_db("a", f"memory:/{root}")
    calls: list[int] = []
    again = threading.Event()

    def on_sync(report: dimple.SyncReport) -> None:
        calls.append(1)
        if len(calls) >= 2:
            again.set()
        raise ValueError("callback bug")

    a.start_sync(interval=0.001, on_sync=on_sync)
    assert again.wait(WAIT)
    a.stop_sync()
    assert "callback raised" in caplog.text


def test_stop_from_a_callback_does_not_deadlock(make_db: Any, root: str) -> None:
    a = make_db("a", f"memory:/{root}")
    results: list[bool] = []
    bg: BackgroundSync | None = None

    def on_sync(report: dimple.SyncReport) -> None:
        assert bg is not None
        results.append(bg.stop())

    bg = BackgroundSync(a.sync, sender=a, interval=0.001, on_sync=on_sync)
    bg.start()
    assert bg._thread is not None
    bg._thread.join(WAIT)
    assert results == [False] and not bg.running


def test_backoff_doubles_up_to_the_cap(make_db: Any, root: str) -> None:
    a = make_db("a", f"memory:/{root}")
    bg = BackgroundSync(a.sync, sender=a, interval=60, retry_delay=1, max_backoff=10, jitter=0)
    assert [bg._backoff(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    jittered = BackgroundSync(a.sync, sender=a, interval=60, retry_delay=1, max_backoff=10,
                              jitter=0.5)
    assert all(1 <= jittered._backoff(2) <= 2 for _ in range(100))
    assert jittered._backoff(10_000) <= 10


def test_bad_settings_are_refused(make_db: Any, root: str, tmp_path: Path) -> None:
    a = make_db("a", f"memory:/{root}")
    with pytest.raises(dimple.ConfigurationError):
        a.start_sync(interval=0)
    with pytest.raises(dimple.ConfigurationError):
        BackgroundSync(a.sync, sender=a, interval=1, retry_delay=5, max_backoff=1)
    with pytest.raises(dimple.ConfigurationError):
        BackgroundSync(a.sync, sender=a, jitter=2)
    bg = BackgroundSync(a.sync, sender=a, interval=1)
    bg.start()
    with pytest.raises(RuntimeError):
        bg.start()
    assert bg.stop()
    local = dimple.DimpleDb(create_engine(f"sqlite:///{tmp_path / 'x.db'}"), Base)
    try:
        with pytest.raises(dimple.ConfigurationError, match="no remote"):
            local.start_sync()
    finally:
        local.close()
