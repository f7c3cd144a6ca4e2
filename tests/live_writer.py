"""Helper for ``test_live``: another process writing to the same SQLite file.

``python live_writer.py DB_PATH tracked TEXT`` adds a todo through a tracked ORM session
(so the change log says which table changed); ``... untracked TEXT`` inserts one with plain
``sqlite3``, outside tracking. The models match ``test_live``'s ``Todo`` table.
"""

from __future__ import annotations

import sqlite3
import sys

from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dimpledb_sa as dimple

__all__ = ["main"]


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)
    list_id: Mapped[str | None]


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
    db = dimple.DimpleDb(engine, Base)
    try:
        with Session(engine) as session:
            session.add(Todo(text=text))
            session.commit()
    finally:
        db.close()
        engine.dispose()


if __name__ == "__main__":
    main(*sys.argv[1:4])
