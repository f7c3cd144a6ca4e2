"""The blinker signals dimpledb_sa sends.

:data:`changes_committed` is sent once per committed transaction that recorded changes,
after the commit, never for a rollback: by capture for local ORM transactions (``origin=
"local"``) and by the merge for each sync that changed rows (``origin="sync"``). Its sender
is the ``DimpleDb``; keyword arguments:

- ``tables``: ``frozenset[str]`` of the tables the transaction wrote,
- ``changes``: ``list[Change]`` of the changes (for ``"sync"``: those applied to rows),
- ``origin``: ``"local"`` or ``"sync"``.

Receivers run synchronously in the committing thread. Connect with ``weak=False`` for a
closure; blinker holds receivers weakly by default. A receiver that raises is logged by
dimpledb_sa and does not stop the other receivers nor undo the commit.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = ["changes_committed", "namespace"]

namespace = Namespace()

changes_committed = namespace.signal(
    "changes-committed",
    doc="Sent after each committed transaction that recorded changes; see module docs.",
)
