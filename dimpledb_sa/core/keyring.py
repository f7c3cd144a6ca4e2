"""``dimple_keys`` and ``dimple_signers``, the replica's keyring: the only module that reads
or writes them.

``dimple_keys`` lists the public keys this database encrypts to and trusts (``age1...``
and ``ssh-ed25519 AAAA...`` lines, in the canonical form :mod:`dimpledb_sa.sync.keys` and
:mod:`dimpledb_sa.sync.crypto` give them), each with when it was added and, once revoked,
when: a revoked key stays listed, for the record and so that it cannot come back by
accident. ``dimple_signers`` pins each remote author to the public key its files were first
seen signed with. What the keys *mean* (which to encrypt to, which signatures to accept)
is decided in :mod:`dimpledb_sa.sync.trust`; this module only stores them. Keys are
opaque, already validated strings here.

Every function works on the caller's connection, inside the caller's transaction. The
readers treat missing tables (a database made before they existed) as empty; the writers
create them first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, inspect, select, update

from .rows import insert_many
from .schema import keys, signers

__all__ = [
    "KeyRecord",
    "active_keys",
    "add_key",
    "ensure_tables",
    "list_keys",
    "pin",
    "pins",
    "restore_key",
    "revoke_key",
    "unpin",
]


@dataclass(frozen=True)
class KeyRecord:
    """One row of ``dimple_keys``."""

    public_key: str
    added_at: str
    revoked_at: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _has(conn: Connection, name: str) -> bool:
    return bool(inspect(conn).has_table(name))


def ensure_tables(conn: Connection) -> None:
    """Create ``dimple_keys`` and ``dimple_signers`` when the database lacks them."""
    for table in (keys, signers):
        if not _has(conn, table.name):
            table.create(conn, checkfirst=True)


# ------------------------------------------------------------------------------ keys


def list_keys(conn: Connection) -> list[KeyRecord]:
    """Every listed key, revoked ones included, in the order they were added."""
    if not _has(conn, keys.name):
        return []
    k = keys.c
    rows = conn.execute(select(k.public_key, k.added_at, k.revoked_at)
                        .order_by(k.added_at, k.public_key))
    return [KeyRecord(*row) for row in rows]


def active_keys(conn: Connection) -> list[str]:
    """The keys that are not revoked, in the order they were added."""
    return [r.public_key for r in list_keys(conn) if not r.revoked]


def _record(conn: Connection, key: str) -> KeyRecord | None:
    k = keys.c
    row = conn.execute(select(k.public_key, k.added_at, k.revoked_at)
                       .where(k.public_key == key)).first()
    return None if row is None else KeyRecord(*row)


def add_key(conn: Connection, key: str, now: str | None = None) -> KeyRecord | None:
    """List ``key`` (active) unless it is listed already; returns its record as it was
    before (``None``: newly added). A revoked key stays revoked: see :func:`restore_key`."""
    ensure_tables(conn)
    found = _record(conn, key)
    if found is None:
        insert_many(conn, keys, [(key, now or _now(), None)], ignore_existing=True)
    return found


def revoke_key(conn: Connection, key: str, now: str | None = None) -> KeyRecord | None:
    """Mark ``key`` revoked (listing it as revoked when it was not listed at all, so it
    cannot be added back by accident); returns its record as it was before."""
    ensure_tables(conn)
    when = now or _now()
    found = _record(conn, key)
    if found is None:
        insert_many(conn, keys, [(key, when, when)], ignore_existing=True)
    elif not found.revoked:
        conn.execute(update(keys).where(keys.c.public_key == key).values(revoked_at=when))
    return found


def restore_key(conn: Connection, key: str, now: str | None = None) -> KeyRecord | None:
    """Trust a revoked ``key`` again (or add it); returns its record as it was before."""
    found = add_key(conn, key, now)
    if found is not None and found.revoked:
        conn.execute(update(keys).where(keys.c.public_key == key).values(revoked_at=None))
    return found


# ------------------------------------------------------------------------------ signers


def pins(conn: Connection) -> dict[str, str]:
    """Remote author id -> the public key first seen signing its files."""
    if not _has(conn, signers.name):
        return {}
    s = signers.c
    return {a: k for a, k in conn.execute(select(s.author, s.public_key))}


def pin(conn: Connection, author: str, key: str, now: str | None = None) -> str:
    """Pin ``author`` to ``key`` unless it is pinned already; returns the pinned key (the
    earlier one when there was one: a pin is never overwritten, see :func:`unpin`)."""
    ensure_tables(conn)
    s = signers.c
    found: str | None = conn.execute(select(s.public_key).where(s.author == author)).scalar()
    if found is not None:
        return found
    insert_many(conn, signers, [(author, key, now or _now())], ignore_existing=True)
    pinned: str = conn.execute(select(s.public_key).where(s.author == author)).scalar_one()
    return pinned


def unpin(conn: Connection, author: str) -> bool:
    """Forget ``author``'s pinned key (its next signed file pins a new one); whether there
    was one."""
    if not _has(conn, signers.name):
        return False
    return bool(conn.execute(delete(signers).where(signers.c.author == author)).rowcount)
