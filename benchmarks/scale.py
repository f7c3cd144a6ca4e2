"""Sync at scale: stored bundle sizes, remote bytes per change, peak memory and throughput of
push and pull + merge as the history grows.

For each size (in changes): device A writes rows x 6 attributes in 1,000-row transactions;
then, each in its own process (so each peak RSS is its own), A's sync pushes them
(X25519, local folder) and a fresh device B's sync pulls and merges them. Printed side by
side: the largest stored bundle (limit 16 MiB), remote bytes per change (target <= 60), the
peak RSS of push and of pull (target <= 250 MB, and flat within 1.3x across sizes) and the
pull + merge throughput (target: at the largest size at least that at the smallest).

Then, at the largest size: A compacts (a snapshot of its 200,000 rows), a fresh device C
bootstraps from it (its own process), against the raw cost of storing the same information
with plain ``sqlite3`` ``executemany`` (the final rows plus one record per attribute's
winning change) and against B's full replay. Last, the local footprint: 100,000 rows
(insert-only) written tracked against the same rows written untracked, with the full
history and after ``prune_history`` of everything older than now (each after ``VACUUM``).

    python benchmarks/scale.py [--sizes 100000,1200000] [--per-tx 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa.sync.crypto import generate_identity

ATTRS = 6
MIB = 1024 * 1024


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    title: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)
    priority: Mapped[int] = mapped_column(default=0)
    note: Mapped[str | None]
    score: Mapped[float] = mapped_column(default=0.0)


def device(path: Path, remote: Path, key: str) -> dimple.DimpleDb:
    db = dimple.DimpleDb(create_engine(f"sqlite:///{path}"), Base, remote=str(remote),
                         identity=key)
    db.create_all()
    return db


def write(path: Path, remote: Path, key: str, rows: int, per_tx: int) -> None:
    db = device(path, remote, key)
    with Session(db.engine) as s:
        for start in range(0, rows, per_tx):
            s.add_all(Item(title=f"item {i}", done=i % 2 == 0, priority=i % 7,
                           note=f"note {i} " * 3, score=i / 7)
                      for i in range(start, min(rows, start + per_tx)))
            s.commit()
    db.close()


def step(args: argparse.Namespace) -> None:
    """One sync in this process; prints its figures as JSON."""
    db = device(Path(args.db), Path(args.remote), args.key)
    t0 = time.perf_counter()
    if args.compact:
        removed = db.compact()
        pushed = applied = 0
    else:
        report = db.sync()
        removed, pushed, applied = 0, report.pushed, report.applied
    elapsed = time.perf_counter() - t0
    db.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"seconds": elapsed, "rss": rss, "pushed": pushed,
                      "applied": applied, "removed": removed}))


def run_step(folder: Path, db: Path, remote: Path, key: str, *extra: str
             ) -> dict[str, float]:
    root = str(Path(__file__).resolve().parents[1])  # this checkout's package, in any cwd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, __file__, "--step", "--db", str(db), "--remote",
                          str(remote), "--key", key, *extra], capture_output=True, text=True,
                         check=True, cwd=folder, env=env)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(folder: Path, changes: int, per_tx: int) -> dict[str, Any]:
    key, _ = generate_identity()
    rows = changes // ATTRS
    remote = folder / f"remote-{changes}"
    a, b = folder / f"a-{changes}.db", folder / f"b-{changes}.db"
    t0 = time.perf_counter()
    write(a, remote, key, rows, per_tx)
    wrote = time.perf_counter() - t0
    push = run_step(folder, a, remote, key)
    pull = run_step(folder, b, remote, key)
    assert pull["applied"] == rows * ATTRS, pull
    sizes = [p.stat().st_size for p in remote.rglob("*") if p.is_file()]
    bundles = [p.stat().st_size for p in remote.rglob("*_*.json") if p.is_file()]
    return {"changes": rows * ATTRS, "write_s": wrote, "a": str(a), "remote_dir": str(remote),
            "key": key, "push_s": push["seconds"],
            "push_rss": push["rss"], "pull_s": pull["seconds"], "pull_rss": pull["rss"],
            "bundles": len(bundles), "max_bundle": max(bundles), "remote": sum(sizes)}


def report(results: list[dict[str, Any]]) -> None:
    print(f"{'changes':>10} {'bundles':>8} {'max bundle':>11} {'B/change':>9} "
          f"{'push s':>8} {'push RSS':>9} {'pull s':>8} {'pull RSS':>9} {'pull ch/s':>10}")
    for r in results:
        print(f"{r['changes']:>10,.0f} {r['bundles']:>8.0f} {r['max_bundle'] / MIB:>8.2f} MiB "
              f"{r['remote'] / r['changes']:>9.1f} {r['push_s']:>8.1f} "
              f"{r['push_rss'] / 1e6:>6.0f} MB {r['pull_s']:>8.1f} {r['pull_rss'] / 1e6:>6.0f} MB "
              f"{r['changes'] / r['pull_s']:>10,.0f}")
    lo, hi = results[0], results[-1]
    print(f"targets: every bundle <= 16 MiB: {max(r['max_bundle'] for r in results) <= 16 * MIB};"
          f" bytes/change <= 60: {all(r['remote'] / r['changes'] <= 60 for r in results)};"
          f" RSS <= 250 MB: {all(max(r['push_rss'], r['pull_rss']) <= 250e6 for r in results)}")
    if len(results) > 1:
        print(f"  push RSS ratio {hi['push_rss'] / lo['push_rss']:.2f}, pull RSS ratio "
              f"{hi['pull_rss'] / lo['pull_rss']:.2f} (target <= 1.3); pull throughput "
              f"ratio {(hi['changes'] / hi['pull_s']) / (lo['changes'] / lo['pull_s']):.2f} "
              "(target >= 1)")


def raw_store(folder: Path, rows: int) -> float:
    """Seconds plain sqlite3 takes to store ``rows`` final rows and one record per
    attribute's winning change (change id, transaction id, entity, attribute)."""
    path = folder / "raw.db"
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE item (id TEXT PRIMARY KEY, title TEXT, done INTEGER, "
                 "priority INTEGER, note TEXT, score REAL)")
    conn.execute("CREATE TABLE win (id TEXT PRIMARY KEY, tx TEXT, entity_type TEXT, "
                 "entity_id TEXT, attribute TEXT)")
    ids = [dimple.new_id() for _ in range(rows)]
    conn.executemany("INSERT INTO item VALUES (?, ?, ?, ?, ?, ?)",
                     ((ids[i], f"item {i}", i % 2 == 0, i % 7, f"note {i} " * 3, i / 7)
                      for i in range(rows)))
    attrs = ("id", "title", "done", "priority", "note", "score")
    conn.executemany("INSERT INTO win VALUES (?, ?, 'item', ?, ?)",
                     ((dimple.new_id(), ids[i // 1000 * 1000], ids[i], a)
                      for i in range(rows) for a in attrs))
    conn.commit()
    conn.close()
    return time.perf_counter() - t0


def bootstrap(folder: Path, big: dict[str, Any]) -> None:
    """Compact A, bootstrap C from the snapshot; print it against raw and the replay."""
    rows = int(big["changes"]) // ATTRS
    remote, key = Path(str(big["remote_dir"])), str(big["key"])
    comp = run_step(folder, Path(str(big["a"])), remote, key, "--compact")
    snaps = [p.stat().st_size for p in remote.rglob("snapshot_*.json")]
    c = folder / "c.db"
    boot = run_step(folder, c, remote, key)
    assert boot["applied"] == rows * ATTRS, boot
    raw = raw_store(folder, rows)
    print(f"\nbootstrap of {rows:,} rows from a snapshot ({max(snaps) / MIB:.1f} MiB, "
          f"{max(snaps) / (rows * ATTRS):.1f} B/change; compact {comp['seconds']:.1f} s, "
          f"{comp['rss'] / 1e6:.0f} MB):")
    print(f"  bootstrap {boot['seconds']:.1f} s, RSS {boot['rss'] / 1e6:.0f} MB; raw sqlite3 "
          f"{raw:.1f} s; full replay {big['pull_s']:.1f} s")
    print(f"  bootstrap/raw {boot['seconds'] / raw:.2f} (target <= 2); bootstrap/replay "
          f"{boot['seconds'] / big['pull_s']:.2f} (target <= 0.33); RSS <= 250 MB: "
          f"{boot['rss'] <= 250e6}")


def _vacuumed_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    conn.close()
    return path.stat().st_size


def footprint(folder: Path, rows: int, per_tx: int) -> None:
    """The tracked database's size against untracked, full history and pruned."""
    key, _ = generate_identity()
    tracked = folder / "fp-tracked.db"
    write(tracked, folder / "fp-remote", key, rows, per_tx)
    plain = folder / "fp-plain.db"
    engine = create_engine(f"sqlite:///{plain}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        for start in range(0, rows, per_tx):
            s.add_all(Item(title=f"item {i}", done=i % 2 == 0, priority=i % 7,
                           note=f"note {i} " * 3, score=i / 7)
                      for i in range(start, min(rows, start + per_tx)))
            s.commit()
    engine.dispose()
    db = device(tracked, folder / "fp-remote", key)
    db.sync()  # the log folded (as any push does); nothing is pruned before it is pushed
    db.close()
    full = _vacuumed_size(tracked)
    db = device(tracked, folder / "fp-remote", key)
    pruned_n = db.prune_history(timedelta(0))
    db.close()
    pruned, base = _vacuumed_size(tracked), _vacuumed_size(plain)
    print(f"\nlocal footprint, {rows:,} rows insert-only: untracked {base / MIB:.1f} MiB; "
          f"full history {full / MIB:.1f} MiB ({full / base:.2f}x, target <= 2.5); after "
          f"prune_history(0) ({pruned_n} changes dropped) {pruned / MIB:.1f} MiB "
          f"({pruned / base:.2f}x, target <= 1.5)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1200000", help="changes, comma-separated")
    ap.add_argument("--per-tx", type=int, default=1000, help="rows per transaction")
    ap.add_argument("--step", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compact", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-bootstrap", action="store_true", help="skip the bootstrap run")
    ap.add_argument("--no-footprint", action="store_true", help="skip the footprint run")
    ap.add_argument("--footprint-rows", type=int, default=100_000,
                    help="rows of the footprint run")
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--remote", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        step(args)
        return
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            results.append(measure(Path(tmp), n, args.per_tx))
            print(f"... {n:,} changes done", file=sys.stderr, flush=True)
        report(results)
        if not args.no_bootstrap:
            bootstrap(Path(tmp), results[-1])
        if not args.no_footprint:
            footprint(Path(tmp), args.footprint_rows, args.per_tx)


if __name__ == "__main__":
    main()
