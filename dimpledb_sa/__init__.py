"""dimpledb_sa: local-first, multi-device SQLAlchemy.

Attribute-level history of every ORM write, live queries, and multi-author, age-encrypted
sync through plain object storage. See README.md and API.md.
"""

from __future__ import annotations

from . import signals
from .changes import Change
from .clock import new_id
from .crypto import generate_identity
from .db import DimpleDb
from .errors import (
    ConfigurationError,
    DecryptionError,
    DimpleError,
    RemoteFormatError,
    SyncError,
)
from .live import LiveQuery
from .report import SyncReport
from .session import Session

__all__ = [
    "Change",
    "ConfigurationError",
    "DecryptionError",
    "DimpleDb",
    "DimpleError",
    "LiveQuery",
    "RemoteFormatError",
    "Session",
    "SyncError",
    "SyncReport",
    "generate_identity",
    "new_id",
    "signals",
]
