"""The change records: :class:`Change` (what users see) and the plain tuples the log, the
wire format and the merge pass around (:data:`ChangeRow`, :data:`TxRecord`).

A ``Change`` is one attribute change as the seed's bundle format spells it, with JSON-
compatible values (see :mod:`.values`) and the author read from its transaction. A delete
is the change of the primary-key attribute from the entity id to ``None``; an insert changes
it from ``None`` to the id (see ``docs/FORMAT.md``). Hot paths keep changes as
:data:`ChangeRow` tuples (values as JSON text) and unpack them by position: the ``ROW_*``
constants name the positions; :func:`change_from_row` is the one way to turn a row into a
``Change``. Reading the log is :mod:`.changelog`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from .clock import id_datetime

__all__ = [
    "ROW_ATTRIBUTE",
    "ROW_ENTITY_ID",
    "ROW_ENTITY_TYPE",
    "ROW_ID",
    "ROW_NEW",
    "ROW_OLD",
    "ROW_TRANSACTION",
    "Change",
    "ChangeRow",
    "TxRecord",
    "change_from_row",
    "changes_from_rows",
]

ChangeRow = tuple[str, str, str, str, str, str | None, str | None]
"""(id, transaction_id, entity_type, entity_id, attribute, old_value_json, new_value_json).

The values are the text ``json.dumps(value)`` (default settings); ``None`` is JSON null."""

# positions in a ChangeRow (the first four are the same in a packed log row)
ROW_ID: Final = 0
ROW_TRANSACTION: Final = 1
ROW_ENTITY_TYPE: Final = 2
ROW_ENTITY_ID: Final = 3
ROW_ATTRIBUTE: Final = 4
ROW_OLD: Final = 5
ROW_NEW: Final = 6

TxRecord = tuple[str, str, list[ChangeRow]]
"""(transaction id, author id, changes)."""


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


_loads = json.loads


def change_from_row(row: ChangeRow, author: str) -> Change:
    """The ``Change`` of one change row written by ``author``."""
    cid, tx, etype, eid, attribute, old, new = row
    return Change(cid, tx, author, etype, eid, attribute,
                  None if old is None else _loads(old), None if new is None else _loads(new))


def changes_from_rows(rows: Iterable[ChangeRow], authors: str | Mapping[str, str]
                      ) -> list[Change]:
    """``Change`` records of ``rows``: all by one author, or by transaction id -> author."""
    if isinstance(authors, str):
        return [change_from_row(r, authors) for r in rows]
    return [change_from_row(r, authors.get(r[ROW_TRANSACTION], "")) for r in rows]
