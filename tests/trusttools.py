"""Helpers for the trust tests: the real OpenSSH and age tools, run as subprocesses.

``tool(name)`` is the path of ``ssh-keygen``, ``age`` or ``age-keygen``; the test is
skipped when it is missing, except in CI, where that fails. ``run`` runs one and returns
the completed process; ``allowed_signers`` writes an OpenSSH allowed-signers file. A small
app (``Item``, ``open_db``, ``add_item``, ``item_names``) for the end-to-end tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dimpledb_sa as dimple

__all__ = ["Base", "Item", "add_item", "allowed_signers", "item_names", "open_db", "run",
           "tool"]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"`{name}` is not installed, and CI must run the interop tests")
        pytest.skip(f"`{name}` is not installed")
    return path


def run(*cmd: str | Path, stdin: bytes = b"", check: bool = True
        ) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run([str(c) for c in cmd], input=stdin, capture_output=True,
                          timeout=60, check=False)
    if check:
        assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done


def allowed_signers(path: Path, entries: dict[str, str]) -> Path:
    """An OpenSSH allowed_signers file: one ``PRINCIPAL KEY`` line per entry."""
    path.write_text("".join(f"{who} {key}\n" for who, key in entries.items()))
    return path


# --------------------------------------------------------------------------- a small app

class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    name: Mapped[str]


@contextmanager
def open_db(path: Path, remote: str, **kw: Any) -> Iterator[dimple.DimpleDb]:
    """A ``DimpleDb`` on the SQLite file ``path`` tracking ``Item``, tables created."""
    engine = create_engine(f"sqlite:///{path}")
    db = dimple.DimpleDb(engine, Base, remote=remote, **kw)
    try:
        db.create_all()
        yield db
    finally:
        db.close()
        engine.dispose()


def add_item(db: dimple.DimpleDb, name: str) -> None:
    with db.sessionmaker()() as session:
        session.add(Item(name=name))
        session.commit()


def item_names(db: dimple.DimpleDb) -> list[str]:
    with db.sessionmaker()() as session:
        return sorted(session.scalars(select(Item.name)))
