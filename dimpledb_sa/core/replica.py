"""The :class:`Replica`: the state of one tracked database that every layer below the
facade receives (instead of the ``DimpleDb`` itself).

It holds the engine, the tracked tables, the hybrid clock, the author id (read once from
:mod:`.meta`), the lock that serialises this process's syncs, ``max_drift`` (how far ahead
of the wall clock a pulled change may be and still be applied now), and the object signals
are sent as (the ``DimpleDb``, held weakly so that an unclosed ``DimpleDb`` can be
collected).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from . import meta
from .changelog import LocalWrite, PackedRow, expand_all
from .changes import ROW_ENTITY_TYPE, Change, changes_from_rows
from .clock import DEFAULT_MAX_DRIFT, HybridClock
from .signals import send_committed

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from .tracking import TrackedTable

__all__ = ["Replica"]


class Replica:
    """One tracked database as the lower layers see it."""

    def __init__(self, engine: Engine, tracked: dict[str, TrackedTable],
                 sender: object | None = None, *,
                 max_drift: timedelta = DEFAULT_MAX_DRIFT) -> None:
        self.engine = engine
        self.tracked = tracked
        self.clock = HybridClock()
        self.max_drift = max_drift
        """Pulled changes whose id time is further ahead of the wall clock than this are
        held, and a pull moves the clock at most this far ahead
        (``clock.observe(id, max_ahead=max_drift)``, ``clock.horizon(max_drift)``)."""
        self.sync_lock = threading.RLock()
        self._author_id: str | None = None
        self._sender: Callable[[], object | None] = (
            weakref.ref(sender) if sender is not None else lambda: self)

    @property
    def sender(self) -> object | None:
        """What signals are sent as: the ``DimpleDb`` (``None`` once it is collected)."""
        return self._sender()

    @property
    def author_id(self) -> str:
        """This database's author id, created on first use."""
        if self._author_id is None:
            self._author_id = meta.read_author_id(self.engine)
        return self._author_id

    def author_on(self, conn: Connection, stored: str | None = None) -> str:
        """The author id as ``conn``'s transaction sees it: ``stored`` (the value the caller
        just read from ``dimple_meta``) when given, else the one known, else read (or
        created) on ``conn``: another connection would wait on this transaction's write
        lock (SQLite)."""
        if stored is not None:
            self._author_id = stored
        elif self._author_id is None:
            self._author_id = meta.author_id(conn)
        return self._author_id

    def forget_author(self) -> None:
        """Read the author id again at next use (after ``reauthor``)."""
        self._author_id = None

    def committed(self, tables: Iterable[str], make_changes: Callable[[], list[Change]],
                  origin: str) -> None:
        """Send ``changes_committed`` for a committed transaction (see :mod:`.signals`)."""
        sender = self.sender
        if sender is not None:
            send_committed(sender, frozenset(tables), make_changes, origin)

    def committed_local(self, packed: Sequence[PackedRow]) -> None:
        """:meth:`committed` for a local transaction's packed log rows (expanded into
        ``Change`` records only if a receiver reads them)."""
        self.committed({r[ROW_ENTITY_TYPE] for r in packed},
                       lambda: changes_from_rows(expand_all(packed), self.author_id), "local")

    def committed_writes(self, written: Sequence[LocalWrite]) -> None:
        """:meth:`committed_local` for the transactions :func:`.changelog.write_pending`
        wrote (their packed rows made only if a receiver reads the changes)."""
        self.committed({t for w in written for t in w.tables},
                       lambda: changes_from_rows(
                           expand_all([r for w in written for r in w.rows()]),
                           self.author_id), "local")

    def __repr__(self) -> str:
        return f"<Replica {self.engine.url!r} tables={sorted(self.tracked)}>"

