"""Migration operations: ``op.create_dimpledb_tables()`` and ``op.drop_dimpledb_tables()``.

Importing this module (``import alembic_ext`` does) registers both with Alembic's operation
plugin API: each is a data object (:class:`CreateDimpleDbTablesOp`,
:class:`DropDimpleDbTablesOp`) registered with ``Operations.register_operation``, executed
by a function registered with ``Operations.implementation_for``, and rendered back to its
one-line call by autogenerate's ``renderers`` (autogenerate itself never proposes them:
the filters in :mod:`alembic_ext.filters` keep the ``dimple_*`` tables out of comparison).
Both work online and in ``--sql`` mode; ``checkfirst`` (online only) skips tables that
already exist (create) or are already gone (drop), so a database whose bookkeeping tables
were made by ``DimpleDb.create_all()`` migrates cleanly. Online, creating them also moves
a change log of an earlier release's layout into the current one
(:func:`dimpledb_sa.core.changelog.upgrade`).
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations
from sqlalchemy import inspect

from dimpledb_sa.core import changelog, schema

__all__ = ["CreateDimpleDbTablesOp", "DropDimpleDbTablesOp"]


@Operations.register_operation("create_dimpledb_tables")
class CreateDimpleDbTablesOp(MigrateOperation):
    """Create the bookkeeping tables (``dimple_*``) with their indexes."""

    def __init__(self, *, checkfirst: bool = True) -> None:
        self.checkfirst = checkfirst

    @classmethod
    def create_dimpledb_tables(cls, operations: Operations, *, checkfirst: bool = True
                               ) -> None:
        """Create dimpledb's bookkeeping tables (``dimple_*``) and their indexes.

        ``checkfirst`` (default true; ignored in ``--sql`` mode) skips tables that exist.
        """
        operations.invoke(cls(checkfirst=checkfirst))

    def reverse(self) -> DropDimpleDbTablesOp:
        return DropDimpleDbTablesOp(checkfirst=self.checkfirst)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("create_dimpledb_tables",)


@Operations.register_operation("drop_dimpledb_tables")
class DropDimpleDbTablesOp(MigrateOperation):
    """Drop the bookkeeping tables: the change log and sync state are lost."""

    def __init__(self, *, checkfirst: bool = True) -> None:
        self.checkfirst = checkfirst

    @classmethod
    def drop_dimpledb_tables(cls, operations: Operations, *, checkfirst: bool = True
                             ) -> None:
        """Drop dimpledb's bookkeeping tables (``dimple_*``): history and sync state go too.

        ``checkfirst`` (default true; ignored in ``--sql`` mode) skips tables already gone.
        """
        operations.invoke(cls(checkfirst=checkfirst))

    def reverse(self) -> CreateDimpleDbTablesOp:
        return CreateDimpleDbTablesOp(checkfirst=self.checkfirst)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("drop_dimpledb_tables",)


def _existing(operations: Operations) -> set[str] | None:
    """Names of the tables in the database, or ``None`` in ``--sql`` mode (unknown)."""
    if operations.migration_context.as_sql:
        return None
    return set(inspect(operations.get_bind()).get_table_names())


@Operations.implementation_for(CreateDimpleDbTablesOp)
def create_dimpledb_tables(operations: Operations, operation: CreateDimpleDbTablesOp) -> None:
    existing = _existing(operations) if operation.checkfirst else None
    for table in schema.metadata.sorted_tables:
        if existing is None or table.name not in existing:
            operations.impl.create_table(table)
    if existing is not None:  # online: a change log of an earlier layout is moved over
        changelog.upgrade(operations.get_bind())


@Operations.implementation_for(DropDimpleDbTablesOp)
def drop_dimpledb_tables(operations: Operations, operation: DropDimpleDbTablesOp) -> None:
    existing = _existing(operations) if operation.checkfirst else None
    for table in reversed(schema.metadata.sorted_tables):
        if existing is None or table.name in existing:
            operations.impl.drop_table(table)


def _render(call: str, autogen_context: AutogenContext,
            op: CreateDimpleDbTablesOp | DropDimpleDbTablesOp) -> str:
    autogen_context.imports.add("import alembic_ext  # noqa: F401  (registers the dimpledb ops)")
    args = "" if op.checkfirst else "checkfirst=False"
    return f"op.{call}({args})"


@renderers.dispatch_for(CreateDimpleDbTablesOp)
def render_create(autogen_context: AutogenContext, op: CreateDimpleDbTablesOp) -> str:
    return _render("create_dimpledb_tables", autogen_context, op)


@renderers.dispatch_for(DropDimpleDbTablesOp)
def render_drop(autogen_context: AutogenContext, op: DropDimpleDbTablesOp) -> str:
    return _render("drop_dimpledb_tables", autogen_context, op)
