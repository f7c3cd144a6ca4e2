"""Helper for ``test_watch``: another process writing to the same SQLite file.

``python live_writer.py DB_PATH tracked TEXT`` adds a todo through a tracked ORM session
(so the change log says which table changed); ``... untracked TEXT`` inserts one with plain
``sqlite3``, outside tracking. The models are the watcher tests' own (``models.LiveBase``),
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
    if mode == "untracked":
        conn = sqlite3.connect(path, timeout=30)
        try:
            conn.execute("INSERT INTO todo (id, text, done) VALUES (?, ?, 0)",
                         (dimple.new_id(), text))
            conn.commit()
        finally:
            conn.close()
        return
    engine = create_engine(f"sqlite:///{path}")
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
