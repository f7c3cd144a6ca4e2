"""One sync: :func:`sync` reads the keyring (:meth:`.remote.Remote.prepare`), pushes
(:mod:`.push`), pulls and merges (:mod:`.pull`), under the replica's sync lock (threads of
this process), then sends ``changes_committed`` (origin ``"sync"``) for what the merge
changed, and raises :class:`SyncError` (see
:mod:`.report_errors`) carrying the report when any author failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.report import SyncReport
from .merge import announce
from .pull import pull
from .push import push
from .report_errors import error_for

if TYPE_CHECKING:
    from ..core.replica import Replica
    from .remote import Remote

__all__ = ["pull", "push", "sync"]


def sync(replica: Replica, remote: Remote) -> SyncReport:
    """Push, pull and merge; see the module docstring."""
    storage = remote.storage
    report = SyncReport()
    start = dict(storage.requests)
    with replica.sync_lock:
        remote.prepare(replica)  # the persisted recipients, keys and pins for this sync
        try:
            push(replica, remote, report)
            result = pull(replica, remote, report)
        finally:
            report.requests = {k: v - start.get(k, 0) for k, v in storage.requests.items()
                               if v - start.get(k, 0)}
    if result is not None:
        announce(replica, result)
    if report.errors:
        raise error_for(report)
    return report
