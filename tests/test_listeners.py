"""The process's one set of capture listeners (``capture/listeners.py``): registered once,
never removed, dispatching by engine, so that ``DimpleDb`` objects can come and go (closed
or simply dropped and collected, at any moment) without breaking or slowing other commits.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa.capture import listeners
from dimpledb_sa.core import changelog

WAIT = 60.0  # only ever reached when something is broken


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]


@pytest.fixture
def collect_often() -> Iterator[None]:
    """The cyclic collector after every allocation: it runs inside every event dispatch."""
    old = gc.get_threshold()
    gc.collect()
    gc.set_threshold(1)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.collect()


def logged(engine: Engine) -> int:
    """Local transactions logged, folded or pending."""
    with engine.connect() as conn:
        return len(changelog.all_transactions(conn))


def tracked_engine(url: str = "sqlite://") -> tuple[Engine, dimple.DimpleDb]:
    engine = create_engine(url)
    db = dimple.DimpleDb(engine, Base)
    db.create_all()
    return engine, db


def churn(count: int, errors: list[BaseException]) -> None:
    """Create and drop ``count`` unclosed DimpleDb objects, each on its own engine and in a
    reference cycle (only the collector frees it); one in ten commits once."""
    try:
        for k in range(count):
            db = dimple.DimpleDb(create_engine("sqlite://"), Base)
            db.cycle = db  # type: ignore[attr-defined]
            if k % 10 == 0:
                db.create_all()
                with Session(db.engine) as s:
                    s.add(Note(text="tenant"))
                    s.commit()
            del db
    except BaseException as exc:
        errors.append(exc)


def commit_while(done: threading.Event, engine: Engine, at_least: int
                 ) -> tuple[int, list[BaseException]]:
    failed: list[BaseException] = []
    n = 0
    while n < at_least or not done.is_set():
        try:
            with Session(engine) as s:
                s.add(Note(text=f"commit {n}"))
                s.commit()
        except Exception as exc:
            failed.append(exc)
        n += 1
    return n, failed


def test_collecting_unclosed_dbs_never_breaks_a_commit(collect_often: None) -> None:
    engine, db = tracked_engine()
    errors: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        churn(300, errors)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        commits, failed = commit_while(done, engine, at_least=300)
    finally:
        thread.join(WAIT)
    assert not errors
    assert failed == [], f"{len(failed)} of {commits} commits failed: {failed[:3]!r}"
    assert logged(engine) == commits  # every commit recorded its log transaction
    db.close()


def test_a_db_collected_during_a_session_event_breaks_nothing() -> None:
    engine, db = tracked_engine()
    doomed: list[dimple.DimpleDb] = []
    for _ in range(3):
        other = dimple.DimpleDb(engine, Base)  # on the same engine: in the same dispatch
        other.cycle = other  # type: ignore[attr-defined]
        doomed.append(other)
    del other

    def drop_and_collect(session: Session) -> None:  # runs amid the before_commit dispatch
        doomed.clear()
        gc.collect()

    event.listen(Session, "before_commit", drop_and_collect)
    try:
        with Session(engine) as s:
            s.add(Note(text="x"))
            s.commit()
    finally:
        event.remove(Session, "before_commit", drop_and_collect)
    assert logged(engine) == 4  # each of the four logged it: it lived to the transaction's end
    gc.collect()
    assert listeners.captures_of(engine) == [db._capture]
    with Session(engine) as s:
        s.add(Note(text="y"))
        s.commit()
    assert logged(engine) == 5
    db.close()


def test_a_watcher_collected_during_an_engine_event_breaks_nothing(tmp_path: Path) -> None:
    engine, db = tracked_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    doomed = dimple.DimpleDb(engine, Base)
    doomed.cycle = doomed  # type: ignore[attr-defined]
    gone = weakref.ref(doomed.watch_external(interval=0.01))
    box = [doomed]
    del doomed

    def drop_and_collect(conn: Any) -> None:  # runs amid the engine's commit dispatch
        box.clear()
        gc.collect()

    event.listen(engine, "commit", drop_and_collect)
    try:
        for _ in range(200):  # until the watcher's thread let go of it and it was collected
            with Session(engine) as s:
                s.add(Note(text="x"))
                s.commit()
            if gone() is None:
                break
    finally:
        event.remove(engine, "commit", drop_and_collect)
    assert gone() is None
    db.close()


def session_listeners() -> dict[str, int]:
    dispatch = Session().dispatch
    return {name: len(getattr(dispatch, name)) for name in (
        "before_flush", "after_flush", "before_commit", "after_commit", "after_begin",
        "after_soft_rollback", "after_transaction_end", "do_orm_execute")}


def test_session_listeners_are_registered_once() -> None:
    _, first = tracked_engine()
    counts = session_listeners()
    more = [tracked_engine()[1] for _ in range(20)]
    assert session_listeners() == counts
    for db in [first, *more]:
        db.close()
    del first, more
    gc.collect()
    assert session_listeners() == counts  # nothing is ever removed either


def test_a_session_dispatches_only_to_its_engines_captures() -> None:
    engine, db = tracked_engine()
    others = [tracked_engine()[1] for _ in range(50)]
    with Session(engine) as s:
        refs = listeners._session_captures(s)
        assert [r() for r in refs] == [db._capture]
        s.add(Note(text="x"))
        s.commit()
    assert logged(engine) == 1
    for other in others:
        assert logged(other.engine) == 0
        other.close()
    db.close()


def test_a_dropped_db_stops_capturing_once_collected() -> None:
    engine, db = tracked_engine()
    session = Session(engine)  # lives on: its cache must not keep the capture alive
    session.add(Note(text="tracked"))
    session.commit()
    assert logged(engine) == 1
    db.cycle = db  # type: ignore[attr-defined]
    del db
    gc.collect()
    session.add(Note(text="after the db is gone"))
    session.commit()
    assert logged(engine) == 1
    assert listeners.captures_of(engine) == []
    session.close()


def test_a_db_dropped_mid_transaction_still_logs_that_transaction() -> None:
    engine, db = tracked_engine()
    with Session(engine) as s:
        s.add(Note(text="flushed while the db lived"))
        s.flush()
        del db
        gc.collect()
        s.commit()  # the session kept its capture until the end of the transaction
    assert logged(engine) == 1
    gc.collect()
    assert listeners.captures_of(engine) == []


def test_a_closed_db_stops_capturing_in_open_sessions() -> None:
    engine, db = tracked_engine()
    session = Session(engine)
    session.add(Note(text="tracked"))
    session.commit()
    db.close()
    session.add(Note(text="after close"))
    session.commit()
    assert logged(engine) == 1
    again = dimple.DimpleDb(engine, Base)  # a new one on the same engine captures again
    session.add(Note(text="tracked again"))
    session.commit()
    assert logged(engine) == 2
    session.close()
    again.close()


def test_two_captures_never_share_session_state() -> None:
    keys = set()
    for _ in range(100):
        _, db = tracked_engine()
        keys.add(db._capture._key)
        db.close()
        del db
    assert len(keys) == 100



def test_a_session_bound_to_an_execution_options_copy_is_captured() -> None:
    engine, db = tracked_engine()
    copy = engine.execution_options(isolation_level="SERIALIZABLE")
    with Session(copy) as s:
        s.add(Note(text="through a copy"))
        s.commit()
    with Session(bind=engine.connect()) as s:  # bound to a connection
        s.add(Note(text="through a connection"))
        s.commit()
        s.bind.close()  # type: ignore[union-attr]
    assert logged(engine) == 2
    db.close()
