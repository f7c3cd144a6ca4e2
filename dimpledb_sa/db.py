"""``DimpleDb``: the object an application makes once per database; it wires the layers.

It resolves and checks the tracked tables, builds the :class:`~.core.replica.Replica` the
lower layers share, installs change capture, opens the remote, and hands sync, held-change
replay, adoption, undo and time travel, live queries and background sync to their own
modules. It is the sender
of the signals. Nothing below it imports it (see ``tests/test_layers.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, MetaData, Table, inspect
from sqlalchemy.exc import NoInspectionAvailable
from sqlalchemy.orm import sessionmaker as _sessionmaker

from .capture.unit_of_work import Capture
from .core import changelog, schema
from .core.changelog import history
from .core.clock import DEFAULT_MAX_DRIFT, MAX_ID_AHEAD
from .core.datetimes import use_utc_datetimes
from .core.errors import ConfigurationError
from .core.replica import Replica
from .core.tracking import TrackedTable, declared_with_sqlmodel, resolve_tables

if TYPE_CHECKING:
    import threading
    from datetime import datetime

    from sqlalchemy.sql import Executable

    from .core.changes import Change
    from .core.clock import HybridClock
    from .core.conflicts import Conflict
    from .core.report import SyncReport
    from .live.query import LiveQuery
    from .live.registry import Registry
    from .live.watch import Watcher
    from .session import Session
    from .sync.background import BackgroundSync
    from .sync.crypto import Cipher
    from .sync.remote import Remote
    from .sync.storage import Storage

__all__ = ["DimpleDb"]


class DimpleDb:
    """Tracks the models' tables on ``engine``; see ``docs/API.md`` for the reference."""

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
        require_signatures: bool | None = None,
        max_drift: timedelta = DEFAULT_MAX_DRIFT,
    ) -> None:
        if not isinstance(engine, Engine):
            hint = (": for an AsyncEngine use dimple.AsyncDimpleDb(async_engine, models)"
                    if type(engine).__name__ == "AsyncEngine" else "")
            raise ConfigurationError(f"DimpleDb needs a SQLAlchemy Engine, got {engine!r}{hint}")
        _check_drift(max_drift)
        self.engine = engine
        use_utc_datetimes(engine)  # SQLite: DateTime(timezone=True) aware, as elsewhere
        self.tracked: dict[str, TrackedTable] = resolve_tables(models, exclude)
        self.uses_sqlmodel = declared_with_sqlmodel(self.tracked)
        """Whether SQLModel classes map the tracked tables (then :meth:`sessionmaker` makes
        sessions of :class:`dimpledb_sa.sqlmodel.Session`, which have ``exec()``)."""
        self.metadata: MetaData = schema.metadata
        self.replica = Replica(engine, self.tracked, sender=self, max_drift=max_drift)
        self._remote: Remote | None = None
        if remote is not None:
            from .sync.remote import Remote

            self._remote = Remote.open(remote, storage_options=storage_options, path=path,
                                       identity=identity, recipients=recipients,
                                       passphrase=passphrase, encryption=encryption,
                                       require_signatures=require_signatures)
        self._background: BackgroundSync | None = None
        self._live: Registry | None = None
        self._capture = Capture(self.replica)
        self._capture.install()

    # -- set-up ----------------------------------------------------------------------------
    def create_all(self, *, models: bool = True) -> None:
        """Create the bookkeeping tables and, unless ``models=False``, the tracked tables
        (bringing those an earlier version made up to date)."""
        schema.metadata.create_all(self.engine)
        with self.engine.begin() as conn:  # bookkeeping tables of an earlier release
            changelog.upgrade(conn)
            changelog.mark_layout(conn)
        if models:
            for md in {id(t.table.metadata): t.table.metadata for t in self.tracked.values()
                       }.values():
                md.create_all(self.engine)
        _ = self.author_id

    @property
    def author_id(self) -> str:
        """This database's author id (UUIDv7), created once and kept in ``dimple_meta``."""
        return self.replica.author_id

    @property
    def clock(self) -> HybridClock:
        """The hybrid logical clock that issues this database's change ids."""
        return self.replica.clock

    @property
    def sync_lock(self) -> threading.RLock:
        """Held while this process syncs, replays held changes or adopts rows."""
        return self.replica.sync_lock

    def sessionmaker(self, **kw: Any) -> _sessionmaker[Session]:
        """A ``sessionmaker`` bound to the engine whose sessions are ``dimple.Session`` (for
        SQLModel models :class:`dimpledb_sa.sqlmodel.Session`, which also has ``exec()``);
        ``class_=`` picks another ``Session`` subclass (e.g. ``sqlmodel.Session``)."""
        if "class_" not in kw:
            if self.uses_sqlmodel:
                from .sqlmodel import Session as SQLModelSession

                kw["class_"] = SQLModelSession
            else:
                from .session import Session

                kw["class_"] = Session
        info = dict(kw.pop("info", None) or {})
        info["dimpledb"] = self
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

    # -- undo and time travel --------------------------------------------------------------
    def revert(self, transaction_id: Any) -> str | None:
        """Undo one transaction (any author's) as a new local transaction; returns its id,
        or ``None`` when nothing needed undoing. See :mod:`.capture.revert` for the rules."""
        from .capture.revert import revert

        return revert(self.replica, transaction_id)

    def as_of(self, model: Any, entity_id: Any, when: datetime) -> dict[str, Any] | None:
        """The entity's attribute values (Python values, as the ORM loads them) as of
        ``when`` (an aware ``datetime``), from its history; ``None`` when it did not exist
        then. Keys are the mapped attribute names for a mapped class, column names for a
        ``Table`` or table name."""
        from .core.timeline import check_not_pruned, entity_as_of, id_bound

        bound = id_bound(when)
        eid = str(entity_id)
        out: dict[str, Any] = {}
        with self.engine.connect() as conn:
            check_not_pruned(conn, bound, f"as_of({eid}, {when.isoformat()})")
            for tt, keys in self._attribute_keys(model):
                values = entity_as_of(conn, tt, eid, bound)
                if values is None:
                    return None
                out.update((keys.get(name, name), v) for name, v in values.items())
        return out

    def _attribute_keys(self, model: Any) -> list[tuple[TrackedTable, dict[str, str]]]:
        """The tracked tables an entity of ``model`` is stored in (base table first), each
        with its column name -> attribute key (empty for a ``Table`` or a table name)."""
        if isinstance(model, str | Table):
            return [(self.tracked_table(model), {})]
        from .core.tracking import mapper_plans

        try:
            mapper = inspect(model).mapper
        except (NoInspectionAvailable, AttributeError):
            raise ConfigurationError(f"{model!r} is not a mapped class, a Table or a table "
                                     "name") from None
        plans = mapper_plans(mapper, self.tracked)
        if not plans:
            raise ConfigurationError(f"{model!r} is not a tracked table")
        return [(p.tracked, {column: key for key, column, _ in p.attrs}) for p in plans]

    # -- conflicts -------------------------------------------------------------------------
    def conflicts(self) -> list[Conflict]:
        """The changes merges keep out of the tables (a unique value another row holds, a
        missing parent row, a row the database refuses), still unresolved; see
        ``docs/API.md``, *Conflicts*."""
        from .core.conflicts import read

        with self.engine.connect() as conn:
            return read(conn)

    def discard(self, conflict: Conflict) -> str | None:
        """Give up a conflict's kept-out change with a new local transaction (it syncs like
        any other): a delete of the row kept out of its table, or, for a row that stays with
        a value the rules chose, that value. Returns the transaction id (``None``: nothing
        to record). The conflict is gone here at once and everywhere after their next sync.
        """
        from .core import meta
        from .core.changes import ROW_TRANSACTION
        from .core.conflicts import discard
        from .sync.merge import settle_local

        with self.replica.sync_lock, self.engine.begin() as conn:
            meta.take_write_lock(conn)
            rows = discard(self.replica, conn, conflict)
            if rows:
                settle_local(self.replica, conn)
        if not rows:
            return None
        self.replica.committed_local(rows)
        return rows[0][ROW_TRANSACTION]

    # -- sync and friends ------------------------------------------------------------------
    @property
    def remote(self) -> Remote:
        """The remote this database syncs with (``ConfigurationError`` when it has none)."""
        if self._remote is None:
            raise ConfigurationError("this DimpleDb has no remote: pass remote=... to sync")
        return self._remote

    @property
    def storage(self) -> Storage:
        return self.remote.storage

    @property
    def cipher(self) -> Cipher:
        return self.remote.cipher

    def sync(self, progress: Callable[[str, int, int], None] | None = None) -> SyncReport:
        """Push local transactions, pull and merge the others'; see ``docs/API.md``.

        ``progress(phase, done, total)`` is called as the work advances (phases ``"push"``,
        ``"pull"``, ``"merge"``; see :mod:`dimpledb_sa.sync.progress`)."""
        from .sync.run import sync

        return sync(self.replica, self.remote, progress)

    # ------------------------------------------------ snapshots, compaction, retention

    def snapshot(self) -> str:
        """Push, then write a snapshot of this device's pushed changes; returns its name."""
        from .sync.compact import take_snapshot

        return take_snapshot(self.replica, self.remote)

    def compact(self) -> int:
        """Snapshot, then remove this device's bundles it covers; returns how many."""
        from .sync.compact import compact

        return compact(self.replica, self.remote)

    def prune_history(self, older_than: timedelta) -> int:
        """Drop superseded local changes older than ``older_than``; returns how many."""
        from .core.prune import prune_history

        with self.replica.sync_lock:
            return prune_history(self.replica, older_than)

    def restore_pruned_values(self) -> int:
        """Store back into the log the values ``prune_history`` dropped (the live rows hold
        them); returns how many log rows got them back. Call it before a migration drops
        or changes a column, or drops a table, of a database whose history was pruned."""
        from .core.prune import restore_pruned_values

        with self.replica.sync_lock:
            return restore_pruned_values(self.replica)

    def reauthor(self) -> str:
        """Give this database a new author id, moving its unpushed transactions to it (a
        copied database file; see :mod:`.sync.reauthor`); returns the new id."""
        from .sync.reauthor import reauthor

        with self.replica.sync_lock:
            done = reauthor(self.engine)
            self.replica.forget_author()
            if self._remote is not None:
                self._remote.own_manifest, self._remote.own_known = None, False
        return done.new

    def replay_held(self) -> int:
        """Apply held changes the schema can take now; returns how many were applied."""
        from .sync.merge import replay_held

        with self.replica.sync_lock, self.engine.connect() as conn:
            return replay_held(self.replica, conn)

    def adopt(self) -> int:
        """Record tracked rows that have no history yet; returns how many rows."""
        from .capture.adopt import adopt

        return adopt(self.replica)

    def start_sync(self, interval: float = 30.0, **kw: Any) -> BackgroundSync:
        """Sync in a background thread every ``interval`` seconds (see
        :mod:`.sync.background`)."""
        from .sync.background import BackgroundSync

        if self.engine.dialect.is_async:
            raise ConfigurationError(
                "this DimpleDb is on an async engine's sync_engine, which a thread cannot use: "
                "use dimple.AsyncDimpleDb(async_engine, ...).start_sync() (a task of the loop)")
        if self._background is None:
            _ = self.remote  # ConfigurationError now, in the caller, when there is no remote
            self._background = BackgroundSync(self.sync, sender=self, interval=interval, **kw)
            self._background.start()
        return self._background

    def stop_sync(self, timeout: float | None = 10.0) -> None:
        if self._background is not None:
            self._background.stop(timeout)
            self._background = None

    # -- live queries ----------------------------------------------------------------------
    @property
    def live_registry(self) -> Registry:
        """This database's live-query registry (made on first use)."""
        if self._live is None:
            from .live.registry import Registry

            self._live = Registry(self.replica)
        return self._live

    def live(self, statement: Executable, **kw: Any) -> LiveQuery:
        """A live query over ``statement``; see :mod:`.live.query`."""
        from .live.query import LiveQuery

        return LiveQuery(self.live_registry, statement, **kw)

    def watch_external(self, interval: float = 0.5) -> Watcher:
        """Notice commits by other processes to the same SQLite file or PostgreSQL database
        (opt-in; see :mod:`.live.watch`)."""
        from .live.watch import Watcher

        if self.engine.dialect.is_async:
            raise ConfigurationError("watch_external() needs a sync Engine: it is not available "
                                     "on an async engine (AsyncDimpleDb) yet")
        return Watcher(self.live_registry, interval=interval)

    def close(self) -> None:
        """Stop background sync, live queries and watchers; stop capturing."""
        self.stop_sync()
        if self._live is not None:
            self._live.close_all()
        self._capture.remove()

    def __repr__(self) -> str:
        return f"<DimpleDb {self.engine.url!r} tables={sorted(self.tracked)}>"


def _check_drift(max_drift: object) -> None:
    if not isinstance(max_drift, timedelta) or not (
            timedelta(0) <= max_drift <= MAX_ID_AHEAD):
        raise ConfigurationError(
            f"max_drift= must be a datetime.timedelta from 0 to {MAX_ID_AHEAD.days} days "
            f"(default {DEFAULT_MAX_DRIFT}), not {max_drift!r:.60}")
