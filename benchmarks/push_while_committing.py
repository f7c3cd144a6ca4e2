"""Commits during a big push: how long does the application wait?

A device holds 100,000 unpushed changes (20,000 rows x 5 attributes, in 20 transactions).
It is synced (X25519, to a local folder unless ``--remote``) by another thread of the app
(``--pusher thread``: the two share Python's GIL) or by another process (``--pusher
process``: as ``dimpledb sync`` would; only the database is shared), while the app's main
thread commits one new row through the ORM every 50 ms, from before the push starts until
it ends.

Printed: the push's duration and bundles, and how long each commit took (the whole
``session.commit()``, capture included): median, p99 and max, and how many commits ran
during the push; with the pusher in another process, also how long its longest write
transaction held SQLite's write lock (from its first statement to its commit: what bounds
a commit's wait for that lock; the push's reads run statement by statement, each fetched
at once; the rest of a wait is CPU shared with the push, and the GIL in the thread case).
For comparison, the same commits are first measured with no push running
(``--no-baseline`` skips it). SQLite's default journal (``--journal delete``) is the hard
case: there a reader also delays a commit; ``--journal wal`` is measured too.

    python benchmarks/push_while_committing.py [--rows 20000] [--remote URL]
        [--journal delete|wal|both] [--pusher thread|process|both]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dimpledb_sa as dimple
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


def open_db(path: Path, remote: str, key: str, journal: str) -> dimple.DimpleDb:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _journal(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA journal_mode={journal}")

    db = dimple.DimpleDb(engine, Base, remote=remote, identity=key)
    db.create_all()
    return db


def fill(db: dimple.DimpleDb, rows: int, per_tx: int = 1000) -> None:
    with Session(db.engine) as s:
        for start in range(0, rows, per_tx):
            s.add_all(Item(title=f"item {i}", done=i % 2 == 0, priority=i % 7,
                           note=f"note {i} " * 3)
                      for i in range(start, min(rows, start + per_tx)))
            s.commit()


def commit_every(db: dimple.DimpleDb, period: float, stop: threading.Event) -> list[float]:
    """Commit one row every ``period`` seconds until ``stop``; returns each commit's time."""
    waits: list[float] = []
    maker = db.sessionmaker()
    while not stop.is_set():
        t0 = time.perf_counter()
        with maker() as s:
            s.add(Item(title=f"app {len(waits)}"))
            s.commit()
        waits.append(time.perf_counter() - t0)
        time.sleep(max(0.0, period - (time.perf_counter() - t0)))
    return waits


def describe(waits: list[float]) -> str:
    ms = sorted(w * 1000 for w in waits)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (f"{len(ms):4d} commits: median {statistics.median(ms):6.1f} ms, p99 {p99:6.1f} ms, "
            f"max {ms[-1]:6.1f} ms")


PUSHER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from sqlalchemy import event
from push_while_committing import open_db
db = open_db(Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
longest = {"read": 0.0, "write": 0.0}  # the push's transactions: first statement to end

@event.listens_for(db.engine, "after_cursor_execute")
def _first(conn, *args):
    conn.info.setdefault("t0", time.perf_counter())

def _end(kind):
    def end(conn):
        t0 = conn.info.pop("t0", None)
        if t0 is not None:
            longest[kind] = max(longest[kind], time.perf_counter() - t0)
    return end

event.listen(db.engine, "commit", _end("write"))
event.listen(db.engine, "rollback", _end("read"))
time.sleep(0.2)
t0 = time.perf_counter()
report = db.sync()
print(json.dumps({"seconds": time.perf_counter() - t0, "pushed": report.pushed,
                  "puts": report.requests.get("put", 0), "longest": longest}))
"""


def push_in_thread(db: dimple.DimpleDb, stop: threading.Event) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def pusher() -> None:
        time.sleep(0.2)  # a few commits before the push starts
        t0 = time.perf_counter()
        report = db.sync()
        result.update(seconds=time.perf_counter() - t0, pushed=report.pushed,
                      puts=report.requests.get("put", 0))
        time.sleep(0.2)
        stop.set()

    result["thread"] = threading.Thread(target=pusher)
    result["thread"].start()
    return result


def push_in_process(path: Path, remote: str, key: str, journal: str,
                    stop: threading.Event) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-c", PUSHER, str(Path(__file__).parent),
                             str(path), remote, key, journal], stdout=subprocess.PIPE)
    result: dict[str, Any] = {}

    def wait() -> None:
        out, _ = proc.communicate()
        result.update(json.loads(out))
        stop.set()

    result["thread"] = threading.Thread(target=wait)
    result["thread"].start()
    return result


def run(folder: Path, rows: int, remote: str | None, journal: str, baseline: bool,
        pusher: str) -> None:
    key, _ = generate_identity()
    path = folder / f"{journal}-{pusher}.db"
    remote = remote or str(folder / f"remote-{journal}-{pusher}")
    db = open_db(path, remote, key, journal)
    fill(db, rows)
    if baseline:
        stop = threading.Event()
        timer = threading.Timer(2.0, stop.set)
        timer.start()
        print(f"  journal={journal:6s} no push            "
              f"{describe(commit_every(db, 0.05, stop))}")
    stop = threading.Event()
    result = (push_in_thread(db, stop) if pusher == "thread"
              else push_in_process(path, remote, key, journal, stop))
    waits = commit_every(db, 0.05, stop)
    result["thread"].join()
    print(f"  journal={journal:6s} push in a {pusher:7s}  {describe(waits)}")
    print(f"                 push: {result['pushed']} transactions, {rows * 5:,} changes in "
          f"{result['seconds']:.2f} s, {result['puts']} writes (bundles and manifests)")
    if "longest" in result:
        print(f"                 its longest write transaction held the lock "
              f"{result['longest']['write'] * 1000:.1f} ms")
    db.close()
    db.engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--remote", help="an fsspec URL (default: a local folder)")
    ap.add_argument("--journal", choices=["delete", "wal", "both"], default="both")
    ap.add_argument("--pusher", choices=["thread", "process", "both"], default="both")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    print(f"commits every 50 ms while {args.rows * 5:,} changes are pushed")
    with tempfile.TemporaryDirectory() as tmp:
        for journal in (["delete", "wal"] if args.journal == "both" else [args.journal]):
            for k, pusher in enumerate(["thread", "process"] if args.pusher == "both"
                                       else [args.pusher]):
                run(Path(tmp), args.rows, args.remote, journal,
                    not args.no_baseline and k == 0, pusher)


if __name__ == "__main__":
    main()
