"""Live queries: results that print themselves again whenever a commit changes them.

Two live queries over one SQLite database: the open todos (an ORM ``select``) and a count
(raw SQL through ``text()``). Each subscriber is called once at once, then after every
commit that changes its result: local commits, and changes that arrive by sync from another
device. A rolled-back transaction, or a commit that leaves a result as it was, prints
nothing. Run ``python examples/live_example.py``.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

from models import Base, Todo
from sqlalchemy import create_engine, select, text

import dimpledb_sa as dimple

__all__ = ["main"]


def main() -> int:
    key, _ = dimple.generate_identity()
    remote = f"memory://live-example-{uuid.uuid4().hex}"  # another "device" syncs through it
    with tempfile.TemporaryDirectory(prefix="dimpledb-live-") as tmp:
        engines = [create_engine(f"sqlite:///{Path(tmp) / name}.db") for name in ("app", "other")]
        app, other = (dimple.DimpleDb(e, Base, remote=remote, identity=key) for e in engines)
        for db in (app, other):
            db.create_all()
        Session = app.sessionmaker()

        open_todos = app.live(select(Todo).where(Todo.done.is_(False)).order_by(Todo.text))
        count = app.live(text("SELECT count(*) FROM todo"))
        subs = [
            open_todos.subscribe(lambda rows: print("  open todos:", [t.text for t in rows])),
            count.subscribe(lambda rows: print("  todos in all:", rows[0])),
        ]

        print("add two todos")
        with Session() as s:
            s.add_all([Todo(text="write docs"), Todo(text="ship it")])
            s.commit()
            docs = s.scalars(select(Todo).where(Todo.text == "write docs")).one()
            docs_id = docs.id

            print("tick one (the count stays the same, so only the open list prints)")
            docs.done = True
            s.commit()

            print("a rolled-back change prints nothing")
            docs.text = "never mind"
            s.flush()
            s.rollback()

        print("another device adds a todo; this one syncs")
        with other.sessionmaker()() as s:
            s.add(Todo(text="from the other device"))
            s.commit()
        other.sync()
        app.sync()

        print("delete a done todo (the open list is unchanged, so only the count prints)")
        with Session() as s:
            s.delete(s.get_one(Todo, docs_id))
            s.commit()

        for sub in subs:
            sub.close()
        open_todos.close()
        count.close()
        for db, engine in zip((app, other), engines, strict=True):
            db.close()
            engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
