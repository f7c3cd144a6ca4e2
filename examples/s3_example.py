"""Sync through S3 (or any S3-compatible store): two devices, one bucket.

Configuration comes from the environment; nothing is hard-coded:

- ``DIMPLEDB_S3_BUCKET`` (required): an existing bucket (buckets are never created).
- ``DIMPLEDB_S3_ENDPOINT``: the endpoint URL of a non-AWS store (MinIO, R2, Garage, ...).
- ``DIMPLEDB_S3_PREFIX``: the folder inside the bucket (default ``dimpledb-example``,
  plus a new sub-folder per run when there is no ``DIMPLEDB_IDENTITY``).
- Credentials as boto reads them: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and
  ``AWS_DEFAULT_REGION``), or a profile / instance role.
- ``DIMPLEDB_IDENTITY``: an age secret key (``dimpledb keygen``); without one, a new key is
  made for this run (data written with another key cannot be read: a sync says which
  author it could not decrypt).

Two SQLite files in a temporary folder play two devices: one adds a todo and syncs, the
other syncs and prints it. Run ``python examples/s3_example.py``; ``dimpledb inspect
s3://BUCKET/PREFIX -o endpoint_url=...`` then shows what it wrote.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from models import Base, Todo
from sqlalchemy import create_engine, select

import dimpledb_sa as dimple

__all__ = ["main", "settings"]


def settings() -> tuple[str, dict[str, Any]] | None:
    """The remote URL and storage options from the environment; ``None`` if incomplete."""
    bucket = os.environ.get("DIMPLEDB_S3_BUCKET", "").strip()
    if not bucket:
        return None
    prefix = os.environ.get("DIMPLEDB_S3_PREFIX", "dimpledb-example").strip("/")
    if not os.environ.get("DIMPLEDB_IDENTITY"):
        prefix = f"{prefix}/{dimple.new_id()}"  # this run's new key reads only this run
    options: dict[str, Any] = {}
    endpoint = os.environ.get("DIMPLEDB_S3_ENDPOINT")
    if endpoint:
        options["endpoint_url"] = endpoint
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        options["client_kwargs"] = {"region_name": region}
    return f"s3://{bucket}/{prefix}", options


def main() -> int:
    found = settings()
    if found is None:
        print("\n\n".join(__doc__.split("\n\n")[1:3]), file=sys.stderr)
        print("\nerror: set DIMPLEDB_S3_BUCKET (and DIMPLEDB_S3_ENDPOINT for a non-AWS "
              "store, plus credentials)", file=sys.stderr)
        return 2
    remote, options = found
    key = os.environ.get("DIMPLEDB_IDENTITY")
    if not key:
        key, public = dimple.generate_identity()
        print(f"no DIMPLEDB_IDENTITY: using a new key for this run (public key {public})")
    print(f"remote: {remote}" + (f" at {options['endpoint_url']}" if "endpoint_url" in options
                                 else ""))
    with tempfile.TemporaryDirectory(prefix="dimpledb-s3-") as tmp:
        devices = []
        for name in ("laptop", "phone"):
            engine = create_engine(f"sqlite:///{Path(tmp) / name}.db")
            db = dimple.DimpleDb(engine, Base, remote=remote, storage_options=options,
                                 identity=key)
            db.create_all()
            devices.append((name, db, engine))
        (_, laptop, _), (_, phone, _) = devices
        try:
            with laptop.sessionmaker()() as s:
                s.add(Todo(text="synced through S3"))
                report = s.sync()
            print(f"laptop: pushed {report.pushed} transaction(s)")
            report = phone.sync()
            print(f"phone: pulled {report.pulled} transaction(s), applied {report.applied} "
                  "change(s)")
            with phone.sessionmaker()() as s:
                print("phone has:", [t.text for t in s.scalars(select(Todo))])
        except (OSError, dimple.SyncError) as e:
            print(f"error: cannot sync through {remote}: {e}", file=sys.stderr)
            return 1
        finally:
            for _, db, engine in devices:
                db.close()
                engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
