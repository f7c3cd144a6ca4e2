"""The database named on the command line: opening it and finding what to track.

This module owns turning the ``DB`` argument (a SQLAlchemy URL or a SQLite file path) into
an engine, with clear errors for a missing file or driver and SQLite files opened read-only
for the commands that only look (``status``, ``history``), read-write when a crash left
them needing recovery; the database's name for messages; checking that a database has the
dimpledb bookkeeping tables and reading its author id; and, for ``sync``, the models: the
database's tables reflected (every table the library can track, a single string or UUID
primary key, and ``CHAR(32)`` columns read as UUIDs) or the application's own models loaded
from ``--models module:attribute``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import CHAR, Engine, MetaData, Uuid, create_engine, inspect, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from ..core import schema
from ..core.errors import ConfigurationError
from .output import CliError, usage_error

__all__ = ["db_url", "display_name", "load_models", "open_engine", "read_author", "reflect",
           "require_bookkeeping", "sa_message"]

logger = logging.getLogger(__name__)

_NOT_TRACKED = ("alembic_version",)


def db_url(text: str) -> str:
    """A SQLAlchemy URL, or a plain path taken as a SQLite file."""
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


def open_engine(text: str, *, readonly: bool) -> Engine:
    """An engine for a database that must exist; ``readonly`` opens SQLite files read-only.

    A SQLite file left by a crash can need a write before anyone may read it (a hot rollback
    journal to roll back, a write-ahead log to recover): when a read-only connection cannot
    read it, it is opened read-write instead (``mode=rw``: never created), and SQLite
    recovers it on the first read. The commands that only look still write nothing
    themselves.
    """
    try:
        url = make_url(db_url(text))
    except ArgumentError as e:
        raise usage_error(f"not a database URL or SQLite file path: {text!r} ({e})") from None
    shown = display_name(url)
    fallback = None
    if url.get_backend_name() == "sqlite":
        db = url.database or ""
        if db in ("", ":memory:") or db.startswith("file:") or url.query.get("uri"):
            pass  # nothing to check on disk
        else:
            path = Path(db)
            if not path.is_file():
                what = "is a folder, not" if path.is_dir() else "does not exist: no such"
                raise CliError(f"cannot open database {shown}: {path} {what} SQLite file")
            if readonly:
                fallback = _sqlite_uri(url, path, "rw")
                url = _sqlite_uri(url, path, "ro")
    try:
        return _probe(url)
    except SQLAlchemyError as e:
        if fallback is None:
            raise CliError(f"cannot open database {shown}: {sa_message(e)}") from None
        logger.info("%s cannot be read read-only (%s): opening it read-write to recover it",
                    shown, sa_message(e))
    try:
        return _probe(fallback)
    except SQLAlchemyError as e:
        raise CliError(f"cannot open database {shown}: {sa_message(e)} (it needs recovery "
                       "after a crash, which needs write access to the file and its "
                       "folder)") from None


def _sqlite_uri(url: URL, path: Path, mode: str) -> URL:
    return url.set(database=f"file:{path.resolve().as_posix()}?mode={mode}",
                   query={**url.query, "uri": "true"})


def _probe(url: URL) -> Engine:
    """An engine on ``url`` that has read the database's table names once."""
    try:
        engine = create_engine(url)
    except (NoSuchModuleError, ImportError) as e:
        raise CliError(f"cannot open database {display_name(url)}: no driver for it ({e})"
                       ) from None
    try:
        with engine.connect() as conn:
            inspect(conn).get_table_names()
    except (NoSuchModuleError, ImportError) as e:
        engine.dispose()
        raise CliError(f"cannot open database {display_name(url)}: no driver for it ({e})"
                       ) from None
    except SQLAlchemyError:
        engine.dispose()
        raise
    return engine


def display_name(url: URL) -> str:
    """A database URL for messages: without its password, and for a SQLite file opened
    through a ``file:`` URI (read-only), the file's path."""
    db = url.database or ""
    if url.get_backend_name() == "sqlite" and db.startswith("file:") and url.query.get("uri"):
        return db[len("file:"):].split("?", 1)[0]
    return url.render_as_string(hide_password=True)


def sa_message(e: SQLAlchemyError) -> str:
    """A database error's message, without SQLAlchemy's SQL and parameters."""
    orig = getattr(e, "orig", None)
    return str(orig) if orig is not None else str(e).splitlines()[0]


def require_bookkeeping(engine: Engine) -> None:
    """Make sure ``engine``'s database is tracked (has ``dimple_meta``); read-only."""
    if not inspect(engine).has_table(schema.meta.name):
        raise CliError(f"{display_name(engine.url)} is not a dimpledb "
                       "database (it has no dimple_meta table): sync it once, or open it "
                       "with dimpledb_sa.DimpleDb and call create_all()")


def read_author(engine: Engine) -> str | None:
    m = schema.meta
    with engine.connect() as conn:
        value: str | None = conn.execute(
            select(m.c.value).where(m.c.key == "author_id")).scalar()
    return value


def reflect(engine: Engine, exclude: Sequence[str],
            notes: Callable[[str], None]) -> tuple[MetaData, list[str]]:
    """The database's tables, and the names of those the library cannot track.

    Reflection sees storage types, not the app's Python types. One matters for sync: where
    the database has no UUID type, SQLAlchemy's ``Uuid`` is stored as ``CHAR(32)`` hex,
    while the change log holds canonical UUID strings; so ``CHAR(32)`` columns are read as
    ``Uuid(as_uuid=False)``, which converts between the two (``--models`` avoids guessing).
    """
    from ..core.tracking import resolve_tables

    metadata = MetaData()
    try:
        metadata.reflect(engine)
    except SQLAlchemyError as e:
        raise CliError(f"cannot read the database's tables: {sa_message(e)}") from None
    skip = []
    for name, table in metadata.tables.items():
        if name.startswith(schema.BOOKKEEPING_PREFIX):
            continue
        for column in table.columns:
            if (not engine.dialect.supports_native_uuid
                    and isinstance(column.type, CHAR) and column.type.length == 32):
                column.type = Uuid(as_uuid=False)
                notes(f"reading CHAR(32) column {name}.{column.name} as a UUID "
                      "(SQLAlchemy's Uuid); pass --models if it is not one")
        if name in _NOT_TRACKED or name in exclude:
            skip.append(name)
            continue
        try:
            resolve_tables([table])
        except ConfigurationError as e:
            notes(f"not tracking {name!r}: {str(e).split(':')[0].removeprefix('table ')}")
            skip.append(name)
    return metadata, skip


def load_models(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise usage_error(f"--models takes module:attribute (e.g. myapp.models:Base), not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise usage_error(f"cannot load --models {spec}: {e}") from None
    return obj
