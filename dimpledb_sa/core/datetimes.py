"""``DateTime(timezone=True)`` on SQLite: aware UTC values, as PostgreSQL gives.

SQLite has no time-zone type, and SQLAlchemy's SQLite ``DATETIME`` drops the offset of an
aware value (storing its wall time, a different instant) and reads every value back naive,
while PostgreSQL's ``timestamptz`` keeps the instant and reads it back aware. Replicas on the
two would hold different Python values for one change. :func:`use_utc_datetimes` gives a
tracked SQLite engine's dialect a ``DATETIME`` that, for ``timezone=True`` columns only,
stores aware values converted to UTC (naive values as they are, taken as UTC) and reads
values back aware in UTC. Naive ``DateTime`` columns are untouched. The engine's dialect is
changed, not the models: other engines on the same models keep SQLAlchemy's behaviour.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy import types as sqltypes
from sqlalchemy.dialects.sqlite import DATETIME

from ._compat import forget_type_impls

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Engine
    from sqlalchemy.engine.interfaces import Dialect

__all__ = ["UTCDateTime", "use_utc_datetimes"]

UTC = dt.UTC


class UTCDateTime(DATETIME):
    """SQLite's ``DATETIME``; with ``timezone=True``: UTC on the way in, aware on the way
    out."""

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        inner = super().bind_processor(dialect)
        if not self.timezone or inner is None:
            return inner
        to_text = inner

        def process(value: Any) -> Any:
            if isinstance(value, dt.datetime) and value.tzinfo is not None:
                with contextlib.suppress(OverflowError):  # near datetime.min/max: wall time
                    value = value.astimezone(UTC)
                value = value.replace(tzinfo=None)
            return to_text(value)

        return process

    def result_processor(self, dialect: Dialect, coltype: object
                         ) -> Callable[[Any], Any] | None:
        inner = super().result_processor(dialect, coltype)
        if not self.timezone or inner is None:
            return inner
        from_text = inner

        def process(value: Any) -> Any:
            value = from_text(value)
            if isinstance(value, dt.datetime) and value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            return value

        return process


def use_utc_datetimes(engine: Engine) -> None:
    """Make ``engine`` (SQLite) read and write ``DateTime(timezone=True)`` as aware UTC."""
    dialect = engine.dialect
    if dialect.name != "sqlite" or dialect.colspecs.get(sqltypes.DateTime) is UTCDateTime:
        return
    dialect.colspecs = {**dialect.colspecs, sqltypes.DateTime: UTCDateTime}
    forget_type_impls(dialect)
