"""The :class:`Change` record: one attribute change, as ``db.history`` and the signals give it.

A ``Change`` is one attribute change as the seed's bundle format spells it, with JSON-
compatible values (see :mod:`dimpledb_sa.values`) and the author read from its transaction.
A delete is the change of the primary-key attribute from the entity id to ``None``; an
insert changes it from ``None`` to the id (see ``docs/FORMAT.md``). Reading the log is
:mod:`dimpledb_sa.log`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .clock import id_datetime

__all__ = ["Change", "to_changes"]


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
