"""How a sync's failures are recorded in its report and raised: one entry per author.

:func:`fail` records that one author (or ``"push"``) failed, with the kind of failure
(``decrypt``, ``format`` or ``other``); :func:`error_for` is the ``SyncError`` (or its
``DecryptionError`` / ``RemoteFormatError`` subclass when every failure is of that kind)
a sync raises at the end, carrying the report.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..core.errors import DecryptionError, RemoteFormatError, SyncError

if TYPE_CHECKING:
    from ..core.report import SyncReport

__all__ = ["error_for", "fail"]

logger = logging.getLogger(__name__)


def error_for(report: SyncReport) -> SyncError:
    kinds = set(report.error_kinds.values()) if report.error_kinds else set()
    names = ", ".join(f"{a}: {m}" for a, m in sorted(report.errors.items()))
    msg = f"sync finished with errors ({len(report.errors)}): {names}"
    if kinds == {"decrypt"}:
        return DecryptionError(msg, report)
    if kinds == {"format"}:
        return RemoteFormatError(msg, report)
    return SyncError(msg, report)


def fail(report: SyncReport, who: str, exc: BaseException) -> None:
    kind = ("decrypt" if isinstance(exc, DecryptionError)
            else "format" if isinstance(exc, RemoteFormatError) else "other")
    report.errors[who] = str(exc) or type(exc).__name__
    report.error_kinds[who] = kind
    logger.warning("sync: %s: %s", who, report.errors[who])
