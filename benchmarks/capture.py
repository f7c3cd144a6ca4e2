"""Capture overhead: tracked vs untracked SQLAlchemy ORM on SQLite files, side by side.

Scenarios, each at 1,000 and 10,000 rows (``--sizes``):
  (a) N inserts in one flush;
  (b) N updates in one flush (objects loaded, one attribute changed each);
  (c) N updates in a loop right after a commit: every object is expired, so reading the
      attribute refreshes it with its own SELECT (after autoflushing the previous change),
      then it is changed; one commit at the end.
The untracked side is the same model with plain SQLAlchemy on its own file. Each round
builds a fresh tracked and a fresh untracked database and runs the three scenarios on both,
in an order that alternates between rounds; the timed part is the flush/commit (and, for
(c), the loop). Printed per scenario: the median of the per-round ratios tracked/untracked
of wall-clock time (pairs measured next to each other, so machine load mostly cancels out)
and of CPU time (which leaves out waiting for the disk and for other processes), and the
ratio of the best wall-clock times of each side.

    python benchmarks/capture.py [--rounds 7] [--sizes 1000,10000]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
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
        self.path = path
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
        os.remove(self.path)


class Timer:
    """Wall-clock and CPU seconds of the ``with`` block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def insert_one_flush(s: Setup) -> Timer:
    with Session(s.engine) as session:
        objs = [s.Todo(text=f"item {i}", priority=i % 5) for i in range(s.n)]
        with Timer() as t:
            session.add_all(objs)
            session.commit()
        return t


def update_one_flush(s: Setup) -> Timer:
    with Session(s.engine) as session:
        objs = session.scalars(select(s.Todo)).all()
        with Timer() as t:
            for o in objs:
                o.text = o.text + "!"
            session.commit()
        return t


def update_after_commit(s: Setup) -> Timer:
    with Session(s.engine) as session:
        objs = session.scalars(select(s.Todo)).all()
        session.commit()  # expires every object
        with Timer() as t:
            for o in objs:
                o.done = not o.done  # the read refreshes the expired object
            session.commit()
        return t


STEPS: list[tuple[str, Callable[[Setup], Timer]]] = [
    ("a", insert_one_flush), ("b", update_one_flush), ("c", update_after_commit)]


def run_side(tracked: bool, folder: str, n: int) -> dict[str, Timer]:
    s = Setup(tracked, folder, n)
    try:
        out: dict[str, Timer] = {}
        for key, fn in STEPS:
            gc.collect()
            out[key] = fn(s)
        return out
    finally:
        s.close()


def measure(n: int, rounds: int, folder: str) -> dict[str, tuple[list[Timer], list[Timer]]]:
    """Per scenario: (untracked times, tracked times), one of each per round."""
    times: dict[str, tuple[list[Timer], list[Timer]]] = {k: ([], []) for k, _ in STEPS}
    run_side(True, folder, min(n, 1000))  # warm-up: imports, mapper configuration
    run_side(False, folder, min(n, 1000))
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for tracked in order:
            res = run_side(tracked, folder, n)
            for k, t in res.items():
                times[k][1 if tracked else 0].append(t)
    return times


LABELS = {
    "a": "inserts, one flush",
    "b": "updates, one flush",
    "c": "updates after commit (refresh per object)",
}
TARGETS = {"a": 1.5, "b": 1.25, "c": 1.25}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sizes", default="1000,10000")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for n in (int(x) for x in args.sizes.split(",")):
            rounds = args.rounds * 3 if n <= 2000 else args.rounds
            res = measure(n, rounds, folder)
            print(f"\n{n:,} rows, {rounds} rounds. Seconds: the best of each side. Ratio "
                  "tracked/untracked:\n  the median of the rounds' wall-clock and CPU ratios, "
                  "and the ratio of the best wall-clock times.")
            print(f"  {'scenario':45} {'untracked':>9} {'tracked':>9} {'median':>7} "
                  f"{'cpu':>6} {'best':>6} target")
            for k, (u, t) in res.items():
                wall = [b.wall / a.wall for a, b in zip(u, t, strict=True)]
                cpu = [b.cpu / a.cpu for a, b in zip(u, t, strict=True)]
                bu, bt = min(x.wall for x in u), min(x.wall for x in t)
                print(f"  ({k}) {LABELS[k]:41} {bu:9.4f} {bt:9.4f} "
                      f"{statistics.median(wall):7.2f} {statistics.median(cpu):6.2f} "
                      f"{bt / bu:6.2f} <= {TARGETS[k]}")


if __name__ == "__main__":
    main()
