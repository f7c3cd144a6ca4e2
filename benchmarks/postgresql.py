"""PostgreSQL beside SQLite: capture overhead, and pull + merge throughput into each.

Starts its own throw-away PostgreSQL server (``tests/pgserver.py``: ``initdb`` + ``pg_ctl`` in
a temporary folder, 127.0.0.1 on a free port, fsync off) and measures, for SQLite files and
for PostgreSQL databases side by side:

1. capture overhead: the scenarios of ``benchmarks/capture.py`` ((a) inserts in one flush,
   (b) updates in one flush, (c) updates after commit), tracked vs plain SQLAlchemy, each
   side on a fresh database, alternating order between rounds; printed as the median of the
   per-round wall-clock ratios, the CPU ratio, and the ratio of the best times;
2. pull + merge: device A (SQLite) writes ``--rows`` rows x 5 attributes and pushes them to
   a local folder (X25519); a fresh device B on SQLite and one on PostgreSQL each pull and
   merge them; changes/s, best of ``--repeat``.

    python benchmarks/postgresql.py [--rounds 7] [--sizes 1000] [--rows 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import capture  # noqa: E402  (benchmarks/capture.py: the same scenarios)
import pgserver  # noqa: E402  (tests/pgserver.py: the same server as the tests')
import sync  # noqa: E402  (benchmarks/sync.py: the same rows)

import dimpledb_sa as dimple  # noqa: E402
from dimpledb_sa.sync.crypto import generate_identity  # noqa: E402

EngineMaker = Callable[[str], tuple[Engine, Callable[[], None]]]


class Setup:
    """capture.Setup on any engine: a fresh database, tracked or not."""

    def __init__(self, tracked: bool, n: int, make: EngineMaker) -> None:
        self.Base, self.Todo = capture.make_model()
        self.engine, self._drop = make(f"{'t' if tracked else 'u'}{n}")
        self.db: dimple.DimpleDb | None = None
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
        self._drop()


def run_side(tracked: bool, n: int, make: EngineMaker) -> dict[str, capture.Timer]:
    s = Setup(tracked, n, make)
    try:
        out: dict[str, capture.Timer] = {}
        for key, fn in capture.STEPS:
            gc.collect()
            out[key] = fn(s)  # type: ignore[arg-type]
        return out
    finally:
        s.close()


def capture_table(n: int, rounds: int, make: EngineMaker) -> list[str]:
    times: dict[str, tuple[list[Any], list[Any]]] = {k: ([], []) for k, _ in capture.STEPS}
    run_side(True, min(n, 200), make)  # warm-up
    run_side(False, min(n, 200), make)
    for r in range(rounds):
        for tracked in ((False, True) if r % 2 == 0 else (True, False)):
            for k, t in run_side(tracked, n, make).items():
                times[k][1 if tracked else 0].append(t)
    lines = []
    for k, (u, t) in times.items():
        wall = statistics.median(b.wall / a.wall for a, b in zip(u, t, strict=True))
        cpu = statistics.median(b.cpu / a.cpu for a, b in zip(u, t, strict=True))
        bu, bt = min(x.wall for x in u), min(x.wall for x in t)
        lines.append(f"({k}) {capture.LABELS[k]:41} {bu:9.4f} {bt:9.4f} {wall:7.2f} "
                     f"{cpu:6.2f} {bt / bu:6.2f} <= {capture.TARGETS[k]}")
    return lines


def pull_merge(rows: int, repeat: int, makers: dict[str, EngineMaker], folder: Path
               ) -> dict[str, float]:
    key, _ = generate_identity()
    best: dict[str, float] = {}
    for r in range(repeat):
        remote = folder / f"remote-{r}"
        a = dimple.DimpleDb(create_engine(f"sqlite:///{folder / f'a{r}.db'}"), sync.Base,
                            remote=str(remote), identity=key)
        a.create_all()
        sync.write_rows(a, rows)
        a.sync()
        for kind, make in makers.items():
            engine, drop = make(f"b{r}")
            b = dimple.DimpleDb(engine, sync.Base, remote=str(remote), identity=key)
            b.create_all()
            t, rep = sync.timed_sync(b)
            assert rep.applied == rows * 5 and not rep.errors, rep
            best[kind] = min(best.get(kind, t), t)
            b.close()
            engine.dispose()
            drop()
        a.close()
        a.engine.dispose()
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sizes", default="1000")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    try:
        server = pgserver.start()
    except pgserver.PgUnavailable as exc:
        print(f"PostgreSQL benchmark skipped: {exc}")
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)

            def sqlite_db(name: str) -> tuple[Engine, Callable[[], None]]:
                path = folder / f"{name}-{time.monotonic_ns()}.db"
                return create_engine(f"sqlite:///{path}"), lambda: path.unlink()

            def pg_db(name: str) -> tuple[Engine, Callable[[], None]]:
                url = server.create_database(name)
                return create_engine(url), lambda: server.drop_database(url)

            makers: dict[str, EngineMaker] = {"sqlite": sqlite_db, "postgresql": pg_db}
            for n in (int(x) for x in args.sizes.split(",")):
                print(f"\ncapture, {n:,} rows, {args.rounds} rounds. Seconds: the best of each "
                      "side; ratios tracked/untracked: median of rounds (wall, cpu), best.")
                print(f"  {'':10} {'scenario':45} {'untracked':>9} {'tracked':>9} "
                      f"{'median':>7} {'cpu':>6} {'best':>6} target")
                for kind, make in makers.items():
                    for line in capture_table(n, args.rounds, make):
                        print(f"  {kind:10} {line}")
            best = pull_merge(args.rows, args.repeat, makers, folder)
            n_changes = args.rows * 5
            print(f"\npull + merge of {n_changes:,} changes ({args.rows:,} rows x 5 "
                  f"attributes) from a local folder, X25519, best of {args.repeat}")
            for kind, t in best.items():
                print(f"  into {kind:10} {t:7.3f}s  {n_changes / t:10,.0f} changes/s"
                      "   target >= 50,000/s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
