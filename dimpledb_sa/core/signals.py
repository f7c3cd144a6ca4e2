"""The blinker signals dimpledb_sa sends, and the functions that send them.

:data:`changes_committed` is sent once per committed transaction that recorded changes,
after the commit, never for a rollback: by capture for local transactions (``origin=
"local"``) and by sync for each merge that changed rows (``origin="sync"``), always through
:func:`send_committed`. Its sender is the ``DimpleDb``; keyword arguments:

- ``tables``: ``frozenset[str]`` of the tables the transaction wrote,
- ``changes``: a sequence of :class:`~.changes.Change` (for ``"sync"``: those applied to
  rows),
- ``origin``: ``"local"`` or ``"sync"``.

``changes`` is a :class:`LazyChanges`: a read-only ``Sequence[Change]`` built the first time
it is read, so receivers that only look at ``tables`` (live queries) do not pay for building
one record per change of a large transaction; ``list(changes)`` copies it.

Receivers run synchronously in the committing thread. Connect with ``weak=False`` for a
closure; blinker holds receivers weakly by default. A receiver that raises is logged and
does not stop the other receivers nor undo the commit.

:data:`sync_failed` is sent by background sync (``db.start_sync()``) after every sync that
raised, partial ones included (a ``SyncError`` naming authors whose data could not be read),
through :func:`send_sync_failed`. Its sender is the ``DimpleDb``; keyword argument ``error``:
the exception. Receivers run in the sync thread, after the handle's ``failures``,
``last_error`` and ``last_report`` were updated; one that raises is logged and ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from blinker import Namespace

if TYPE_CHECKING:
    from .changes import Change

__all__ = [
    "LazyChanges",
    "changes_committed",
    "namespace",
    "send_committed",
    "send_sync_failed",
    "sync_failed",
]

logger = logging.getLogger(__name__)

namespace = Namespace()

changes_committed = namespace.signal(
    "changes-committed",
    doc="Sent after each committed transaction that recorded changes; see module docs.",
)

sync_failed = namespace.signal(
    "sync-failed",
    doc="Sent by background sync after each sync that failed (keyword ``error``); see "
        "module docs.",
)


class LazyChanges(Sequence["Change"]):
    """A read-only sequence of ``Change`` filled on first read from a factory."""

    __slots__ = ("_factory", "_items")

    def __init__(self, factory: Callable[[], list[Change]]) -> None:
        self._factory: Callable[[], list[Change]] | None = factory
        self._items: list[Change] = []

    def _load(self) -> list[Change]:
        factory = self._factory
        if factory is not None:
            self._items = factory()
            self._factory = None
        return self._items

    def __len__(self) -> int:
        return len(self._load())

    @overload
    def __getitem__(self, i: int) -> Change: ...
    @overload
    def __getitem__(self, i: slice) -> list[Change]: ...
    def __getitem__(self, i: int | slice) -> Change | list[Change]:
        return self._load()[i]

    def __iter__(self) -> Iterator[Change]:
        return iter(self._load())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyChanges):
            return self._load() == other._load()
        if isinstance(other, list | tuple):
            return self._load() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Sequence[Change]) -> list[Change]:
        return [*self._load(), *other]

    def __radd__(self, other: Sequence[Change]) -> list[Change]:
        return [*other, *self._load()]

    def __repr__(self) -> str:
        return f"LazyChanges({self._load()!r})"


def send_committed(sender: Any, tables: frozenset[str],
                   make_changes: Callable[[], list[Change]], origin: str) -> None:
    """Send :data:`changes_committed` for one committed transaction; a receiver that raises
    is logged and skipped. ``make_changes`` runs only if a receiver reads ``changes``."""
    receivers = list(changes_committed.receivers_for(sender))
    if not receivers:
        return
    changes = LazyChanges(make_changes)
    for receiver in receivers:
        try:
            receiver(sender, tables=tables, changes=changes, origin=origin)
        except Exception:
            logger.exception("a changes_committed receiver raised; ignored")


def send_sync_failed(sender: Any, error: BaseException) -> None:
    """Send :data:`sync_failed`; a receiver that raises (anything but ``KeyboardInterrupt``
    and ``SystemExit``) is logged and skipped."""
    for receiver in list(sync_failed.receivers_for(sender)):
        try:
            receiver(sender, error=error)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            logger.exception("a sync_failed receiver raised; ignored")
