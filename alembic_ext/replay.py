"""Held changes after a migration: replay what the schema can take now, rename columns.

:func:`replay_held` is what ``env.py`` calls after ``context.run_migrations()``: it builds a
throw-away ``Replica`` over the tables that held changes wait for, as they are in the
database *after* the migration (reflected, with the column types of ``target_metadata``'s
models where they have the same table and column, so codecs match the application's), and
re-derives the held entities from the change log (:func:`dimpledb_sa.sync.merge.replay_held_in`).
Changes for a column that still does not exist (dropped, or renamed) stay held; nothing
is ever removed from the log. :func:`rename_held` lets a migration that renames a column
re-label the logged changes of the old name, so devices that have not migrated yet do not
lose their edits. Both run inside the transaction Alembic (or the caller) has open on the
connection and leave committing to it; otherwise they commit their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    MetaData,
    Table,
    delete,
    event,
    inspect,
    select,
)

from dimpledb_sa.core import changelog, schema
from dimpledb_sa.core.errors import ConfigurationError
from dimpledb_sa.core.replica import Replica
from dimpledb_sa.core.rows import insert_many
from dimpledb_sa.core.tracking import resolve_tables
from dimpledb_sa.sync import merge

from .filters import is_bookkeeping

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.engine.interfaces import ReflectedColumn
    from sqlalchemy.engine.reflection import Inspector

__all__ = ["rename_held", "replay_held"]


class _Offline(Exception):
    """``--sql`` mode: there is no database to read or write."""


def _migration_context() -> MigrationContext | None:
    """The Alembic migration context being run (inside ``env.py``), if any."""
    try:
        from alembic import context

        return context.get_context()
    except Exception:  # not inside env.py, or configure() not called yet
        return None


@contextmanager
def _work(connection: Connection) -> Iterator[None]:
    """A unit of work on ``connection`` that ends up committed.

    A transaction that Alembic will commit (the outer one with transactional DDL, or the
    current migration's) or that the caller opened before ``context.configure()`` is joined.
    Alembic's own non-transactional mode (SQLite) leaves at most a transaction autobegun
    by its reads, which nobody would commit: we commit it. Outside ``env.py``, a transaction
    in progress is joined (the caller commits) and otherwise one is begun and committed.
    """
    mc = _migration_context()
    if mc is not None and mc.as_sql:
        raise _Offline
    if mc is not None and mc.connection is not connection:
        mc = None  # another connection than Alembic's: the plain rules
    if not connection.in_transaction():
        with connection.begin():
            yield
        return
    joined = mc is None or (getattr(mc, "_transaction", None) is not None
                            or bool(getattr(mc, "_in_external_transaction", False)))
    if joined:
        yield
        return
    try:
        yield
    except BaseException:
        connection.rollback()
        raise
    connection.commit()


def _model_tables(target_metadata: Any) -> dict[str, Table]:
    """Tables by name from a ``MetaData``, a declarative base, a model, or a list of them."""
    out: dict[str, Table] = {}
    if target_metadata is None:
        return out
    items: Iterable[Any] = (target_metadata if isinstance(target_metadata, list | tuple)
                            else [target_metadata])
    for item in items:
        if isinstance(item, Table):
            out.setdefault(item.name, item)
            continue
        md = item if isinstance(item, MetaData) else getattr(item, "metadata", None)
        if isinstance(md, MetaData):
            for t in md.tables.values():
                out.setdefault(t.name, t)
    return out


def _reflect(connection: Connection, names: Iterable[str], target_metadata: Any
             ) -> list[Table]:
    """The trackable tables among ``names`` as they exist now, typed like the models."""
    present = set(inspect(connection).get_table_names())
    wanted = sorted(n for n in set(names) if n in present and not is_bookkeeping(n))
    if not wanted:
        return []
    models = _model_tables(target_metadata)
    md = MetaData()

    def model_type(inspector: Inspector, table: Table, info: ReflectedColumn) -> None:
        model = models.get(table.name)
        if model is not None and info["name"] in model.c:
            info["type"] = model.c[info["name"]].type

    event.listen(md, "column_reflect", model_type)
    md.reflect(connection, only=wanted)
    tables: list[Table] = []
    for name in wanted:
        try:
            resolve_tables([md.tables[name]])
        except ConfigurationError:
            continue  # no usable key (e.g. alembic_version): its changes stay held
        tables.append(md.tables[name])
    return tables


def replay_held(connection: Connection | None, target_metadata: Any = None) -> int:
    """Apply the held changes the schema can take now; returns how many were applied.

    Call it in ``env.py`` right after ``context.run_migrations()`` (on the same
    connection). ``target_metadata`` (a ``MetaData``, declarative base or a list of them,
    optional) lends its column types to the reflected tables so values decode as the
    application's models do (``Uuid``, ``Enum``, ``JSON`` and the like); tables the models
    do not know are replayed with their reflected types. In ``--sql`` mode, or when the
    database has no bookkeeping tables yet, it does nothing and returns 0 (and so for
    ``connection=None``, which lets offline ``env.py`` code call it too).
    """
    if connection is None:
        return 0
    try:
        with _work(connection):
            if not inspect(connection).has_table(schema.held.name):
                return 0
            h = schema.held
            names = list(connection.execute(select(h.c.entity_type).distinct()).scalars())
            tables = _reflect(connection, names, target_metadata)
            if not tables:
                return 0
            replica = Replica(connection.engine, resolve_tables(tables))
            return merge.replay_held_in(replica, connection).applied
    except _Offline:
        return 0


def rename_held(connection: Connection, table: str, old: str, new: str) -> int:
    """Make the logged changes of column ``old`` of ``table`` changes of column ``new``.

    For a migration that renames a column (call it after ``op.alter_column(...,
    new_column_name=...)``): changes made under the old name, by this device or by
    devices that have not migrated yet, then count as changes of the new column (last
    write wins across both names), and their held entries move to the new name so that
    :func:`replay_held` applies them. Changes under the old name that arrive later (from
    devices still on the old schema) are held again: calling this again re-labels them
    (it is idempotent). Returns the number of changes re-labelled; in ``--sql`` mode it
    can do nothing (the log is data, not schema) and returns 0.
    """
    if old == new:
        return 0
    try:
        with _work(connection):
            if not inspect(connection).has_table(schema.changes.name):
                return 0
            changelog.upgrade(connection)
            changelog.fold(connection)
            h = schema.held
            renamed = changelog.rename_attribute(connection, table, old, new)
            where = (h.c.entity_type == table, h.c.attribute == old)
            held = [(t, e, new, r) for t, e, _, r in connection.execute(select(
                h.c.entity_type, h.c.entity_id, h.c.attribute, h.c.reason).where(*where))]
            if held:
                connection.execute(delete(h).where(*where))
                insert_many(connection, h, held, ignore_existing=True)
            return renamed
    except _Offline:
        return 0
