"""The live-query registry of one replica: live queries indexed by the tables they read.

One :class:`Registry` per ``DimpleDb`` (made on first use) is the only ``changes_committed``
receiver of its live queries, connected while live queries exist; it dispatches by table
name, so a commit re-runs only the queries reading what it wrote. The external-commit
watcher (:mod:`.watch`) notifies it too. It holds its live queries weakly.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..core.signals import changes_committed

if TYPE_CHECKING:
    from ..core.replica import Replica
    from .query import LiveQuery
    from .watch import Watcher

__all__ = ["Registry"]

logger = logging.getLogger(__name__)


class Registry:
    """Live queries of one replica indexed by table; their one signal receiver."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.engine = replica.engine
        self._lock = threading.RLock()
        self._serials = itertools.count(1)
        self._refs: dict[int, weakref.ref[LiveQuery]] = {}
        self._tables: dict[int, frozenset[str] | None] = {}
        self._by_table: dict[str, set[int]] = {}
        self._unknown: set[int] = set()
        self._dead: list[int] = []
        self._connected = False
        self.text_tables: dict[str, frozenset[str]] = {}  # SQLite's answer per SQL string
        self.watchers: set[Watcher] = set()

    def add(self, live: LiveQuery) -> int:
        dead = self._dead
        with self._lock:
            serial = next(self._serials)
            self._refs[serial] = weakref.ref(live, _on_gone(dead, serial))
            self._tables[serial] = None
            self._unknown.add(serial)
            self._purge()
            if not self._connected:
                sender = self.replica.sender
                if sender is not None:
                    changes_committed.connect(self._on_commit, sender=sender)
                    self._connected = True
        return serial

    def set_tables(self, serial: int, tables: frozenset[str] | None) -> None:
        with self._lock:
            if serial not in self._refs:
                return
            self._unindex(serial)
            self._tables[serial] = tables
            if tables is None:
                self._unknown.add(serial)
            else:
                for t in tables:
                    self._by_table.setdefault(t, set()).add(serial)

    def remove(self, serial: int) -> None:
        with self._lock:
            self._dead.append(serial)
            self._purge()

    def _unindex(self, serial: int) -> None:
        old = self._tables.get(serial)
        if old is None:
            self._unknown.discard(serial)
        else:
            for t in old:
                bucket = self._by_table.get(t)
                if bucket is not None:
                    bucket.discard(serial)
                    if not bucket:
                        del self._by_table[t]

    def _purge(self) -> None:
        while self._dead:
            serial = self._dead.pop()
            if self._refs.pop(serial, None) is not None:
                self._unindex(serial)
                del self._tables[serial]
        if not self._refs and self._connected:
            changes_committed.disconnect(self._on_commit)
            self._connected = False

    def count(self) -> int:
        """How many live queries are registered (closed and collected ones excluded)."""
        with self._lock:
            self._purge()
            return len(self._refs)

    def close_all(self) -> None:
        """Close every live query and watcher (for ``DimpleDb.close()``)."""
        for live in self.live_queries():
            live.close()
        for watcher in list(self.watchers):
            watcher.close()

    def live_queries(self) -> list[LiveQuery]:
        with self._lock:
            found = [r() for r in self._refs.values()]
        return [lv for lv in found if lv is not None]

    def _on_commit(self, sender: Any, **kw: Any) -> None:
        tables = kw.get("tables")
        self.notify(frozenset(tables) if tables is not None else None)

    def notify(self, tables: frozenset[str] | None) -> None:
        """Re-run the live queries reading any of ``tables`` (``None``: every one)."""
        with self._lock:
            self._purge()
            if tables is None:
                picked: Iterable[int] = list(self._refs)
            else:
                chosen = set(self._unknown)
                for t in tables:
                    bucket = self._by_table.get(t.lower())
                    if bucket:
                        chosen |= bucket
                picked = sorted(chosen)
            refs = [self._refs[s] for s in picked]
        for ref in refs:
            live = ref()
            if live is not None:
                try:
                    live._invalidate()
                except Exception:
                    logger.exception("a live query failed to re-run; ignored")


def _on_gone(dead: list[int], serial: int) -> Callable[[Any], None]:
    # a weakref callback may run inside any code (garbage collection): it only notes the
    # serial, and the registry drops it under its lock later
    return lambda _ref: dead.append(serial)
