"""One sync: :func:`sync` reads the keyring (:meth:`.remote.Remote.prepare`), pushes
(:mod:`.push`), pulls and merges (:mod:`.pull`), under the replica's sync lock (threads of
this process), reporting to ``progress`` (:mod:`.progress`), then sends
``changes_committed`` (origin ``"sync"``) for what the merge changed and the pull did not
announce yet (and what the push healed: our own transactions a restored backup lacked, counted
in ``pulled`` and ``applied``), and raises :class:`SyncError` (see :mod:`.report_errors`)
carrying the report when any author failed. A push that finds another database writing as
our author raises its ``CopyDetected`` (a ``ConfigurationError``) at once: nothing is
pulled either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.report import SyncReport
from .merge import announce
from .progress import Progress
from .pull import pull
from .push import push
from .report_errors import error_for

if TYPE_CHECKING:
    from ..core.replica import Replica
    from .remote import Remote

__all__ = ["pull", "push", "sync"]


def sync(replica: Replica, remote: Remote, progress: Progress | None = None) -> SyncReport:
    """Push, pull and merge; see the module docstring."""
    storage = remote.storage
    report = SyncReport()
    start = dict(storage.requests)
    with replica.sync_lock:
        remote.prepare(replica)  # the persisted recipients, keys and pins for this sync
        try:
            healed = push(replica, remote, report, progress)
            if healed is not None:
                announce(replica, healed.result)
            result = pull(replica, remote, report, progress)
        finally:
            report.requests = {k: v - start.get(k, 0) for k, v in storage.requests.items()
                               if v - start.get(k, 0)}
    if healed is not None:
        report.pulled += healed.transactions
        report.applied += healed.result.applied
    if result is not None:
        announce(replica, result)
    if report.errors:
        raise error_for(report)
    return report
