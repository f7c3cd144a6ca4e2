"""``live``: live queries, re-run after the commits that touch the tables they read.

Owns: table discovery and result pictures (:mod:`.tables`), the per-replica registry that
receives ``changes_committed`` (:mod:`.registry`), :class:`~.query.LiveQuery` and its
subscriptions (:mod:`.query`), and the external-commit watcher (:mod:`.watch`).

May import: ``core`` (and, being above them, ``capture`` and ``sync``). Never the facade.
"""

from __future__ import annotations

from .query import LiveQuery, Subscription
from .registry import Registry
from .tables import ALL_TABLES, statement_tables
from .watch import Watcher

__all__ = ["ALL_TABLES", "LiveQuery", "Registry", "Subscription", "Watcher", "statement_tables"]
