"""The databases tests run on: SQLite files, or schemas on the session's PostgreSQL server.

The ``database`` fixture (``conftest.py``) names the kind a test runs on, ``"sqlite"`` or
``"postgresql"``; every test that uses ``engine``, ``db`` or ``devs`` runs once per kind (on
PostgreSQL with the memory remote only, see ``conftest.pytest_generate_tests``).
:class:`Databases` makes the engines: a SQLite file ``{name}.db`` in the test's folder, or a
fresh schema on the server (``pgserver.PgServer.create_schema``) reached through the engine's
``search_path``. The same name gives the same database again (a second handle on it), and
:meth:`Databases.close` disposes every engine made and drops the schemas.

A test that is about SQLite by nature (its PRAGMAs, its file, its locks) is marked
``@pytest.mark.sqlite_only("reason")``: its PostgreSQL run is skipped with that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event

if TYPE_CHECKING:
    from pgserver import PgServer

__all__ = ["KINDS", "Databases", "sqlite_engine"]

KINDS = ("sqlite", "postgresql")


def sqlite_engine(path: Path, *, foreign_keys: bool = True) -> Engine:
    """An engine on the SQLite file ``path``, with ``PRAGMA foreign_keys=ON`` set on connect
    (and ``synchronous=OFF``: these tests crash no machine, and fsync is slow here)."""
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        if foreign_keys:
            cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


class Databases:
    """Engines of either kind for one test: SQLite files in ``folder``, PostgreSQL schemas on
    the server that ``server()`` returns (started on first use)."""

    def __init__(self, folder: Path, server: Callable[[], PgServer]) -> None:
        self.folder = folder
        self._server = server
        self._schemas: dict[str, str] = {}  # name -> schema
        self._engines: list[Engine] = []

    @property
    def server(self) -> PgServer:
        return self._server()

    def schema(self, name: str) -> str:
        """The PostgreSQL schema standing for the database ``name`` (made on first use)."""
        found = self._schemas.get(name)
        if found is None:
            found = self._schemas[name] = self.server.create_schema()
        return found

    def url(self, kind: str, name: str) -> str:
        """The URL of the database ``name`` (PostgreSQL: the server's, with the schema as the
        ``search_path`` in its query), for another process or an Alembic ``ini``."""
        if kind == "sqlite":
            return f"sqlite:///{self.folder / f'{name}.db'}"
        return self.server.schema_url(self.schema(name))

    def engine(self, kind: str, name: str, *, foreign_keys: bool = True,
               plain: bool = False, **kw: Any) -> Engine:
        """An engine on the database ``name`` of ``kind``. SQLite: ``sqlite_engine`` (with
        its PRAGMAs) unless ``plain``; ``kw`` goes to ``create_engine``."""
        if kind == "sqlite":
            path = self.folder / f"{name}.db"
            eng = (create_engine(f"sqlite:///{path}", **kw) if plain or kw
                   else sqlite_engine(path, foreign_keys=foreign_keys))
        elif kind == "postgresql":
            eng = create_engine(self.url(kind, name), **kw)
        else:
            raise ValueError(f"unknown database kind {kind!r}")
        self._engines.append(eng)
        return eng

    def close(self) -> None:
        for eng in self._engines:
            eng.dispose()
        self._engines.clear()
        if self._schemas:
            server = self.server
            for schema in self._schemas.values():
                server.drop_schema(schema)
            self._schemas.clear()
