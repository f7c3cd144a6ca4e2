"""The world the command-line tests share, and how they run the ``dimpledb`` command.

:func:`run` runs ``python -m dimpledb_sa.cli`` in a subprocess (exit code, stdout, stderr);
:func:`call` calls ``cli.main([...])`` in-process, the same code without the interpreter
start-up. :func:`make_world` builds what the ``world`` fixture (``conftest.py``, one per test
module, each a :func:`copy_world` of one made once per session) holds: two device databases
and a local folder remote; device A is written with the library, then both are synced by the
CLI with a key written by ``dimpledb keygen``. The ``no_key_in_env`` fixture
(``conftest.py``), which the CLI test modules use on every test, keeps the caller's
``$DIMPLEDB_IDENTITY*`` out.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ForeignKey, Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa import cli

__all__ = ["ROOT", "Base", "Counter", "Step", "Todo", "World", "call", "child_env",
           "copy_world", "make_world", "rows", "run"]

ROOT = Path(__file__).resolve().parents[1]


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)


class Step(Base):
    __tablename__ = "step"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=dimple.new_id)
    todo_id: Mapped[str] = mapped_column(ForeignKey("todo.id"))
    text: Mapped[str]


class Counter(Base):  # not trackable: the CLI must leave it alone
    __tablename__ = "counter"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIMPLEDB_", "AWS_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run(*args: Any, cwd: Path, env: dict[str, str] | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``dimpledb ARGS...`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "dimpledb_sa.cli", *map(str, args)],
                          cwd=cwd, env=child_env(env), input=stdin, capture_output=True,
                          text=True, timeout=120)


def call(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    """``dimpledb ARGS...`` in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse: --help, usage errors
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@dataclass
class World:
    dir: Path
    remote: Path
    key: Path  # written by `dimpledb keygen -o`
    other_key: Path  # a key the bundles are not encrypted to
    a: Path  # device A: written with the library
    b: Path  # device B: a plain SQLAlchemy database, first synced by the CLI
    a_author: str
    milk: str
    eggs: str
    bread: str
    keygen: subprocess.CompletedProcess[str]
    sync_a: subprocess.CompletedProcess[str]
    sync_b: subprocess.CompletedProcess[str]


def make_world(d: Path) -> World:
    """The world in the empty folder ``d`` (the ``world`` fixture of ``conftest.py``)."""
    keygen = run("keygen", "-o", d / "key.txt", cwd=d)
    assert keygen.returncode == 0, keygen.stderr
    secret, _ = dimple.generate_identity()
    (d / "other.txt").write_text(f"# another device's key\n{secret}\n")
    key = next(ln for ln in (d / "key.txt").read_text().splitlines() if ln.startswith("AGE-"))

    engine = create_engine(f"sqlite:///{d / 'a.db'}")
    db = dimple.DimpleDb(engine, Base, exclude=[Counter])
    db.create_all()
    with db.sessionmaker()() as s:
        milk, eggs, bread = Todo(text="milk"), Todo(text="eggs"), Todo(text="bread")
        s.add_all([milk, eggs, bread])
        s.commit()
        s.add(Step(todo_id=milk.id, text="go to the shop"))
        milk.text = "oat milk"
        eggs.done = True
        s.commit()
        s.delete(bread)
        s.commit()
        ids = milk.id, eggs.id, bread.id
    a_author = db.author_id
    db.close()
    engine.dispose()
    assert key  # the keygen file is the one both devices use
    plain = create_engine(f"sqlite:///{d / 'b.db'}")
    Base.metadata.create_all(plain)  # no bookkeeping tables: the CLI creates them
    plain.dispose()

    sync_a = run("sync", "a.db", "remote", "--identity-file", "key.txt", cwd=d)
    sync_b = run("sync", d / "b.db", d / "remote", "-i", d / "key.txt", "-v", cwd=d)
    return World(d, d / "remote", d / "key.txt", d / "other.txt", d / "a.db", d / "b.db",
                 a_author, *ids, keygen, sync_a, sync_b)


def copy_world(world: World, d: Path) -> World:
    """The same world in the empty folder ``d``: its files copied (modes too), its paths
    and the recorded commands' arguments and output moved there, as if made in ``d``."""
    shutil.copytree(world.dir, d, dirs_exist_ok=True)
    old, new = str(world.dir), str(d)

    def moved(value: Any) -> Any:
        if isinstance(value, Path):
            return d / value.relative_to(world.dir) if value.is_relative_to(world.dir) else value
        if isinstance(value, str):
            return value.replace(old, new)
        if isinstance(value, list):
            return [moved(v) for v in value]
        if isinstance(value, subprocess.CompletedProcess):
            return subprocess.CompletedProcess(moved(value.args), value.returncode,
                                               moved(value.stdout), moved(value.stderr))
        return value

    return dataclasses.replace(world, **{f.name: moved(getattr(world, f.name))
                                         for f in dataclasses.fields(world)
                                         if f.name not in ("a_author", "milk", "eggs",
                                                           "bread")})


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()
