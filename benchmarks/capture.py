"""Capture overhead: tracked vs untracked SQLAlchemy ORM on SQLite files, side by side.

Scenarios, each at 1,000 and 10,000 rows:
  (a) N inserts in one flush;
  (b) N updates in one flush (objects loaded, one attribute changed each);
  (c) N updates in a loop right after a commit: every object is expired, so reading the
      attribute refreshes it with its own SELECT, then it is changed; one commit at the end.
Tracked and untracked runs alternate and the best of ``--repeat`` runs of each is kept.
Prints seconds and the ratio tracked / untracked per scenario.

    python benchmarks/capture.py [--repeat 5] [--sizes 1000,10000]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dimpledb_sa as dimple


def make_model() -> tuple[type[Any], type[Any]]:
    class Base(DeclarativeBase):
        pass

    class Todo(Base):
        __tablename__ = "todo"
        id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
        text: Mapped[str]
        done: Mapped[bool] = mapped_column(default=False)
        priority: Mapped[int] = mapped_column(default=0)

    return Base, Todo


class Setup:
    def __init__(self, tracked: bool, folder: str, n: int) -> None:
        self.Base, self.Todo = make_model()
        path = os.path.join(folder, f"{'t' if tracked else 'u'}-{n}-{time.monotonic_ns()}.db")
        self.engine = create_engine(f"sqlite:///{path}")
        self.db = None
        if tracked:
            self.db = dimple.DimpleDb(self.engine, self.Base)
            self.db.create_all()
        else:
            self.Base.metadata.create_all(self.engine)
        self.n = n

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
        self.engine.dispose()


def insert_one_flush(s: Setup) -> float:
    with Session(s.engine) as session:
        objs = [s.Todo(text=f"item {i}", priority=i % 5) for i in range(s.n)]
        t0 = time.perf_counter()
        session.add_all(objs)
        session.commit()
        return time.perf_counter() - t0


def update_one_flush(s: Setup) -> float:
    with Session(s.engine) as session:
        objs = session.scalars(select(s.Todo)).all()
        t0 = time.perf_counter()
        for o in objs:
            o.text = o.text + "!"
        session.commit()
        return time.perf_counter() - t0


def update_after_commit(s: Setup) -> float:
    with Session(s.engine) as session:
        objs = session.scalars(select(s.Todo)).all()
        session.commit()  # expires every object
        t0 = time.perf_counter()
        for o in objs:
            o.done = not o.done  # the read refreshes the expired object
        session.commit()
        return time.perf_counter() - t0


def measure(n: int, repeat: int, folder: str) -> dict[str, tuple[float, float]]:
    best: dict[str, list[float]] = {k: [float("inf"), float("inf")] for k in "abc"}
    steps: list[tuple[str, Callable[[Setup], float]]] = [
        ("a", insert_one_flush), ("b", update_one_flush), ("c", update_after_commit)]
    for _ in range(repeat):
        for idx, tracked in ((0, False), (1, True)):
            s = Setup(tracked, folder, n)
            try:
                for key, fn in steps:
                    gc.collect()
                    best[key][idx] = min(best[key][idx], fn(s))
            finally:
                s.close()
    return {k: (v[0], v[1]) for k, v in best.items()}


LABELS = {
    "a": "inserts, one flush",
    "b": "updates, one flush",
    "c": "updates after commit (refresh per object)",
}
TARGETS = {"a": 1.5, "b": 1.25, "c": 1.25}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default="1000,10000")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for n in (int(x) for x in args.sizes.split(",")):
            res = measure(n, args.repeat, folder)
            print(f"\n{n:,} rows (best of {args.repeat})")
            print(f"  {'scenario':45} {'untracked':>10} {'tracked':>10} {'ratio':>7} target")
            for k, (u, t) in res.items():
                print(f"  ({k}) {LABELS[k]:41} {u:9.3f}s {t:9.3f}s {t / u:7.2f} <= {TARGETS[k]}")


if __name__ == "__main__":
    main()
