"""The blinker signals dimpledb_sa sends.

:data:`changes_committed` is sent once per committed transaction that recorded changes,
after the commit, never for a rollback: by capture for local ORM transactions (``origin=
"local"``) and by the merge for each sync that changed rows (``origin="sync"``). Its sender
is the ``DimpleDb``; keyword arguments:

- ``tables``: ``frozenset[str]`` of the tables the transaction wrote,
- ``changes``: ``list[Change]`` of the changes (for ``"sync"``: those applied to rows),
- ``origin``: ``"local"`` or ``"sync"``.

``changes`` is a :class:`LazyChanges`: a real ``list`` whose ``Change`` records are built
the first time it is read, so receivers that only look at ``tables`` (live queries) do not
pay for building one record per change of a large transaction.

Receivers run synchronously in the committing thread. Connect with ``weak=False`` for a
closure; blinker holds receivers weakly by default. A receiver that raises is logged by
dimpledb_sa and does not stop the other receivers nor undo the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, SupportsIndex, overload

from blinker import Namespace

if TYPE_CHECKING:
    from .changes import Change

__all__ = ["LazyChanges", "changes_committed", "namespace"]

namespace = Namespace()

changes_committed = namespace.signal(
    "changes-committed",
    doc="Sent after each committed transaction that recorded changes; see module docs.",
)


class LazyChanges(list["Change"]):
    """A ``list[Change]`` filled on first read from a factory (see the module docstring)."""

    __slots__ = ("_factory",)

    def __init__(self, factory: Callable[[], list[Change]]) -> None:
        super().__init__()
        self._factory: Callable[[], list[Change]] | None = factory

    def _load(self) -> None:
        factory = self._factory
        if factory is not None:
            self._factory = None
            super().extend(factory())

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def __iter__(self) -> Iterator[Change]:
        self._load()
        return super().__iter__()

    def __reversed__(self) -> Iterator[Change]:
        self._load()
        return super().__reversed__()

    def __contains__(self, item: object) -> bool:
        self._load()
        return super().__contains__(item)

    @overload
    def __getitem__(self, i: SupportsIndex) -> Change: ...
    @overload
    def __getitem__(self, i: slice) -> list[Change]: ...
    def __getitem__(self, i: Any) -> Any:
        self._load()
        return super().__getitem__(i)

    def __eq__(self, other: object) -> bool:
        self._load()
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        self._load()
        return super().__repr__()

    def copy(self) -> list[Change]:
        self._load()
        return list(super().__iter__())

    def index(self, *args: Any) -> int:
        self._load()
        return super().index(*args)

    def count(self, value: Any) -> int:
        self._load()
        return super().count(value)
