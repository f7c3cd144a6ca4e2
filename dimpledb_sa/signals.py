"""``dimpledb_sa.signals``: the public name of :mod:`dimpledb_sa.core.signals`."""

from __future__ import annotations

from .core.signals import (
    LazyChanges,
    changes_committed,
    namespace,
    send_committed,
    send_sync_failed,
    sync_failed,
)

__all__ = [
    "LazyChanges",
    "changes_committed",
    "namespace",
    "send_committed",
    "send_sync_failed",
    "sync_failed",
]
