"""Sync throughput: push, pull + merge, and the raw cost of storing the same information.

Device A writes 20,000 rows x 5 attributes (100,000 changes, in 20 transactions); its sync
pushes them as one X25519-encrypted bundle to a local folder; device B's sync pulls,
decrypts, validates and merges them. In the same run, the raw cost of storing the same
information is measured with plain ``sqlite3``: ``executemany`` of the 20,000 final rows
into a table of the same columns plus the 100,000 change records into a 7-column table
(primary key on the change id, one index on entity type, entity id, attribute, change id),
in one transaction on a file. Then: the cost of signatures (the same push and pull+merge
with device keys, every file signed and checked, against age X25519 keys, in alternating
rounds); pulling 1,000 changes into a database whose log already holds 1,000,000 versus
into an empty one; and the storage requests of a no-op sync.

    python benchmarks/sync.py [--rows 20000] [--big-log 1000000] [--signing-rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog, schema
from dimpledb_sa.sync.crypto import generate_identity


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    title: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)
    priority: Mapped[int] = mapped_column(default=0)
    note: Mapped[str | None]


def device(folder: Path, name: str, remote: Path, key: str, **kw: Any) -> dimple.DimpleDb:
    engine = create_engine(f"sqlite:///{folder / name}.db")
    db = dimple.DimpleDb(engine, Base, remote=str(remote), identity=key, **kw)
    db.create_all()
    return db


def write_rows(db: dimple.DimpleDb, rows: int, per_tx: int = 1000, tag: str = "") -> None:
    with Session(db.engine) as s:
        for start in range(0, rows, per_tx):
            s.add_all(
                Item(title=f"item {tag}{i}", done=i % 2 == 0, priority=i % 7,
                     note=f"note {i} " * 3)
                for i in range(start, min(rows, start + per_tx))
            )
            s.commit()


def raw_cost(folder: Path, rows: int, attrs: int = 5) -> float:
    """Plain sqlite3: the final rows plus one record per change, one transaction."""
    path = folder / f"raw-{time.monotonic_ns()}.db"
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE item (id TEXT PRIMARY KEY, title TEXT, done INTEGER, priority INTEGER,
                           note TEXT);
        CREATE TABLE change (id TEXT PRIMARY KEY, transaction_id TEXT, entity_type TEXT,
                             entity_id TEXT, attribute TEXT, old_value TEXT, new_value TEXT);
        CREATE INDEX ix_change ON change (entity_type, entity_id, attribute, id);
        """
    )
    ids = [dimple.new_id() for _ in range(rows)]
    items = [(ids[i], f"item {i}", i % 2, i % 7, f"note {i} " * 3) for i in range(rows)]
    clock = dimple.new_id
    names = ("id", "title", "done", "priority", "note")
    changes = [
        (clock(), ids[0], "item", item[0], names[k], None, str(item[k]))
        for item in items for k in range(attrs)
    ]
    t0 = time.perf_counter()
    with con:
        con.executemany("INSERT INTO item VALUES (?,?,?,?,?)", items)
        con.executemany("INSERT INTO change VALUES (?,?,?,?,?,?,?)", changes)
    elapsed = time.perf_counter() - t0
    con.close()
    os.remove(path)
    return elapsed


def fill_log(db: dimple.DimpleDb, changes: int) -> None:
    """Put ``changes`` changes (inserts of 5 attributes) in db's log and table, fast."""
    per = 5
    batch = 20_000
    tt = db.tracked["item"]
    enc = tt.codecs
    with db.engine.begin() as conn:
        for start in range(0, changes // per, batch):
            groups: list[list[Any]] = []
            values: list[dict[str, Any]] = []
            for i in range(start, min(changes // per, start + batch)):
                v = {"id": dimple.new_id(), "title": f"old {i}", "done": False,
                     "priority": i % 7, "note": None}
                values.append(v)
                groups.append(["item", v["id"], list(v), [None] * 5,
                               [enc[c].encode(x) for c, x in v.items()]])
            conn.execute(tt.table.insert(), values)
            changelog.write_local(db.replica, conn, groups)
        changelog.fold(conn)  # a long-lived log is folded (every 256 commits)
        # as if pulled from another device: this database's sync must only pull (a log of
        # its own that its remote does not list yet would be pushed in full)
        conn.execute(update(schema.transactions).values(author=dimple.new_id()))


def timed_sync(db: dimple.DimpleDb) -> tuple[float, dimple.SyncReport]:
    t0 = time.perf_counter()
    report = db.sync()
    return time.perf_counter() - t0, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--big-log", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--signing-rounds", type=int, default=5)
    args = ap.parse_args()
    key, _ = generate_identity()
    n_changes = args.rows * 5
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        push_s: list[float] = []
        pull_s: list[float] = []
        raw_s: list[float] = []
        noop: dict[str, int] = {}
        for r in range(args.repeat):
            remote = folder / f"remote-{r}"
            a = device(folder, f"a{r}", remote, key)
            b = device(folder, f"b{r}", remote, key)
            write_rows(a, args.rows)
            t, rep = timed_sync(a)
            assert rep.pushed == 20 or rep.pushed == -(-args.rows // 1000), rep
            push_s.append(t)
            t, rep = timed_sync(b)
            assert rep.applied == n_changes, rep
            pull_s.append(t)
            raw_s.append(raw_cost(folder, args.rows))
            _, rep = timed_sync(b)
            noop = rep.requests
            a.close()
            b.close()
        push, pull, raw = min(push_s), min(pull_s), min(raw_s)
        print(f"{n_changes:,} changes ({args.rows:,} rows x 5 attributes), local folder, "
              f"X25519, best of {args.repeat}")
        print(f"  push            {push:7.3f}s  {n_changes / push:10,.0f} changes/s")
        print(f"  pull + merge    {pull:7.3f}s  {n_changes / pull:10,.0f} changes/s"
              "   target >= 100,000/s")
        print(f"  raw sqlite3     {raw:7.3f}s  (final rows + change records, one index)")
        print(f"  pull+merge / raw = {pull / raw:.2f}   target <= 2")
        print(f"  no-op sync requests (one other author): {noop}")

        signing(folder, args, key)

        # 1,000 changes into an empty log vs into a log of --big-log changes
        small, big = [], []
        for r in range(args.repeat):
            remote = folder / f"remote-big-{r}"
            src = device(folder, f"src{r}", remote, key)
            empty = device(folder, f"empty{r}", remote, key)
            full = device(folder, f"full{r}", remote, key)
            if r == 0:
                t0 = time.perf_counter()
                fill_log(full, args.big_log)
                print(f"\n  filled a log with {args.big_log:,} changes in "
                      f"{time.perf_counter() - t0:.1f}s")
                full_path = folder / "full0.db"
            else:
                full.close()
                import shutil

                shutil.copy(full_path, folder / f"full{r}.db")
                full = device(folder, f"full{r}", remote, key)
            write_rows(src, 200, tag=f"r{r}-")
            src.sync()
            t, rep = timed_sync(empty)
            assert rep.applied == 1000, rep
            small.append(t)
            t, rep = timed_sync(full)
            assert rep.applied == 1000, rep
            big.append(t)
            for d in (src, empty, full):
                d.close()
        s, b_ = statistics.median(small), statistics.median(big)
        print(f"  pull 1,000 changes: empty log {s * 1000:.1f} ms, "
              f"{args.big_log:,}-change log {b_ * 1000:.1f} ms, "
              f"ratio {b_ / s:.2f}   target <= 1.5")


def signing(folder: Path, args: argparse.Namespace, age_key: str) -> None:
    """Push and pull+merge with device keys (signed, checked) and with age keys, alternating
    round by round; medians and their ratios."""
    (sa, pa), (sb, pb) = dimple.generate_device_key(), dimple.generate_device_key()
    times: dict[str, dict[str, list[float]]] = {k: {"push": [], "pull": []}
                                                 for k in ("age", "signed")}
    for r in range(args.signing_rounds):
        for kind in ("age", "signed") if r % 2 == 0 else ("signed", "age"):
            remote = folder / f"remote-sig-{kind}-{r}"
            if kind == "age":
                a = device(folder, f"sa-{kind}{r}", remote, age_key)
                b = device(folder, f"sb-{kind}{r}", remote, age_key)
            else:
                a = device(folder, f"sa-{kind}{r}", remote, sa, recipients=[pb])
                b = device(folder, f"sb-{kind}{r}", remote, sb, recipients=[pa])
            write_rows(a, args.rows)
            t, _ = timed_sync(a)
            times[kind]["push"].append(t)
            t, rep = timed_sync(b)
            assert rep.applied == args.rows * 5 and not rep.errors, rep
            times[kind]["pull"].append(t)
            a.close()
            b.close()
    print(f"\n  signatures, {args.rows * 5:,} changes, median of {args.signing_rounds} "
          "alternating rounds (device keys: every file signed and checked; age X25519: none)")
    for step in ("push", "pull"):
        age_t = statistics.median(times["age"][step])
        sig_t = statistics.median(times["signed"][step])
        label = "push" if step == "push" else "pull + merge"
        print(f"  {label:14}  age {age_t:7.3f}s   signed {sig_t:7.3f}s   "
              f"ratio {sig_t / age_t:.3f}   target <= 1.10")


if __name__ == "__main__":
    main()
