"""The world the sync tests share: devices on a remote (``test_run``, ``test_run_faults``,
``test_merge``, ``test_convergence``).

A *device* is one database (a SQLite file in the test's temporary folder, or a schema on the
test session's PostgreSQL server, see ``databases.py``) with its own ``DimpleDb`` on a
shared remote. :class:`Devices` makes them (same age identity by default, tracking
``models.SyncBase`` unless told otherwise) and closes them; a new SQLite device starts from
a copy of a template file of its models' empty tables (made once per process), then runs
``create_all()`` as usual. A shared :class:`Ticker` stands in
for the wall clock of every device of a test, one millisecond per reading, so that an edit made
later in the test always gets a larger id, whatever device makes it. The models are in
``models.py`` (``SyncBase``, and ``OldSyncBase``, an older version of the same tables).
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from databases import Databases, sqlite_engine
from models import Note, SyncBase
from sqlalchemy import Connection, Engine, MetaData, Table, select, text
from sqlalchemy.orm import sessionmaker

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog, schema
from dimpledb_sa.core.changelog import expand_all
from dimpledb_sa.core.clock import HybridClock
from dimpledb_sa.core.signals import changes_committed
from dimpledb_sa.sync.crypto import generate_identity
from dimpledb_sa.sync.wire import ChangeRow

# --------------------------------------------------------------------------- devices


class Ticker:
    """A fake wall clock (``now_ns``) shared by devices: each reading is 1 ms after the last."""

    def __init__(self, start_ns: int | None = None) -> None:
        self._ns = time.time_ns() if start_ns is None else start_ns
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._ns += 1_000_000
            return self._ns


@dataclass
class Device:
    """One database file with its ``DimpleDb`` and a ``sessionmaker``."""

    name: str
    path: Path
    db: dimple.DimpleDb
    Session: sessionmaker[dimple.Session]

    def sync(self) -> dimple.SyncReport:
        return self.db.sync()

    def add(self, *objs: Any) -> None:
        with self.Session() as s:
            s.add_all(objs)
            s.commit()

    def edit(self, model: type[Any], entity_id: str, **values: Any) -> None:
        with self.Session() as s:
            obj = s.get(model, entity_id)
            assert obj is not None, f"{self.name} has no {model.__name__} {entity_id}"
            for k, v in values.items():
                setattr(obj, k, v)
            s.commit()

    def delete(self, model: type[Any], entity_id: str) -> None:
        with self.Session() as s:
            obj = s.get(model, entity_id)
            assert obj is not None, f"{self.name} has no {model.__name__} {entity_id}"
            s.delete(obj)
            s.commit()

    def get(self, model: type[Any], entity_id: str) -> dict[str, Any] | None:
        """The row as a dict of column values, or ``None``."""
        table = model.__table__
        with self.db.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.id == entity_id)).mappings().first()
        return dict(row) if row is not None else None

    def rows(self, model: type[Any]) -> list[tuple[Any, ...]]:
        """Every row of ``model``'s table, all columns, sorted."""
        return table_rows(self.db.engine, model.__tablename__)

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every tracked table's rows."""
        return {name: table_rows(self.db.engine, name) for name in sorted(self.db.tracked)}

    def log(self) -> set[ChangeRow]:
        return change_log(self.db.engine)

    def held(self) -> list[tuple[Any, ...]]:
        with self.db.engine.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(select(schema.held)))


_REFLECTED: dict[tuple[Any, ...], Table] = {}  # a table's layout -> the table, reflected

_PG_LAYOUT = text(
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), "
    "coalesce(a.attnum = ANY (i.indkey), false) FROM pg_attribute a "
    "LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary "
    "WHERE a.attrelid = to_regclass(quote_ident(:name)) AND a.attnum > 0 "
    "AND NOT a.attisdropped ORDER BY a.attnum")


def _layout(conn: Connection, name: str) -> tuple[Any, ...] | None:
    """What a reflection of the table ``name`` depends on here, in one cheap query: on
    SQLite its ``CREATE TABLE`` text (which ``ALTER TABLE`` rewrites), on PostgreSQL its
    columns' names, types and key membership (``None``: no such table, or another
    database)."""
    if conn.dialect.name == "sqlite":
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND "
                                   "name = ?", (name,)).scalar()
        return None if sql is None else ("sqlite", name, sql)
    if conn.dialect.name == "postgresql":
        cols = tuple(tuple(r) for r in conn.execute(_PG_LAYOUT, {"name": name}))
        return ("postgresql", name, cols) if cols else None
    return None


def _reflect(conn: Connection, name: str) -> Table:
    """The table ``name`` as the database has it: a table of the same layout as one
    reflected before, on any database of the kind, is not reflected again (its columns,
    types and key are the same; the table is not bound to a schema)."""
    layout = _layout(conn, name)
    if layout is None:
        return Table(name, MetaData(), autoload_with=conn)  # raises NoSuchTableError
    table = _REFLECTED.get(layout)
    if table is None:
        table = _REFLECTED[layout] = Table(name, MetaData(), autoload_with=conn)
    return table


def table_rows(engine: Engine, name: str) -> list[tuple[Any, ...]]:
    """Every row of the table ``name`` as the database has it (reflected), sorted: the key
    first, then the other columns by name."""
    with engine.connect() as conn:
        table = _reflect(conn, name)
        cols = sorted(table.c, key=lambda c: (not c.primary_key, c.name))
        return sorted((tuple(r) for r in conn.execute(select(*cols))), key=repr)


def change_log(engine: Engine) -> set[ChangeRow]:
    """The expanded per-attribute change log, as a set of tuples."""
    with engine.connect() as conn:
        rows = changelog.all_rows(conn)
    out = set(expand_all(rows))
    assert len(out) == sum(len(expand_all([r])) for r in rows), "duplicate change records"
    return out


# --------------------------------------------------------------------------- set-up templates

_TEMPLATES: dict[tuple[Any, ...], tuple[Any, Path]] = {}  # key -> (models, file)
_TEMPLATE_LOCK = threading.Lock()
_template_folder: Path | None = None


def _template_key(models: Any) -> tuple[Any, ...] | None:
    """What a template of ``models``' tables depends on: the models object and every table
    its metadata holds now (``None``: no template, for models given otherwise)."""
    md = getattr(models, "metadata", None)
    if not isinstance(md, MetaData):
        return None
    return (id(models), id(md), tuple(sorted(md.tables)))


def _template(models: Any) -> Path | None:
    """A SQLite file holding the bookkeeping tables and ``models``' tables as a fresh
    database's ``create_all()`` makes them, but no author id and no rows: made once per
    models and test process, copied for each new SQLite device (cheaper than the DDL).
    The device's own ``create_all()`` still runs on the copy (it finds the tables and only
    creates the author id, and whatever a later release adds)."""
    global _template_folder
    key = _template_key(models)
    if key is None:
        return None
    with _TEMPLATE_LOCK:
        found = _TEMPLATES.get(key)
        if found is not None:
            return found[1]
        if _template_folder is None:
            _template_folder = Path(tempfile.mkdtemp(prefix="dimpledb-templates-"))
            atexit.register(shutil.rmtree, _template_folder, True)
        path = _template_folder / f"t{len(_TEMPLATES)}.db"
        engine = sqlite_engine(path)
        try:
            db = dimple.DimpleDb(engine, models)  # what it tracks, as a device would
        except Exception:  # models a DimpleDb refuses: the device itself says why
            engine.dispose()
            path.unlink(missing_ok=True)
            return None
        try:
            schema.metadata.create_all(engine)
            for md in {id(t.table.metadata): t.table.metadata
                       for t in db.tracked.values()}.values():
                md.create_all(engine)
        finally:
            db.close()
            engine.dispose()
        assert not path.with_name(path.name + "-wal").exists()
        _TEMPLATES[key] = (models, path)
        return path


class Devices:
    """Makes devices in ``folder`` on one remote; ``close()`` closes them all.

    ``database`` is the kind of database devices get by default (``"sqlite"``: a file in
    ``folder``; ``"postgresql"``: a schema made by ``databases``); ``new(..., database=...)``
    picks the kind of one device (mixed replicas).
    """

    def __init__(self, folder: Path, remote: Any = None, storage_options: dict[str, Any] | None
                 = None, *, identity: str | None = None, encryption: bool = True,
                 path: str | None = None, database: str = "sqlite",
                 databases: Databases | None = None) -> None:
        self.folder = folder
        self.database = database
        self.databases = databases
        self.remote = remote
        self.storage_options = storage_options
        self.path = path
        self.identity, self.recipient = generate_identity()
        if identity is not None:
            self.identity = identity
        self.encryption = encryption
        self.ticker = Ticker()
        self.opened: list[Device] = []

    def engine(self, name: str, *, file: Path | None = None, foreign_keys: bool = True,
               database: str | None = None) -> Engine:
        """An engine on the device database ``name`` (or ``file``): the same name or file
        gives the same database."""
        kind = database or self.database
        path = file or self.folder / f"{name}.db"
        if kind == "sqlite":
            return sqlite_engine(path, foreign_keys=foreign_keys)
        if self.databases is None:
            raise ValueError(f"Devices(databases=...) is needed for {kind} devices")
        return self.databases.engine(kind, str(path))

    def new(self, name: str, *, models: Any = SyncBase, file: Path | None = None,
            clock: HybridClock | None = None, create: bool = True, foreign_keys: bool = True,
            database: str | None = None, **kw: Any) -> Device:
        """A device on the database ``name`` (a file ``name.db``, or ``file``; or a schema
        on PostgreSQL) with these models and the shared identity; ``kw`` overrides the
        ``DimpleDb`` keyword arguments."""
        where = file or self.folder / f"{name}.db"
        if create and (database or self.database) == "sqlite" and "exclude" not in kw \
                and where.parent.is_dir() and not where.exists():
            template = _template(models)
            if template is not None:  # a copy of the same empty tables, made faster
                shutil.copyfile(template, where)
        engine = self.engine(name, file=file, foreign_keys=foreign_keys, database=database)
        args: dict[str, Any] = {"remote": self.remote}
        if self.storage_options:
            args["storage_options"] = self.storage_options
        if self.path is not None:
            args["path"] = self.path
        if self.encryption:
            args["identity"] = self.identity
        else:
            args["encryption"] = False
        args.update(kw)
        db = dimple.DimpleDb(engine, models, **args)
        db.replica.clock = clock or HybridClock(now_ns=self.ticker)
        if create:
            db.create_all()
        dev = Device(name, file or self.folder / f"{name}.db", db,
                     db.sessionmaker(expire_on_commit=False))
        self.opened.append(dev)
        return dev

    def close(self, dev: Device | None = None) -> None:
        for d in [dev] if dev is not None else list(self.opened):
            d.db.close()
            d.db.engine.dispose()
            self.opened.remove(d)


@contextmanager
def device_set(folder: Path, remote: Any = None, storage_options: dict[str, Any] | None = None,
               **kw: Any) -> Iterator[Devices]:
    devs = Devices(folder, remote, storage_options, **kw)
    try:
        yield devs
    finally:
        devs.close()


@contextmanager
def memory_devices(folder: Path, name: str, **kw: Any) -> Iterator[Devices]:
    """:func:`device_set` on a fresh ``memory://`` remote named after ``name``, removed
    afterwards (``kw``: ``Devices``' options, e.g. ``database``, ``databases``)."""
    top = f"/{name}-{uuid.uuid4().hex}"
    with device_set(folder, f"memory:/{top}/remote", **kw) as d:
        yield d
    fs = fsspec.filesystem("memory")
    if fs.exists(top):
        fs.rm(top, recursive=True)


def sync_all(*devices: Device, rounds: int = 2) -> list[dimple.SyncReport]:
    """Sync every device in turn, ``rounds`` times; returns the reports."""
    return [d.sync() for _ in range(rounds) for d in devices]


def assert_converged(*devices: Device) -> None:
    """Every device holds the first one's rows and change log."""
    first = devices[0]
    for d in devices[1:]:
        assert d.snapshot() == first.snapshot(), f"{d.name} differs from {first.name}"
        assert d.log() == first.log(), f"{d.name}'s change log differs from {first.name}'s"


def titles(dev: Device) -> list[str]:
    """The device's note titles, sorted."""
    with dev.db.engine.connect() as conn:
        return sorted(conn.execute(select(Note.title)).scalars())


# --------------------------------------------------------------------------- signals


@dataclass
class Event:
    tables: frozenset[str]
    changes: list[dimple.Change]
    origin: str


@dataclass
class Recorder:
    events: list[Event] = field(default_factory=list)

    def __call__(self, sender: Any, *, tables: frozenset[str], changes: list[dimple.Change],
                 origin: str) -> None:
        self.events.append(Event(tables, changes, origin))

    def sync_events(self) -> list[Event]:
        return [e for e in self.events if e.origin == "sync"]


@contextmanager
def recording(db: dimple.DimpleDb) -> Iterator[Recorder]:
    """Record ``changes_committed`` sent by ``db``."""
    rec = Recorder()
    changes_committed.connect(rec, sender=db, weak=False)
    try:
        yield rec
    finally:
        changes_committed.disconnect(rec, sender=db)


# --------------------------------------------------------------------------- the remote


def remote_files(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, bytes]:
    """Every file under ``root`` (path relative to it -> bytes)."""
    fs.invalidate_cache()
    try:
        paths = fs.find(root)
    except FileNotFoundError:
        return {}
    base = root.rstrip("/") + "/"
    return {p[len(base):] if p.startswith(base) else p: bytes(fs.cat_file(p)) for p in paths}


def read_manifest(fs: fsspec.AbstractFileSystem, root: str, author: str) -> dict[str, Any]:
    fs.invalidate_cache()
    doc: dict[str, Any] = json.loads(fs.cat_file(f"{root}/{author}/dimple_db.json"))
    return doc


def write_file(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` (folders made as needed), as a hostile author could."""
    parent = path.rsplit("/", 1)[0]
    if not getattr(fs, "split_path", None):
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)
    fs.invalidate_cache()

