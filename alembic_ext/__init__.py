"""alembic_ext: migrate databases tracked by dimpledb_sa with plain Alembic.

Importing the package registers ``op.create_dimpledb_tables()`` and
``op.drop_dimpledb_tables()`` (:mod:`alembic_ext.ops`); :data:`include_object` and
:data:`include_name` keep the ``dimple_*`` bookkeeping tables out of autogenerate
(:mod:`alembic_ext.filters`); :func:`replay_held` applies, after an upgrade, the changes
that were held for tables or columns the old schema lacked, and :func:`rename_held` carries
changes over a column rename (:mod:`alembic_ext.replay`). The lines to add to ``env.py``
are in ``examples/alembic_project/README.md``.
"""

from __future__ import annotations

from .filters import (
    include_name,
    include_object,
    is_bookkeeping,
    make_include_name,
    make_include_object,
)
from .ops import CreateDimpleDbTablesOp, DropDimpleDbTablesOp
from .replay import rename_held, replay_held

__all__ = [
    "CreateDimpleDbTablesOp",
    "DropDimpleDbTablesOp",
    "include_name",
    "include_object",
    "is_bookkeeping",
    "make_include_name",
    "make_include_object",
    "rename_held",
    "replay_held",
]
