"""``dimple.Session``: an ORM ``Session`` that can ``sync()``.

Capture does not depend on this class (it listens on every ``Session``); this subclass only
adds :meth:`Session.sync`, which needs to know its ``DimpleDb``: ``db.sessionmaker()`` puts
it in ``session.info["dimpledb"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import orm

from .core.errors import ConfigurationError

if TYPE_CHECKING:
    from .core.report import SyncReport
    from .db import DimpleDb

__all__ = ["Session"]


class Session(orm.Session):
    """An ORM session with :meth:`sync`."""

    @property
    def dimpledb(self) -> DimpleDb:
        db = self.info.get("dimpledb")
        if db is None:
            raise ConfigurationError(
                "this session does not know its DimpleDb: make it with db.sessionmaker() "
                "or pass info={'dimpledb': db}"
            )
        return db  # type: ignore[no-any-return]

    def sync(self) -> SyncReport:
        """Commit pending work, sync, then expire all objects so they show merged state.

        When the sync raises ``SyncError`` (partial success), objects are expired too.
        """
        db = self.dimpledb
        self.commit()
        try:
            return db.sync()
        finally:
            self.expire_all()
