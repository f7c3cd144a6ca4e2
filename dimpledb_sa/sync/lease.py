"""The push lease: which push of a database may talk to the remote now, without holding the
database's write lock while it does.

A push never keeps a database transaction open during remote I/O. Pushers of the same
database (threads with their own ``DimpleDb``, processes) are kept apart by a lease kept in
``dimple_meta.push_lease`` (through :mod:`dimpledb_sa.core.meta`): the holder's id
(``host:pid:random``) and an expiry time. Every step is its own short write transaction:

- :func:`take` gives the lease to ``holder`` when it is free, expired, or held by a process
  of this host that no longer exists (a crashed push); otherwise it returns the current
  holder and the push is skipped (it does not wait: its transactions go with the holder's
  push or the next one);
- :func:`renew` extends it before each remote write (a bundle, the manifest), so a long push
  keeps it, and tells the push when it lost it (it outlived :data:`LEASE_SECONDS` between
  two steps and another push took over: it stops before writing anything more);
- :func:`record` advances ``pushed_through`` only while the lease is still the holder's;
- :func:`release` gives it up (a crash leaves it to expire).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core import meta

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["LEASE_SECONDS", "Lease", "new_holder", "record", "release", "renew", "take"]

logger = logging.getLogger(__name__)

LEASE_SECONDS = 120.0
"""How long a lease lasts after it was taken or last renewed: longer than one remote write
(a bundle of at most ``push.MAX_BUNDLE_CHANGES`` changes, or the manifest) can take."""


@dataclass(frozen=True)
class Lease:
    """A lease as stored: who holds it and until when (Unix time, seconds)."""

    holder: str
    expires: float

    def encode(self) -> str:
        return f"{self.holder} {self.expires:.3f}"

    @classmethod
    def decode(cls, text: str | None) -> Lease | None:
        if not text:
            return None
        holder, _, expires = text.rpartition(" ")
        try:
            return cls(holder, float(expires))
        except ValueError:
            return None  # unreadable: treated as free

    def live(self, now: float | None = None) -> bool:
        """Not expired, and not held by a process of this host that is gone."""
        return (self.expires > (time.time() if now is None else now)
                and not _process_gone(self.holder))

    def describe(self) -> str:
        left = self.expires - time.time()
        return f"{self.holder} (for {max(0.0, left):.0f} s more at most)"


def new_holder() -> str:
    """A holder id for one push: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _process_gone(holder: str) -> bool:
    """True when ``holder`` names a process of this host that does not exist any more."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or sys.platform == "win32":
        return False  # os.kill(pid, 0) would terminate the process on Windows
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (e.g. another user's)
    return False


def _current(conn: Connection) -> Lease | None:
    return Lease.decode(meta.get(conn, meta.PUSH_LEASE))


def _ours(conn: Connection, holder: str) -> bool:
    lease = _current(conn)
    return lease is not None and lease.holder == holder


def take(engine: Engine, holder: str) -> Lease | None:
    """Take the lease for ``holder`` (``None``), or return the live lease of another."""
    with engine.begin() as conn:
        meta.take_write_lock(conn)
        lease = _current(conn)
        now = time.time()
        if lease is not None and lease.holder != holder and lease.live(now):
            return lease
        if lease is not None and lease.holder != holder:
            logger.info("push lease of %s %s: taking it over", lease.holder,
                        "expired" if lease.expires <= now else "(its process is gone)")
        meta.put(conn, meta.PUSH_LEASE, Lease(holder, now + LEASE_SECONDS).encode())
    return None


def renew(engine: Engine, holder: str) -> bool:
    """Extend ``holder``'s lease; ``False`` when it is not ``holder``'s any more."""
    with engine.begin() as conn:
        meta.take_write_lock(conn)
        if not _ours(conn, holder):
            return False
        meta.put(conn, meta.PUSH_LEASE, Lease(holder, time.time() + LEASE_SECONDS).encode())
    return True


def record(engine: Engine, holder: str, pushed_through: str) -> bool:
    """Set ``pushed_through`` while the lease is ``holder``'s; ``False`` (nothing set) when
    another push took it over."""
    with engine.begin() as conn:
        meta.take_write_lock(conn)
        if not _ours(conn, holder):
            return False
        meta.put(conn, meta.PUSHED_THROUGH, pushed_through)
    return True


def release(engine: Engine, holder: str) -> None:
    """Give the lease up (when it is still ``holder``'s)."""
    with engine.begin() as conn:
        meta.take_write_lock(conn)
        if _ours(conn, holder):
            meta.remove(conn, meta.PUSH_LEASE)
