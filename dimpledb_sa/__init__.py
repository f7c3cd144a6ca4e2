"""dimpledb_sa: local-first, multi-device SQLAlchemy.

Attribute-level history of every ORM write, live queries, and multi-author, age-encrypted
sync through plain object storage. See ``README.md`` and ``docs/API.md``. This module only
re-exports the public names.

The package is layered; the sub-packages follow the data (ORM flush -> capture -> change
log -> signals -> live queries; change log -> sync: wire format -> encryption -> storage,
and back through the merge)::

    dimpledb_sa            the facade: DimpleDb (db.py), Session (session.py), signals,
                           AsyncDimpleDb and AsyncSession (aio.py), sqlmodel.py
    ├── cli/               the `dimpledb` command line            (tools: imports anything)
    ├── live/              live queries, external-commit watcher  (imports core, capture, sync)
    ├── capture/           ORM and Core writes -> change log      (imports core)
    ├── sync/              wire format, crypto, storage, merge    (imports core)
    └── core/              replica state: tables, codecs, clock, change log, schema
                           (imports only core)

The dependency rule: a module imports only its own layer or lower; ``capture`` and
``sync`` never import each other; nothing below the facade imports ``dimpledb_sa.db`` (or
this package), not even for typing: lower layers receive a
:class:`~dimpledb_sa.core.replica.Replica`. ``alembic_ext`` sits beside ``cli`` on top.
``tests/test_layers.py`` enforces it.
"""

from __future__ import annotations

from . import signals
from .aio import AsyncDimpleDb, AsyncSession
from .core.changes import Change
from .core.clock import new_id
from .core.conflicts import Conflict
from .core.errors import (
    ConfigurationError,
    DecryptionError,
    DimpleError,
    HistoryError,
    RemoteFormatError,
    RevertError,
    SignatureError,
    SyncError,
)
from .core.report import SyncReport
from .db import DimpleDb
from .live.query import LiveQuery
from .session import Session
from .sync.crypto import generate_identity
from .sync.keys import generate_device_key

__all__ = [
    "AsyncDimpleDb",
    "AsyncSession",
    "Change",
    "ConfigurationError",
    "Conflict",
    "DecryptionError",
    "DimpleDb",
    "DimpleError",
    "HistoryError",
    "LiveQuery",
    "RemoteFormatError",
    "RevertError",
    "Session",
    "SignatureError",
    "SyncError",
    "SyncReport",
    "generate_device_key",
    "generate_identity",
    "new_id",
    "signals",
]
