"""``DimpleDb``: the object an application makes once per database; it wires the parts.

It resolves and checks the tracked tables, installs change capture on the engine's ORM
sessions, owns the clock and the author id, sends ``changes_committed``, and hands sync,
held-change replay, adoption, live queries and background sync to their own modules.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, MetaData, Table, insert, inspect, select
from sqlalchemy.orm import sessionmaker as _sessionmaker

from . import schema
from .capture import Capture
from .changes import Change, to_changes
from .clock import HybridClock, new_id
from .errors import ConfigurationError
from .log import ChangeRow, history
from .signals import LazyChanges, changes_committed
from .tracking import TrackedTable, resolve_tables

if TYPE_CHECKING:
    from sqlalchemy.sql import Executable

    from .bundle import Manifest
    from .crypto import Cipher
    from .live import LiveQuery, Watcher
    from .merge import MergeResult
    from .report import SyncReport
    from .session import Session
    from .storage import Storage

__all__ = ["DimpleDb"]

log = logging.getLogger("dimpledb_sa")


class DimpleDb:
    """Tracks the models' tables on ``engine``; see ``API.md`` for the contract."""

    def __init__(
        self,
        engine: Engine,
        models: Any,
        *,
        exclude: Iterable[Any] = (),
        remote: Any = None,
        storage_options: Mapping[str, Any] | None = None,
        identity: str | None = None,
        recipients: Sequence[str] | None = None,
        passphrase: str | None = None,
        encryption: bool = True,
        path: str | None = None,
    ) -> None:
        if not isinstance(engine, Engine):
            raise ConfigurationError(f"DimpleDb needs a SQLAlchemy Engine, got {engine!r}")
        self.engine = engine
        self.tracked: dict[str, TrackedTable] = resolve_tables(models, exclude)
        self.metadata: MetaData = schema.metadata
        self.clock = HybridClock()
        self.sync_lock = threading.RLock()
        self._author_id: str | None = None
        self._storage: Storage | None = None
        self._cipher: Cipher | None = None
        self._remote = remote
        self._background: Any = None
        self.own_manifest: Manifest | None = None
        if remote is not None:
            from .crypto import make_cipher
            from .storage import Storage

            self._cipher = make_cipher(identity=identity, recipients=recipients,
                                       passphrase=passphrase, encryption=encryption)
            self._storage = Storage.from_remote(remote, storage_options, path=path)
        self._capture = Capture(self)
        self._capture.install()

    # -- set-up ----------------------------------------------------------------------------
    def create_all(self, *, models: bool = True) -> None:
        """Create the bookkeeping tables and, unless ``models=False``, the tracked tables."""
        schema.metadata.create_all(self.engine)
        if models:
            for md in {id(t.table.metadata): t.table.metadata for t in self.tracked.values()
                       }.values():
                md.create_all(self.engine)
        _ = self.author_id

    @property
    def author_id(self) -> str:
        """This database's author id (UUIDv7), created once and kept in ``dimple_meta``."""
        if self._author_id is None:
            m = schema.meta
            with self.engine.begin() as conn:
                found = conn.execute(select(m.c.value).where(m.c.key == "author_id")).scalar()
                if found is None:
                    found = new_id()
                    conn.execute(insert(m).values(key="author_id", value=found))
            self._author_id = found
        return self._author_id

    def sessionmaker(self, **kw: Any) -> _sessionmaker[Session]:
        """A ``sessionmaker`` bound to the engine whose sessions are ``dimple.Session``."""
        from .session import Session

        info = dict(kw.pop("info", None) or {})
        info["dimpledb"] = self
        kw.setdefault("class_", Session)
        return _sessionmaker(bind=self.engine, info=info, **kw)

    def tracked_table(self, model: Any) -> TrackedTable:
        """The tracked table of a mapped class, a ``Table`` or a table name."""
        if isinstance(model, str):
            name = model
        elif isinstance(model, Table):
            name = model.name
        else:
            name = getattr(inspect(model).mapper.local_table, "name", "")
        try:
            return self.tracked[name]
        except KeyError:
            raise ConfigurationError(f"{model!r} is not a tracked table") from None

    # -- history ---------------------------------------------------------------------------
    def history(self, model: Any, entity_id: Any = None) -> list[Change]:
        """Changes of one entity, oldest first: ``history(Model, id)`` or ``history(obj)``."""
        if entity_id is None and not isinstance(model, type | str | Table):
            state = inspect(model)
            tt = self.tracked_table(type(model))
            entity_id = state.dict.get(tt.pk.key) if state.key is None else state.key[1][0]
            if entity_id is None:
                entity_id = getattr(model, tt.pk.key)
        tt = self.tracked_table(model if isinstance(model, type | str | Table) else type(model))
        with self.engine.connect() as conn:
            return history(conn, tt.name, str(entity_id))

    # -- signals ---------------------------------------------------------------------------
    def committed(self, tables: frozenset[str], make_changes: Callable[[], list[Change]],
                  origin: str) -> None:
        """Send ``changes_committed``; a receiver that raises is logged and skipped."""
        receivers = list(changes_committed.receivers_for(self))
        if not receivers:
            return
        changes = LazyChanges(make_changes)
        for receiver in receivers:
            try:
                receiver(self, tables=tables, changes=changes, origin=origin)
            except Exception:
                log.exception("a changes_committed receiver raised; ignored")

    def announce_sync(self, result: MergeResult) -> None:
        """Send ``changes_committed`` (origin ``"sync"``) for a committed merge."""
        authors = result.authors

        def make() -> list[Change]:
            return [Change(r[0], r[1], authors.get(r[1], ""), r[2], r[3], r[4],
                           None if r[5] is None else json.loads(r[5]),
                           None if r[6] is None else json.loads(r[6]))
                    for r in sorted(result.applied_changes)]

        self.committed(frozenset(result.tables), make, "sync")

    def to_changes(self, rows: Iterable[ChangeRow], author: str | None = None) -> list[Change]:
        """``Change`` records from per-attribute change rows written by ``author`` (us)."""
        return to_changes(rows, author or self.author_id)

    # -- sync and friends ------------------------------------------------------------------
    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise ConfigurationError("this DimpleDb has no remote: pass remote=... to sync")
        return self._storage

    @property
    def cipher(self) -> Cipher:
        if self._cipher is None:
            raise ConfigurationError("this DimpleDb has no remote: pass remote=... to sync")
        return self._cipher

    def sync(self) -> SyncReport:
        """Push local transactions, pull and merge the others'; see ``API.md``."""
        from .sync import sync

        return sync(self)

    def replay_held(self) -> int:
        """Apply held changes the schema can take now; returns how many were applied."""
        from .merge import replay_held

        with self.sync_lock, self.engine.connect() as conn:
            return replay_held(self, conn)

    def adopt(self) -> int:
        """Record tracked rows that have no history yet; returns how many rows."""
        from .adopt import adopt

        return adopt(self)

    def start_sync(self, interval: float = 30.0, **kw: Any) -> Any:
        """Sync in a background thread every ``interval`` seconds (see ``background``)."""
        from .background import BackgroundSync

        if self._background is None:
            self._background = BackgroundSync(self, interval=interval, **kw)
            self._background.start()
        return self._background

    def stop_sync(self, timeout: float | None = 10.0) -> None:
        if self._background is not None:
            self._background.stop(timeout)
            self._background = None

    def live(self, statement: Executable, **kw: Any) -> LiveQuery:
        """A live query over ``statement``; see ``dimpledb_sa.live``."""
        from .live import LiveQuery

        return LiveQuery(self, statement, **kw)

    def watch_external(self, interval: float = 0.5) -> Watcher:
        """Notice commits by other processes to the same SQLite file (opt-in)."""
        from .watch import Watcher

        return Watcher(self, interval=interval)

    def close(self) -> None:
        """Stop background sync, live queries and watchers; remove the capture listeners."""
        self.stop_sync()
        if "_live_registry" in self.__dict__:
            from .live import close_all

            close_all(self)
        self._capture.remove()

    def __repr__(self) -> str:
        return f"<DimpleDb {self.engine.url!r} tables={sorted(self.tracked)}>"
