"""``dimpledb_sa.sqlmodel``: sessions for SQLModel applications (needs ``sqlmodel``).

SQLModel classes are ordinary SQLAlchemy mappings: ``DimpleDb(engine, SQLModel)`` tracks
every table of ``SQLModel.metadata`` (or pass the table classes), and capture sees every
session that writes them, SQLModel's included. What SQLModel adds is its sessions'
``exec()``; these classes join it to :meth:`dimple.Session.sync <.session.Session.sync>`
and :meth:`dimple.AsyncSession.sync <.aio.AsyncSession.sync>`. ``db.sessionmaker()`` and
``adb.sessionmaker()`` make them by default when SQLModel classes map the tracked tables;
``sessionmaker(class_=sqlmodel.Session)`` works too (without ``sync()``).
"""

from __future__ import annotations

from sqlmodel import Session as _SQLModelSession
from sqlmodel.ext.asyncio.session import AsyncSession as _SQLModelAsyncSession

from .aio import AsyncSession as _DimpleAsyncSession
from .session import Session as _DimpleSession

__all__ = ["AsyncSession", "Session"]


class Session(_DimpleSession, _SQLModelSession):
    """``sqlmodel.Session`` (``exec()``) with ``sync()``."""


class AsyncSession(_DimpleAsyncSession, _SQLModelAsyncSession):
    """``sqlmodel.ext.asyncio.session.AsyncSession`` (``exec()``) with ``sync()``."""
