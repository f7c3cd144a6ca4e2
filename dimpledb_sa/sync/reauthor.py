"""Reauthor: give a database a new author id without losing its unpushed work.

What ``dimpledb reauthor DB`` and ``DimpleDb.reauthor()`` do, for a database file copied to
a second device (or a restored backup with changes of its own) that a push found writing
as the same author as another database (:mod:`.own`). In one write transaction:

- a new author id (a UUIDv7) replaces the old one in ``dimple_meta``;
- this database's transactions that were not pushed (above ``pushed_through``, which a
  push that detected a copy lowered to the last of our pushes still listed) move to the new
  author: the next push uploads them into the new author's own, empty folder;
- transactions already pushed stay with the old author: they are on the remote in its
  folder, and the other database keeps writing there. ``pushed_through`` is cleared (the new
  author pushed nothing yet), and no pull cursor is set for the old author: the next sync
  reads that folder once in full, as another device's, and merges what this database lacks
  (transactions it has are skipped by id).

It refuses while a push of this database holds the push lease. Handles opened before it
pick the new id up at their next commit and push (both read it from ``dimple_meta``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import update

from ..core import changelog, meta, schema
from ..core.clock import new_id
from ..core.errors import ConfigurationError
from .lease import Lease

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["Reauthored", "reauthor"]


@dataclass(frozen=True)
class Reauthored:
    """The result of :func:`reauthor`."""

    old: str | None
    new: str
    moved: int


def reauthor(engine: Engine) -> Reauthored:
    """Give ``engine``'s database a new author id; see the module docstring."""
    new = new_id()
    with engine.begin() as conn:
        meta.take_write_lock(conn)
        held = Lease.decode(meta.get(conn, meta.PUSH_LEASE))
        if held is not None and held.live():
            raise ConfigurationError(
                f"a push of this database is in progress ({held.describe()}): stop the "
                "application (or wait for its sync to finish) and run this again")
        old = meta.get(conn, meta.AUTHOR_ID)
        moved = 0
        if old is not None:
            changelog.fold(conn)  # pending transactions get their dimple_transactions row
            pushed = meta.get(conn, meta.PUSHED_THROUGH)
            t = schema.transactions
            stmt = update(t).where(t.c.author == old).values(author=new)
            if pushed is not None:
                stmt = stmt.where(t.c.id > pushed)
            moved = conn.execute(stmt).rowcount
        meta.set_author_id(conn, new)
        meta.remove(conn, meta.PUSHED_THROUGH)
        meta.remove(conn, meta.PUSH_LEASE)
    return Reauthored(old, new, moved)
