"""Tests for ``dimpledb_sa.live.watch``: commits by other processes reach live queries.

Everything runs on real SQLite files in ``tmp_path`` and on PostgreSQL: a second process
(``live_writer.py``) writing with and without tracking, another engine in this process, a sync
made through another engine, local commits that must not be delivered twice, an in-memory
database refused, and closing the watcher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from databases import Databases
from models import WAIT, Recorder, add
from models import LiveBase as Base
from models import LiveNote as Note
from models import LiveTodo as Todo
from sqlalchemy import Engine, create_engine, select

import dimpledb_sa as dimple
from dimpledb_sa.core.errors import ConfigurationError

__all__: list[str] = []


@pytest.fixture
def models() -> type[Base]:
    return Base  # ``db`` tracks the live schema

WRITER = Path(__file__).with_name("live_writer.py")


def run_writer(engine: Engine, mode: str, value: str) -> None:
    """Write from another process to ``engine``'s database."""
    where = (str(engine.url.database) if engine.dialect.name == "sqlite"
             else engine.url.render_as_string(hide_password=False))
    subprocess.run([sys.executable, str(WRITER), where, mode, value], check=True,
                   timeout=120)


def test_watch_external_two_processes(db: dimple.DimpleDb, engine: Engine) -> None:
    rec, notes = Recorder(), Recorder()
    with db.watch_external(interval=0.05) as watcher, \
            db.live(select(Todo.text).order_by(Todo.text)) as live, \
            db.live(select(Note.body)) as note_live:
        live.subscribe(rec)
        note_live.subscribe(notes)
        run_writer(engine, "tracked", "from elsewhere")
        assert rec.wait_for(lambda calls: calls[-1] == ["from elsewhere"])
        assert watcher.wait_polls(2, timeout=WAIT)
        assert note_live.run_count == 1  # the other process wrote only "todo"
        run_writer(engine, "untracked", "raw sql")
        assert rec.wait_for(lambda calls: calls[-1] == ["from elsewhere", "raw sql"])


def test_watch_external_ignores_local_commits(db: dimple.DimpleDb, engine: Engine) -> None:
    with db.watch_external(interval=0.02) as watcher, db.live(select(Todo.text)) as live:
        for i in range(5):
            add(engine, Todo(text=str(i)))
            assert watcher.wait_polls(1, timeout=WAIT)
        assert watcher.wait_polls(3, timeout=WAIT)
        assert live.run_count == 6  # once per local commit, none from the watcher
        assert len(live.rows) == 5


def test_watch_external_sees_another_engine(db: dimple.DimpleDb, engine: Engine) -> None:
    other_engine = create_engine(engine.url)
    other = dimple.DimpleDb(other_engine, Base)
    rec = Recorder()
    try:
        with db.watch_external(interval=0.05), db.live(select(Todo.text)) as live:
            live.subscribe(rec)
            add(other_engine, Todo(text="same process, other engine"))
            assert rec.wait_for(lambda calls: calls[-1] == ["same process, other engine"])
    finally:
        other.close()
        other_engine.dispose()


def test_watch_external_sees_a_sync_made_elsewhere(tmp_path: Path, database: str,
                                                   databases: Databases) -> None:
    remote = str(tmp_path / "remote")
    engines = [databases.engine(database, n, plain=True) for n in ("a", "b", "b")]
    a, b, watching = (dimple.DimpleDb(engines[0], Base, remote=remote, encryption=False),
                      dimple.DimpleDb(engines[1], Base, remote=remote, encryption=False),
                      dimple.DimpleDb(engines[2], Base))
    rec = Recorder()
    try:
        a.create_all()
        b.create_all()
        add(engines[0], Todo(text="from a"))
        a.sync()
        add(engines[1], Note(body="newer than a's transaction"))
        with watching.watch_external(interval=0.05), \
                watching.live(select(Todo.text)) as live:
            live.subscribe(rec)
            b.sync()  # stores a's older transaction in b.db, through another engine
            assert rec.wait_for(lambda calls: calls[-1] == ["from a"])
    finally:
        for d in (a, b, watching):
            d.live_registry.close_all()
            d.close()
        for e in engines:
            e.dispose()


def test_watch_external_needs_a_file(tmp_path: Path) -> None:
    eng = create_engine("sqlite://")
    d = dimple.DimpleDb(eng, Base)
    try:
        d.create_all()
        with pytest.raises(ConfigurationError):
            d.watch_external()
    finally:
        d.close()
        eng.dispose()


def test_watcher_close_is_idempotent(db: dimple.DimpleDb) -> None:
    watcher = db.watch_external(interval=0.01)
    assert watcher.wait_polls(1, timeout=WAIT)
    watcher.close()
    watcher.close()
    assert not watcher._thread.is_alive()
    assert watcher not in db.live_registry.watchers
