"""The process's one set of capture listeners, and the registry they dispatch through.

Every listener is registered here, once per process (``Session`` class events) or once per
engine (Core events), and never removed: a ``DimpleDb`` that is closed or collected only
leaves the registry, so nothing is removed from SQLAlchemy's listener lists while an event
is being dispatched, and a flush costs the same however many ``DimpleDb`` objects exist.

The registry maps an engine to the :class:`~.unit_of_work.Capture` objects on it (a copy
made with ``engine.execution_options(...)`` counts as its engine), held weakly: a
``DimpleDb`` that is dropped unclosed stops capturing when it is collected (a session that
captured something keeps its capture alive until its transaction ends, so no write loses
its log). A weak reference's callback, which the collector may run inside any code, only
bumps a generation counter. A session's captures are those of the engines its binds reach,
worked out once per session and registry change and cached (weakly too) in
``session.info``; a session whose class overrides ``get_bind`` (custom routing) is offered
to every capture, each of which checks the bind itself (so its cost grows with the number of
``DimpleDb`` objects).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Mapper, Session

from ..core._compat import root_engine, session_binds

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import ORMExecuteState, SessionTransaction, UOWTransaction

    from .unit_of_work import Capture

__all__ = ["captures_of", "register", "unregister"]

_lock = threading.Lock()
_Refs = list["weakref.ref[Capture]"]
_by_engine: weakref.WeakKeyDictionary[Engine, _Refs] = weakref.WeakKeyDictionary()
_generation = 0  # bumped on every registry change: sessions re-derive their captures
_session_listeners = False
_core_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_INFO_KEY = "dimpledb_sa.captures"


def register(capture: Capture, *, core: bool = False) -> None:
    """Dispatch the session events of ``capture.engine`` (and its Core events when
    ``core``) to ``capture`` while it lives."""
    global _generation
    engine = root_engine(capture.engine)
    with _lock:
        _install_session_listeners()
        if core and capture.engine not in _core_engines:
            _install_core_listeners(capture.engine)
            _core_engines.add(capture.engine)
        refs = [r for r in _by_engine.get(engine, ()) if r() is not None]
        refs.append(weakref.ref(capture, _forget))
        _by_engine[engine] = refs  # a new list: sessions may be iterating the old one
        _generation += 1


def unregister(capture: Capture) -> None:
    """Stop dispatching to ``capture``."""
    global _generation
    engine = root_engine(capture.engine)
    with _lock:
        refs = _by_engine.get(engine)
        if refs is not None:
            _by_engine[engine] = [r for r in refs if r() not in (None, capture)]
        _generation += 1


def _forget(_ref: Any) -> None:
    # a weakref callback can run inside any code (garbage collection): it only bumps the
    # generation; the dead reference is skipped, and dropped by the next registration
    global _generation
    _generation += 1


def _live(engine: Engine) -> list[Capture]:
    refs = _by_engine.get(root_engine(engine))
    if not refs:
        return []
    return [c for c in (r() for r in refs) if c is not None]


def captures_of(engine: Engine) -> list[Capture]:
    """The live captures on ``engine``."""
    return _live(engine)


def _session_captures(session: Session) -> _Refs:
    """Weak references to the captures a session's events go to (dead ones are skipped)."""
    cached = session.info.get(_INFO_KEY)
    if cached is not None and cached[0] == _generation and cached[1] is session.bind:
        found: _Refs = cached[2]
        return found
    generation = _generation
    if type(session).get_bind is not Session.get_bind:
        with _lock:
            engines = list(_by_engine.keys())
    else:
        engines = [root_engine(b) for b in (session.bind, *session_binds(session).values())
                   if b is not None]
    if len(engines) == 1:  # the common case: the engine's own list, shared
        found = _by_engine.get(engines[0]) or []
    else:
        found = [r for engine in dict.fromkeys(engines) for r in _by_engine.get(engine, ())]
    session.info[_INFO_KEY] = (generation, session.bind, found)
    return found


# -- the Session class listeners -------------------------------------------------------------
def _before_flush(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    for ref in _session_captures(session):
        capture = ref()
        if capture is not None:
            capture.before_flush(session)


def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    for ref in _session_captures(session):
        capture = ref()
        if capture is not None:
            capture.after_flush(session, flush_context)


def _before_commit(session: Session) -> None:
    for ref in _session_captures(session):
        capture = ref()
        if capture is not None:
            capture.before_commit(session)


def _after_commit(session: Session) -> None:
    for ref in _session_captures(session):
        capture = ref()
        if capture is not None:
            capture.after_commit(session)


def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    for ref in _session_captures(session):
        capture = ref()
        if capture is not None:
            capture.after_soft_rollback(session, previous_transaction)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    for ref in _session_captures(session):
        capture = ref()
        if capture is not None:
            capture.after_transaction_end(session, transaction)


def _do_orm_execute(state: ORMExecuteState) -> Any:
    if not (state.is_insert or state.is_update or state.is_delete):
        return None
    for ref in _session_captures(state.session):
        capture = ref()
        if capture is not None:
            result = capture.do_orm_execute(state)
            if result is not None:
                return result
    return None


def _before_write(mapper: Any, connection: Connection, state: Any) -> None:
    # a mapper event (raw: ``state`` is the InstanceState), before the flush writes its row
    session = state.session
    if session is None:
        return
    for ref in _session_captures(session):
        capture = ref()
        if capture is not None:
            capture.catch_up(session, connection, state)


def _after_begin(session: Session, transaction: SessionTransaction,
                 connection: Connection) -> None:
    if not _core_engines:  # only Core capture needs to know (no engine opted in)
        return
    for capture in _live(connection.engine):
        if capture.core is not None:
            capture.core.after_begin(session, connection)


def _install_session_listeners() -> None:
    global _session_listeners
    if _session_listeners:
        return
    event.listen(Session, "before_flush", _before_flush)
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "before_commit", _before_commit)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", _after_soft_rollback)
    event.listen(Session, "after_transaction_end", _after_transaction_end)
    event.listen(Session, "do_orm_execute", _do_orm_execute)
    event.listen(Session, "after_begin", _after_begin)
    event.listen(Mapper, "before_update", _before_write, raw=True)
    event.listen(Mapper, "before_delete", _before_write, raw=True)
    _session_listeners = True


# -- Core listeners, per engine that opted in --------------------------------------------------
def _core_captures(conn: Connection) -> list[Any]:
    return [c.core for c in _live(conn.engine) if c.core is not None]


def _before_execute(conn: Connection, elem: Any, multiparams: Any, params: Any,
                    opts: Any) -> None:
    for core in _core_captures(conn):
        core.before_execute(conn, elem, multiparams, params, opts)


def _after_execute(conn: Connection, elem: Any, multiparams: Any, params: Any, opts: Any,
                   result: Any) -> None:
    for core in _core_captures(conn):
        core.after_execute(conn, elem, result)


def _begin(conn: Connection) -> None:
    for core in _core_captures(conn):
        core.announce(conn.info)


def _commit(conn: Connection) -> None:
    for core in _core_captures(conn):
        core.commit(conn)


def _rollback(conn: Connection) -> None:
    for core in _core_captures(conn):
        core.rollback(conn)


def _rollback_savepoint(conn: Connection, name: str, context: Any) -> None:
    for core in _core_captures(conn):
        core.rollback_savepoint(conn, name)


def _install_core_listeners(engine: Engine) -> None:
    event.listen(engine, "before_execute", _before_execute)
    event.listen(engine, "after_execute", _after_execute)
    event.listen(engine, "begin", _begin)
    event.listen(engine, "commit", _commit)
    event.listen(engine, "rollback", _rollback)
    event.listen(engine, "rollback_savepoint", _rollback_savepoint)

    def checkin(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            for capture in _live(engine):
                if capture.core is not None:
                    capture.core.announce(record.info)

    event.listen(engine, "checkin", checkin)
