"""The example app: ``python app.py [TEXT]`` adds a to-do (if given), syncs, lists.

Run ``alembic upgrade head`` first: the schema, bookkeeping tables included, is Alembic's.
``REMOTE`` (default ``./remote``) is where devices meet: any fsspec URL or folder. This
example syncs in plaintext; a real app passes ``identity=`` (``dimpledb keygen``) instead.
"""

from __future__ import annotations

import os
import sys

from models import Base, Todo
from sqlalchemy import create_engine, select

import dimpledb_sa as dimple


def main(argv: list[str]) -> None:
    engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///app.db"))
    db = dimple.DimpleDb(engine, Base, remote=os.environ.get("REMOTE", "remote"),
                         encryption=False)
    try:
        adopted = db.adopt()  # rows written before tracking began; 0 once done
        if adopted:
            print(f"adopted {adopted} existing rows")
        Session = db.sessionmaker()
        with Session() as session:
            if argv:
                session.add(Todo(text=" ".join(argv)))
            report = session.sync()
            print(f"pushed {report.pushed}, pulled {report.pulled}, applied "
                  f"{report.applied}, held {report.held}")
            for todo in session.scalars(select(Todo).order_by(Todo.id)):
                mark = "x" if todo.done else " "
                print(f"[{mark}] {todo.text}" + (f" (p{todo.priority})" if todo.priority else ""))
    finally:
        db.close()


if __name__ == "__main__":
    main(sys.argv[1:])
