"""Bootstrap of a new device: full replay of every bundle vs the newest snapshot.

A writer inserts ``--rows`` rows in bundles of ``--batch``, then updates every row twice
(each round its own bundles), so the remote holds three changes per attribute it changes.
Then a new device syncs (full replay); the writer compacts; another new device syncs
(bootstrap from the snapshot). Printed: wall-clock seconds of each first sync, changes
logged on each new device, and bundles left on the remote. Plaintext remote on a local
folder (encryption costs the same per byte on both sides).

    python benchmarks/bootstrap.py [--rows 20000] [--batch 2000]

:func:`bootstrap` is the function to call from another benchmark (``scale.py``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "row"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    n: Mapped[int] = mapped_column(default=0)


def _db(folder: Path, name: str) -> dimple.DimpleDb:
    db = dimple.DimpleDb(create_engine(f"sqlite:///{folder / name}.db"), Base,
                         remote=str(folder / "remote"), encryption=False)
    db.create_all()
    return db


def _logged(db: dimple.DimpleDb) -> int:
    with db.engine.connect() as conn:
        return len(changelog.expand_all(changelog.all_rows(conn)))


def _timed_sync(db: dimple.DimpleDb) -> float:
    start = time.perf_counter()
    db.sync()
    return time.perf_counter() - start


def bootstrap(folder: Path, rows: int = 20_000, batch: int = 2_000) -> dict[str, Any]:
    """Build the history in ``folder`` and measure both bootstraps (see the module doc)."""
    writer = _db(folder, "writer")
    make = writer.sessionmaker()
    for start in range(0, rows, batch):
        with make() as s:
            s.add_all(Row(text=f"r{k}") for k in range(start, min(rows, start + batch)))
            s.commit()
        writer.sync()
    for rnd in (1, 2):
        with make() as s:
            ids = list(s.scalars(select(Row.id)))
        for start in range(0, len(ids), batch):
            with make() as s:
                for obj in s.scalars(select(Row).where(Row.id.in_(ids[start:start + batch]))):
                    obj.n = rnd
                s.commit()
            writer.sync()
    replay = _db(folder, "replay")
    t_replay = _timed_sync(replay)
    removed = writer.compact()
    fresh = _db(folder, "fresh")
    t_snapshot = _timed_sync(fresh)
    with Session(fresh.engine) as s:
        same = s.scalar(select(func.count()).select_from(Row).where(Row.n == 2)) == rows
    out = {"rows": rows, "replay_s": t_replay, "snapshot_s": t_snapshot,
           "replay_changes": _logged(replay), "snapshot_changes": _logged(fresh),
           "bundles_removed": removed, "same_rows": same}
    for db in (writer, replay, fresh):
        db.close()
        db.engine.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=2_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = bootstrap(Path(tmp), args.rows, args.batch)
    print(f"{r['rows']} rows: full replay {r['replay_s']:.2f}s ({r['replay_changes']} changes "
          f"logged), from the snapshot {r['snapshot_s']:.2f}s ({r['snapshot_changes']} "
          f"changes logged); {r['bundles_removed']} bundles removed; "
          f"same rows: {r['same_rows']}; ratio {r['replay_s'] / r['snapshot_s']:.2f}x")


if __name__ == "__main__":
    main()
