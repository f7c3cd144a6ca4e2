"""The :class:`Change` record and reading the change log (``db.history``).

A ``Change`` is one attribute change as the seed's bundle format spells it, with JSON-
compatible values (see :mod:`dimpledb_sa.values`) and the author read from its transaction.
A delete is the change of the primary-key attribute from the entity id to ``None``; an
insert changes it from ``None`` to the id (see ``docs/FORMAT.md``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from . import schema
from .clock import id_datetime

__all__ = ["Change", "history", "to_changes"]


@dataclass(frozen=True, slots=True)
class Change:
    """One attribute change of one entity, immutable."""

    id: str
    transaction_id: str
    author: str
    entity_type: str
    entity_id: str
    attribute: str
    old_value: Any
    new_value: Any

    @property
    def timestamp(self) -> datetime:
        """When the change was made (aware UTC), read from its UUIDv7 id."""
        return id_datetime(self.id)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def to_changes(rows: Iterable[tuple[Any, ...]], author: str) -> list[Change]:
    """``Change`` records from change-row tuples written by ``author``."""
    return [
        Change(r[0], r[1], author, r[2], r[3], r[4], _load(r[5]), _load(r[6])) for r in rows
    ]


def history(conn: Connection, entity_type: str, entity_id: str) -> list[Change]:
    """Every logged change of one entity, oldest first."""
    c, t = schema.changes, schema.transactions
    stmt = (
        select(c.c.id, c.c.transaction_id, t.c.author, c.c.entity_type, c.c.entity_id,
               c.c.attribute, c.c.old_value, c.c.new_value)
        .join(t, t.c.id == c.c.transaction_id)
        .where(c.c.entity_type == entity_type, c.c.entity_id == entity_id)
        .order_by(c.c.id)
    )
    return [
        Change(r[0], r[1], r[2], r[3], r[4], r[5], _load(r[6]), _load(r[7]))
        for r in conn.execute(stmt)
    ]
