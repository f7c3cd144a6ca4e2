"""The exception tree of dimpledb_sa: every error the library raises on purpose.

::

    DimpleError
    ├── ConfigurationError      the library was set up wrongly (models, keys, remote)
    ├── HistoryError            the history asked for is not in the log (also a LookupError)
    ├── RevertError             an undo cannot apply to the rows as they are now
    └── SyncError               a sync could not finish; ``.report`` holds what it did
        ├── DecryptionError     a remote file does not decrypt with our key
        └── RemoteFormatError   a remote file or folder is malformed, hostile or unsafe
            └── SignatureError  a remote file's signature is missing, bad or untrusted

``SyncError`` and its subclasses carry the partial :class:`~dimpledb_sa.SyncReport` of
the sync that raised them (``None`` when raised below the sync layer, e.g. by the codec).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import SyncReport

__all__ = [
    "ConfigurationError",
    "DecryptionError",
    "DimpleError",
    "HistoryError",
    "RemoteFormatError",
    "RevertError",
    "SignatureError",
    "SyncError",
]


class DimpleError(Exception):
    """Root of every error raised by dimpledb_sa."""


class ConfigurationError(DimpleError):
    """Misconfiguration: unsupported model, missing key, bad remote, wrong arguments."""


class HistoryError(DimpleError, LookupError):
    """The history an operation needs is not in this database's change log: a transaction
    it never recorded (not made here, not pulled yet) or history ``prune_history`` dropped."""


class RevertError(DimpleError):
    """``db.revert()`` cannot apply its undo to the rows as they are now (a unique
    constraint, a foreign key, a column this schema lacks); nothing was written.
    ``transaction_id`` is the transaction that was to be reverted."""

    def __init__(self, message: str, transaction_id: str | None = None) -> None:
        super().__init__(message)
        self.transaction_id = transaction_id


class SyncError(DimpleError):
    """A sync did not complete cleanly; ``report`` holds the partial result."""

    def __init__(self, message: str, report: SyncReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class DecryptionError(SyncError):
    """A remote file could not be decrypted with the configured identity or passphrase."""


class RemoteFormatError(SyncError):
    """A remote manifest, bundle, file name or folder name is malformed or unsafe."""


class SignatureError(RemoteFormatError):
    """A remote file is unsigned where signatures are required, its signature does not
    verify, or it is signed by a key this replica does not trust."""
