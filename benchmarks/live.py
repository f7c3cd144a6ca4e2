"""Live queries at scale: 1,000 live queries over 20 tables on a SQLite file.

Setup: 20 tracked tables of ``--rows`` rows each, plus a scratch table that no live query
reads. 999 live queries (simple filters, counts and ORDER BY/LIMIT queries) are spread
round-robin over ``t00``..``t18``; the 1,000th is the *probe*, a simple query
(``SELECT value FROM t19 WHERE id = :pid``), alone on ``t19``. Every query has a subscriber.

1. **Re-runs.** One commit updating one row of ``t00``: how many live queries re-ran (must
   equal the number reading ``t00``; nothing else may re-run), and how long until the last
   of their callbacks against running those queries directly one after the other.
2. **Delay.** ``--commits`` rounds of: a commit to the scratch table, then the probe run
   directly (``Session(engine).execute(stmt).scalars().all()``) twice; then a commit updating
   the probe's row. The delay runs from the end of the database commit (the first
   ``after_commit`` listener, registered before the ``DimpleDb``'s) to the probe's callback.
   The ratio (target: at most 1.5x) compares the median delay with the median direct run
   made right after a commit, i.e. in the state the live query runs in: the first read after
   a write pays for SQLite's invalidated page cache and the cold CPU caches after the fsync
   whoever makes it. The ratio against the second, warm, direct run is printed too.

    python benchmarks/live.py [--queries 1000] [--tables 20] [--rows 20] [--commits 300]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from typing import Any

from sqlalchemy import Engine, bindparam, create_engine, event, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa.live.query import LiveQuery

__all__ = ["main"]

TARGET = 1.5


def make_models(n: int) -> tuple[type[Any], list[type[Any]]]:
    class Base(DeclarativeBase):
        pass

    models = []
    for i in range(n):
        models.append(type(f"T{i:02}", (Base,), {
            "__tablename__": f"t{i:02}",
            "__annotations__": {"id": Mapped[str], "value": Mapped[int], "label": Mapped[str]},
            "id": mapped_column(primary_key=True, default=dimple.new_id),
            "value": mapped_column(default=0),
            "label": mapped_column(default=""),
        }))
    return Base, models


def query_for(model: Any, k: int) -> Any:
    kind = k % 3
    if kind == 0:
        return select(model.id, model.value).where(model.value >= k % 7).order_by(model.id)
    if kind == 1:
        return select(func.count(model.id)).where(model.label != f"x{k}")
    return select(model.label).order_by(model.value.desc()).limit(5)


def direct(engine: Engine, stmt: Any, params: dict[str, Any] | None = None) -> float:
    t0 = time.perf_counter()
    with Session(engine) as s:
        result = s.execute(stmt, params)
        (result.scalars() if len(result.keys()) == 1 else result).all()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--tables", type=int, default=20)
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--commits", type=int, default=300)
    args = ap.parse_args()

    committed_at: list[float] = [0.0]

    def mark(session: Session) -> None:
        committed_at[0] = time.perf_counter()

    # registered before the DimpleDb's own listeners, so it runs right after the COMMIT
    event.listen(Session, "after_commit", mark)
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite:///{os.path.join(folder, 'live.db')}")
        Base, models = make_models(args.tables + 1)
        models, scratch = models[:-1], models[-1]
        db = dimple.DimpleDb(engine, Base)
        lives: list[LiveQuery] = []
        try:
            db.create_all()
            with Session(engine) as s:
                for m in [*models, scratch]:
                    s.add_all(m(value=i, label=f"r{i}") for i in range(args.rows))
                s.commit()
                probe_model = models[-1]
                probe_id = s.scalars(select(probe_model.id).limit(1)).one()
                scratch_id = s.scalars(select(scratch.id).limit(1)).one()

            others = models[:-1]
            per_table: dict[str, int] = {}
            stmts: dict[str, list[Any]] = {}
            t_setup = time.perf_counter()
            for k in range(args.queries - 1):
                m = others[k % len(others)]
                stmt = query_for(m, k)
                live = db.live(stmt)
                live.subscribe(lambda rows: None)
                lives.append(live)
                per_table[m.__tablename__] = per_table.get(m.__tablename__, 0) + 1
                stmts.setdefault(m.__tablename__, []).append(stmt)
            probe_stmt = select(probe_model.value).where(probe_model.id == bindparam("pid"))
            params = {"pid": probe_id}
            got: list[float] = []
            probe = db.live(probe_stmt, params=params)
            probe.subscribe(lambda rows: got.append(time.perf_counter()))
            lives.append(probe)
            per_table[probe_model.__tablename__] = 1
            t_setup = time.perf_counter() - t_setup

            # 1. one commit touching one table
            target = others[0]
            readers = per_table[target.__tablename__]
            before = [lv.run_count for lv in lives]
            last_cb: list[float] = [0.0]
            for lv in lives[: args.queries - 1]:
                if lv.tables == frozenset({target.__tablename__}):
                    lv.subscribe(lambda rows: last_cb.__setitem__(0, time.perf_counter()))
            with Session(engine) as s:
                row = s.scalars(select(target).limit(1)).one()
                row.value += 100
                row.label = "changed"
                s.commit()
            reran = sum(lv.run_count - b for lv, b in zip(lives, before, strict=True))
            batch_delay = last_cb[0] - committed_at[0]
            batch_direct = sum(direct(engine, st) for st in stmts[target.__tablename__])

            # 2. commit-to-callback delay of the probe vs running it directly, interleaved:
            # after a commit to the scratch table (read by no live query), the same kind of
            # commit, and again right after that (warm)
            delays: list[float] = []
            cold: list[float] = []
            warm: list[float] = []
            for _ in range(20):
                direct(engine, probe_stmt, params)
            gc.collect()
            gc.disable()
            try:
                for i in range(args.commits):
                    with Session(engine) as s:
                        s.get_one(scratch, scratch_id).value = i
                        s.commit()
                    cold.append(direct(engine, probe_stmt, params))
                    warm.append(direct(engine, probe_stmt, params))
                    n = len(got)
                    with Session(engine) as s:
                        s.get_one(probe_model, probe_id).value = 1000 + i
                        s.commit()
                    if len(got) != n + 1:
                        raise SystemExit("the probe's callback did not run once per commit")
                    delays.append(got[-1] - committed_at[0])
            finally:
                gc.enable()
        finally:
            for lv in lives:
                lv.close()
            db.close()
            engine.dispose()
            event.remove(Session, "after_commit", mark)

    med_delay = statistics.median(delays)
    med_cold = statistics.median(cold)
    med_warm = statistics.median(warm)
    ratio = med_delay / med_cold
    print(f"{len(lives):,} live queries over {len(per_table)} tables "
          f"({min(per_table.values())}-{max(per_table.values())} per table; the probe alone "
          f"on {probe_model.__tablename__}); {args.rows} rows per table; set up in "
          f"{t_setup:.2f}s")
    print(f"\n1. one commit touching {target.__tablename__}")
    print(f"   re-ran: {reran}   expected (queries reading {target.__tablename__}): {readers}"
          f"   {'OK' if reran == readers else 'MISMATCH'}")
    print(f"   last callback after {batch_delay * 1e3:.2f} ms; running those {readers} "
          f"queries directly: {batch_direct * 1e3:.2f} ms ({batch_delay / batch_direct:.2f}x)")
    sql = " ".join(str(probe_stmt).split())
    print(f"\n2. probe query ({sql}), {args.commits} commits, medians")
    print(f"   delay from commit to callback:                  {med_delay * 1e6:7.1f} us")
    print(f"   direct run right after a commit (same state):   {med_cold * 1e6:7.1f} us")
    print(f"   direct run again (warm caches):                 {med_warm * 1e6:7.1f} us")
    print(f"   ratio delay / direct after a commit: {ratio:.2f}x   target: <= {TARGET}x   "
          f"{'OK' if ratio <= TARGET else 'ABOVE TARGET'}")
    print(f"   ratio delay / warm direct run:       {med_delay / med_warm:.2f}x")
    p90 = statistics.quantiles(delays, n=10)[-1]
    print(f"   (p90 delay {p90 * 1e6:.1f} us; the original DimpleDb polls every 100 ms)")
    if reran != readers:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
