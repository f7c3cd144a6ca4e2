"""Helper for ``test_watch``: another process writing to the same database.

``python live_writer.py DB tracked TEXT`` adds a todo through a tracked ORM session (so the
change log says which table changed); ``... untracked TEXT`` inserts one with plain SQL,
outside tracking (``sqlite3`` for a SQLite file). ``DB`` is a SQLite file path or a
SQLAlchemy URL. The models are the watcher tests' own (``models.LiveBase``),
imported from this folder, which Python puts first on the path of a script.
"""

from __future__ import annotations

import sqlite3
import sys

from models import LiveBase, LiveTodo
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import dimpledb_sa as dimple

__all__ = ["main"]


def main(path: str, mode: str, text: str) -> None:
    url = path if "://" in path else f"sqlite:///{path}"
    if mode == "untracked" and "://" in path:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO todo (id, text, done) VALUES (%s, %s, false)",
                                 (dimple.new_id(), text))
        engine.dispose()
        return
    if mode == "untracked":
        conn = sqlite3.connect(path, timeout=30)
        try:
            conn.execute("INSERT INTO todo (id, text, done) VALUES (?, ?, 0)",
                         (dimple.new_id(), text))
            conn.commit()
        finally:
            conn.close()
        return
    engine = create_engine(url)
    db = dimple.DimpleDb(engine, LiveBase)
    try:
        with Session(engine) as session:
            session.add(LiveTodo(text=text))
            session.commit()
    finally:
        db.close()
        engine.dispose()


if __name__ == "__main__":
    main(*sys.argv[1:4])
