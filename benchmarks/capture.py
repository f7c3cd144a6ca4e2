"""Capture overhead: tracked vs untracked SQLAlchemy ORM on SQLite files, side by side.

Large flushes, each at 1,000 and 10,000 rows (``--sizes``):
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

Single-row commits, the workload of an interactive app (``--commits``, default 1,000):
  (d) one insert per commit;
  (e) one update per commit: ``todo.done = not todo.done`` (the read refreshes the object
      the last commit expired), then ``commit()``.
Each round makes a fresh tracked and a fresh untracked database and runs the commits of both
interleaved, one tracked and one untracked commit after the other (which goes first
alternates), so that both sides see the same load and the same disk; each commit is timed.

Many databases in one process, (f): the single-insert commits of (d) on one tracked
database while 300 other ``DimpleDb`` objects (``--tenants``), each on its own SQLite file
and engine (each tenant committed once when it was set up), are open, against the same
commits with no other ``DimpleDb``. Each round runs four blocks of each, alternating; the
other ``DimpleDb`` objects are made before each of their blocks and closed after it.

    python benchmarks/capture.py [--rounds 7] [--sizes 1000,10000] [--commits 1000]
        [--commit-rounds 6] [--tenants 300] [--only abc,de,f]
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
    "d": "one insert per commit",
    "e": "one update per commit",
}
TARGETS = {"a": 1.5, "b": 1.25, "c": 1.25, "d": 1.2, "e": 1.2}


# -- single-row commits -----------------------------------------------------------------------
class Committer:
    """One database and one long-lived session committing one row at a time."""

    def __init__(self, s: Setup) -> None:
        self.setup = s
        self.session = Session(s.engine)
        self.obj = s.Todo(text="the one updated")
        self.session.add(self.obj)
        self.session.commit()
        self.wall = 0.0
        self.cpu = 0.0

    def insert(self, i: int) -> None:
        self.session.add(self.setup.Todo(text=f"item {i}", priority=i % 5))
        self.session.commit()

    def update(self, i: int) -> None:
        self.obj.done = not self.obj.done
        self.session.commit()

    def close(self) -> None:
        self.session.close()
        self.setup.close()


def interleave(sides: list[Committer], step: str, n: int) -> None:
    """``n`` commits on each side, alternating, each timed into its side's totals."""
    wall, cpu = time.perf_counter, time.process_time
    for i in range(n):
        for side in (sides if i % 2 == 0 else sides[::-1]):
            fn = getattr(side, step)
            w, c = wall(), cpu()
            fn(i)
            side.wall += wall() - w
            side.cpu += cpu() - c


def measure_commits(n: int, rounds: int, folder: str) -> dict[str, tuple[list[Timer], list[Timer]]]:
    """(d) and (e): per round, fresh databases, tracked and untracked commits interleaved."""
    out: dict[str, tuple[list[Timer], list[Timer]]] = {"d": ([], []), "e": ([], [])}
    for r in range(rounds + 1):  # round 0 warms up
        for key, step in (("d", "insert"), ("e", "update")):
            sides = [Committer(Setup(False, folder, n)), Committer(Setup(True, folder, n))]
            try:
                gc.collect()
                interleave(sides if r % 2 == 0 else sides[::-1], step, n)
            finally:
                for side in sides:
                    side.close()
            if r:
                for k, side in enumerate(sides):
                    t = Timer()
                    t.wall, t.cpu = side.wall, side.cpu
                    out[key][k].append(t)
    return out


# -- many DimpleDb objects in one process -----------------------------------------------------
class Tenants:
    """``count`` tenant databases, each on its own SQLite file and engine; :meth:`open_all`
    makes one ``DimpleDb`` per tenant, :meth:`close_all` closes and drops them."""

    def __init__(self, count: int, folder: str) -> None:
        self.engines: list[Any] = []
        self.models: list[Any] = []
        self.dbs: list[Any] = []
        for k in range(count):
            Base, Todo = make_model()
            engine = create_engine(f"sqlite:///{os.path.join(folder, f'tenant-{k}.db')}")
            self.engines.append(engine)
            self.models.append(Base)
            self.open_one(k)
            self.dbs[-1].create_all()
            with Session(engine) as session:  # each tenant is in use: it has committed
                session.add(Todo(text="hello"))
                session.commit()
        self.close_all()

    def open_one(self, k: int) -> None:
        self.dbs.append(dimple.DimpleDb(self.engines[k], self.models[k]))

    def open_all(self) -> None:
        for k in range(len(self.engines)):
            self.open_one(k)

    def close_all(self) -> None:
        for db in self.dbs:
            db.close()
        self.dbs.clear()
        gc.collect()

    def dispose(self) -> None:
        self.close_all()
        for engine in self.engines:
            engine.dispose()


def measure_tenants(n: int, rounds: int, count: int, folder: str
                    ) -> tuple[list[Timer], list[Timer]]:
    """(f): per round, ``n`` single-insert commits with no other ``DimpleDb`` and ``n`` with
    ``count`` others open, in four alternating blocks each; (alone, with others) totals."""
    tenants = Tenants(count, folder)
    alone: list[Timer] = []
    many: list[Timer] = []
    blocks = 4
    try:
        for r in range(rounds + 1):  # round 0 warms up
            sides = {False: Committer(Setup(True, folder, n)),
                     True: Committer(Setup(True, folder, n))}
            try:
                for b in range(2 * blocks):
                    with_others = (b + r) % 2 == 1
                    if with_others:
                        tenants.open_all()
                    gc.collect()
                    interleave([sides[with_others]], "insert", n // blocks)
                    if with_others:
                        tenants.close_all()
            finally:
                for side in sides.values():
                    side.close()
            if r:
                for with_others, side in sides.items():
                    t = Timer()
                    t.wall, t.cpu = side.wall, side.cpu
                    (many if with_others else alone).append(t)
    finally:
        tenants.dispose()
    return alone, many


# -- report -----------------------------------------------------------------------------------
def report(res: dict[str, tuple[list[Timer], list[Timer]]]) -> None:
    print(f"  {'scenario':45} {'untracked':>9} {'tracked':>9} {'median':>7} "
          f"{'cpu':>6} {'best':>6} target")
    for k, (u, t) in res.items():
        wall = [b.wall / a.wall for a, b in zip(u, t, strict=True)]
        cpu = [b.cpu / a.cpu for a, b in zip(u, t, strict=True)]
        bu, bt = min(x.wall for x in u), min(x.wall for x in t)
        print(f"  ({k}) {LABELS[k]:41} {bu:9.4f} {bt:9.4f} "
              f"{statistics.median(wall):7.2f} {statistics.median(cpu):6.2f} "
              f"{bt / bu:6.2f} <= {TARGETS[k]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--commit-rounds", type=int, default=6)
    ap.add_argument("--tenants", type=int, default=300)
    ap.add_argument("--only", default="abc,de,f")
    args = ap.parse_args()
    parts = args.only.split(",")
    with tempfile.TemporaryDirectory() as folder:
        for n in (int(x) for x in args.sizes.split(",") if "abc" in parts):
            rounds = args.rounds * 3 if n <= 2000 else args.rounds
            res = measure(n, rounds, folder)
            print(f"\n{n:,} rows, {rounds} rounds. Seconds: the best of each side. Ratio "
                  "tracked/untracked:\n  the median of the rounds' wall-clock and CPU ratios, "
                  "and the ratio of the best wall-clock times.")
            report(res)
        if "de" in parts:
            n, rounds = args.commits, args.commit_rounds
            res = measure_commits(n, rounds, folder)
            print(f"\n{n:,} single-row commits, {rounds} rounds, tracked and untracked "
                  "interleaved. Seconds: the best\n  total of each side. Ratio: as above.")
            report(res)
        if "f" in parts:
            n, rounds, count = args.commits, args.commit_rounds, args.tenants
            alone, many = measure_tenants(n, rounds, count, folder)
            wall = statistics.median([m.wall / a.wall for a, m in zip(alone, many, strict=True)])
            cpu = statistics.median([m.cpu / a.cpu for a, m in zip(alone, many, strict=True)])
            ba, bm = min(a.wall for a in alone), min(m.wall for m in many)
            print(f"\n{n:,} single-insert commits on one tracked database, {rounds} rounds: "
                  f"alone vs with {count} other\n  DimpleDb objects open (own file and "
                  "engine each), in alternating blocks. Seconds: the\n  best total of each "
                  "side. Ratio: as above.")
            print(f"  {'scenario':45} {'alone':>9} {'others':>9} {'median':>7} {'cpu':>6} "
                  f"{'best':>6} target")
            print(f"  (f) {f'one insert per commit, {count} others open':41} {ba:9.4f} "
                  f"{bm:9.4f} {wall:7.2f} {cpu:6.2f} {bm / ba:6.2f} <= 1.1")


if __name__ == "__main__":
    main()
