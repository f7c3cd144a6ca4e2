"""Background sync that tells: ``signals.sync_failed``, ``failures``, ``last_error`` and
``last_report`` on the handle ``db.start_sync()`` returns, and a thread that never dies.

Most tests drive :class:`BackgroundSync` with a scripted ``run``; every wait is on an event
with a generous timeout that only turns a hang into a failure; nothing asserts on time.
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
from sqlalchemy import create_engine

import dimpledb_sa as dimple
from dimpledb_sa import signals
from dimpledb_sa.sync.background import BackgroundSync, is_partial
from dimpledb_sa.sync.crypto import generate_identity

WAIT = 30.0  # only ever reached when something is broken


class PanicException(BaseException):
    """What pyo3 raises when native code (pyrage) panics: not an ``Exception``."""


class Script:
    """A ``run`` for BackgroundSync: each call pops the next step (an exception to raise,
    or a report to return); once the script is empty, it returns a clean report."""

    def __init__(self, *steps: BaseException | dimple.SyncReport) -> None:
        self.steps = list(steps)
        self.calls = 0
        self.done = threading.Event()  # set once the script is used up

    def __call__(self) -> dimple.SyncReport:
        self.calls += 1
        if not self.steps:
            self.done.set()
            return dimple.SyncReport()
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def partial_error(author: str = "01933b2e-3f47-7b12-9c8d-1234567890ab") -> dimple.SyncError:
    report = dimple.SyncReport(pulled=3, applied=2)
    report.errors[author] = "cannot decrypt"
    return dimple.DecryptionError("sync finished with errors (1)", report)


@pytest.fixture
def received() -> Iterator[list[tuple[Any, BaseException]]]:
    """Every ``sync_failed`` sent while the test runs: (sender, error)."""
    got: list[tuple[Any, BaseException]] = []

    def receiver(sender: Any, *, error: BaseException, **kw: Any) -> None:
        got.append((sender, error))

    signals.sync_failed.connect(receiver, weak=False)
    yield got
    signals.sync_failed.disconnect(receiver)


# -- what a failed sync records, and how long it waits -------------------------------------------
def test_a_failed_sync_is_counted_kept_and_signalled(
        received: list[tuple[Any, BaseException]]) -> None:
    sender = object()
    down = ConnectionError("remote unreachable")
    bg = BackgroundSync(Script(down, OSError("again")), sender=sender, interval=60,
                        retry_delay=1, max_backoff=100, jitter=0)
    assert bg._sync_once() == 1  # backoff: retry_delay, then doubling
    assert bg.failures == 1 and bg.last_error is down and bg.last_report is None
    assert received == [(sender, down)]
    assert bg._sync_once() == 2
    assert bg.failures == 2 and isinstance(bg.last_error, OSError)
    assert [e for _, e in received] == [down, bg.last_error]
    assert bg._sync_once() == 60  # a success: the interval, and the counters reset
    assert bg.failures == 0 and bg.last_error is None and bg.last_report is not None
    assert bg.total_failures == 2 and bg.syncs == 3 and bg.synced.is_set()
    assert len(received) == 2  # nothing sent for a success


def test_a_partial_sync_counts_as_a_failure_but_waits_the_interval(
        received: list[tuple[Any, BaseException]]) -> None:
    partial = partial_error()
    bg = BackgroundSync(Script(ConnectionError("down"), partial, partial_error(),
                               ConnectionError("down")),
                        sender="db", interval=60, retry_delay=1, max_backoff=100, jitter=0)
    assert bg._sync_once() == 1
    assert bg._sync_once() == 60  # partial: the normal interval, not a hurried retry
    assert bg.failures == 2 and bg.last_error is partial
    assert bg.last_report is partial.report  # the partial report is kept
    assert bg._sync_once() == 60
    assert bg.failures == 3
    assert bg._sync_once() == 1  # a transient failure after partial ones starts the backoff over
    assert [s for s, _ in received] == ["db"] * 4
    assert received[1][1] is partial


def test_which_failures_are_partial() -> None:
    assert is_partial(partial_error())
    mixed = dimple.SyncError("errors", partial_error().report)  # several kinds: still partial
    assert is_partial(mixed)
    pushed = dimple.SyncReport()
    pushed.errors["push"] = "upload failed"
    assert not is_partial(dimple.SyncError("push failed", pushed))
    assert not is_partial(dimple.SyncError("cannot list the remote", dimple.SyncReport()))
    assert not is_partial(dimple.SyncError("no report"))
    assert not is_partial(ConnectionError("down"))
    assert not is_partial(PanicException("boom"))


def test_a_native_panic_never_kills_the_thread(
        received: list[tuple[Any, BaseException]]) -> None:
    panic = PanicException("called `Result::unwrap()` on an `Err` value")
    script = Script(panic, RuntimeError("unexpected"))
    errors: list[BaseException] = []
    bg = BackgroundSync(script, interval=3600, retry_delay=0.001, max_backoff=0.001,
                        on_error=errors.append)
    bg.start()
    try:
        assert bg.synced.wait(WAIT), f"the thread died: {bg.last_error!r}"
        assert bg.running and script.calls == 3
        assert errors[0] is panic and isinstance(errors[1], RuntimeError)
        assert [e for _, e in received] == errors
        assert bg.failures == 0 and bg.total_failures == 2 and bg.last_error is None
    finally:
        assert bg.stop(WAIT)


def test_keyboard_interrupt_and_system_exit_are_not_swallowed() -> None:
    for exc in (KeyboardInterrupt(), SystemExit(3)):
        bg = BackgroundSync(Script(exc), interval=60)
        with pytest.raises(type(exc)):
            bg._sync_once()


def test_raising_receivers_and_callbacks_are_logged_and_ignored(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def bad_receiver(sender: Any, **kw: Any) -> None:
        calls.append("receiver")
        raise PanicException("a receiver panicked")

    def good_receiver(sender: Any, **kw: Any) -> None:
        calls.append("good")

    def bad_callback(exc: BaseException) -> None:
        calls.append("on_error")
        raise ValueError("callback bug")

    sender = object()
    signals.sync_failed.connect(bad_receiver, sender=sender, weak=False)
    signals.sync_failed.connect(good_receiver, sender=sender, weak=False)
    try:
        bg = BackgroundSync(Script(ConnectionError("down")), sender=sender, interval=60,
                            retry_delay=1, jitter=0, on_error=bad_callback)
        assert bg._sync_once() == 1
    finally:
        signals.sync_failed.disconnect(bad_receiver)
        signals.sync_failed.disconnect(good_receiver)
    assert sorted(calls) == ["good", "on_error", "receiver"]
    assert "a sync_failed receiver raised; ignored" in caplog.text
    assert "a background sync callback raised; ignored" in caplog.text
    assert bg.failures == 1


def test_receivers_of_another_sender_are_not_called() -> None:
    got: list[Any] = []

    def receiver(sender: Any, **kw: Any) -> None:
        got.append(sender)

    mine, other = object(), object()
    signals.sync_failed.connect(receiver, sender=other, weak=False)
    try:
        BackgroundSync(Script(ConnectionError("down")), sender=mine, interval=60)._sync_once()
    finally:
        signals.sync_failed.disconnect(receiver)
    assert got == []


# -- end to end, through db.start_sync() --------------------------------------------------------
@pytest.fixture
def make_db(tmp_path: Path) -> Iterator[Callable[..., dimple.DimpleDb]]:
    made: list[dimple.DimpleDb] = []

    def make(name: str, remote: Any, identity: str, **kw: Any) -> dimple.DimpleDb:
        engine = create_engine(f"sqlite:///{tmp_path / name}.db")
        db = dimple.DimpleDb(engine, Base, remote=remote, identity=identity, **kw)
        db.create_all()
        made.append(db)
        return db

    yield make
    for db in made:
        db.close()
        db.engine.dispose()


@pytest.fixture
def root() -> Iterator[str]:
    top = f"/dimpledb-bgsig-{uuid.uuid4().hex}"
    yield f"{top}/remote"
    mem = MemoryFileSystem()
    if mem.exists(top):
        mem.rm(top, recursive=True)


def test_an_unreadable_author_reaches_the_app(make_db: Callable[..., dimple.DimpleDb],
                                              root: str) -> None:
    a = make_db("a", f"memory://{root}", generate_identity()[0])
    with a.sessionmaker()() as s:
        s.add(Note(text="secret"))
        s.commit()
    a.sync()
    b = make_db("b", f"memory://{root}", generate_identity()[0])  # cannot read a's bundles
    got: list[tuple[Any, BaseException]] = []
    told = threading.Event()

    def on_failed(sender: Any, *, error: BaseException, **kw: Any) -> None:
        got.append((sender, error))
        told.set()

    signals.sync_failed.connect(on_failed, sender=b, weak=False)
    try:
        bg = b.start_sync(interval=3600)
        assert told.wait(WAIT)
        b.stop_sync()
    finally:
        signals.sync_failed.disconnect(on_failed)
    sender, error = got[0]
    assert sender is b and isinstance(error, dimple.DecryptionError)
    assert bg.failures >= 1 and bg.last_error is error
    assert bg.last_report is not None and a.author_id in bg.last_report.errors


def test_a_network_failure_reaches_the_app_then_clears(
        make_db: Callable[..., dimple.DimpleDb], root: str) -> None:
    class Down(MemoryFileSystem):  # type: ignore[misc]
        cachable = False
        left = 2

        def ls(self, path: str, detail: bool = True, **kw: Any) -> Any:
            if self.left > 0:
                self.left -= 1
                raise ConnectionError("simulated network failure")
            return super().ls(path, detail=detail, **kw)

    a = make_db("a", Down(), generate_identity()[0], path=root)
    failed: list[BaseException] = []
    a_failed = threading.Event()

    def on_failed(sender: Any, *, error: BaseException, **kw: Any) -> None:
        failed.append(error)
        a_failed.set()

    signals.sync_failed.connect(on_failed, sender=a, weak=False)
    try:
        bg = a.start_sync(interval=3600, retry_delay=0.001, max_backoff=0.002)
        assert bg.synced.wait(WAIT), f"never recovered: {bg.last_error!r}"
        a.stop_sync()
    finally:
        signals.sync_failed.disconnect(on_failed)
    assert a_failed.is_set() and failed
    assert bg.total_failures == len(failed) and bg.failures == 0 and bg.last_error is None
    assert bg.last_report is not None and bg.last_report.ok
