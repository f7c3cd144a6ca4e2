"""Quarantine: the remote bundle files a pull could not use, kept in ``dimple_unreadable``.

A bundle that does not decrypt or decode, is larger than the read limit, is listed but
missing, or whose changes cannot be applied here, becomes a :class:`Problem`. The pull sets
it aside instead of stopping at it (its author's later bundles and every other author still
merge), records it here in the same database transaction as the cursors, and retries it on
every later sync (:func:`to_retry`: up to :data:`RETRY_LIMIT` files per author and sync,
the least recently tried first) until it reads, or until its author's manifest no longer
lists it (the pull then reads the listed bundles that hold its transactions now).
:func:`error_for_author` turns one author's problems into the error that ``report.errors``
names them by. The reasons that a writer can act on are published to it by :mod:`.notes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, select, update

from ..core import schema
from ..core.errors import DecryptionError, RemoteFormatError, SyncError
from ..core.rows import insert_many

__all__ = [
    "APPLY",
    "DECRYPT",
    "FORMAT",
    "MISSING",
    "NOTED",
    "READ",
    "RETRY_LIMIT",
    "TOO_LARGE",
    "Entry",
    "Problem",
    "error_for_author",
    "load",
    "record",
    "to_retry",
]

DECRYPT = "decrypt"
"""The file does not decrypt with our key (not encrypted to it, corrupt, truncated, tampered)."""
FORMAT = "format"
"""The plaintext is not a valid bundle, or does not match its manifest entry."""
TOO_LARGE = "too_large"
"""The stored file is larger than ``Storage.max_bundle_bytes``: it was not downloaded."""
MISSING = "missing"
"""The manifest lists the file but it is not there."""
APPLY = "apply"
"""The bundle reads, but its changes cannot be applied to this database."""
READ = "read"
"""Reading failed for another reason (network, permissions): not recorded, retried."""

NOTED = frozenset({DECRYPT, FORMAT, TOO_LARGE, MISSING})
"""The reasons published to the writer (re-uploading may cure them, except too_large)."""

RETRY_LIMIT = 64
"""Most quarantined files of one author retried in one sync."""

_SHOWN = 3  # files named in one author's error message


@dataclass(frozen=True)
class Problem:
    """A remote file that could not be used this sync, and why."""

    filename: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Entry:
    """A ``dimple_unreadable`` row."""

    author: str
    filename: str
    reason: str
    detail: str
    first_seen: str
    last_tried: str
    attempts: int


def load(conn: Connection) -> dict[str, dict[str, Entry]]:
    """Every quarantined file: author -> filename -> entry."""
    out: dict[str, dict[str, Entry]] = {}
    for row in conn.execute(select(schema.unreadable)):
        e = Entry(*row)
        out.setdefault(e.author, {})[e.filename] = e
    return out


def to_retry(entries: dict[str, Entry]) -> list[str]:
    """The quarantined files of one author to retry now: at most :data:`RETRY_LIMIT`, the
    least recently tried first."""
    ordered = sorted(entries.values(), key=lambda e: (e.last_tried, e.filename))
    return [e.filename for e in ordered[:RETRY_LIMIT]]


def record(conn: Connection, author: str, old: dict[str, Entry], problems: Sequence[Problem],
           cleared: Iterable[str], now: str) -> None:
    """Store one author's outcome: ``problems`` (new files, or quarantined ones that failed
    again) and ``cleared`` (quarantined files that merged, or that its manifest no longer
    lists), on ``conn`` inside the pull's transaction."""
    u = schema.unreadable
    gone = [f for f in cleared if f in old]
    if gone:
        conn.execute(delete(u).where(u.c.author == author, u.c.filename.in_(gone)))
    fresh = []
    for p in problems:
        was = old.get(p.filename)
        if was is None:
            fresh.append((author, p.filename, p.reason, p.detail[:2000], now, now, 1))
            continue
        first = now if was.reason != p.reason else was.first_seen
        conn.execute(update(u).where(u.c.author == author, u.c.filename == p.filename)
                     .values(reason=p.reason, detail=p.detail[:2000], first_seen=first,
                             last_tried=now, attempts=was.attempts + 1))
    insert_many(conn, u, fresh)


def error_for_author(problems: Sequence[Problem]) -> SyncError:
    """The error naming one author's unusable files: ``DecryptionError`` when none of them
    decrypts, ``RemoteFormatError`` when each is malformed, too large or unappliable,
    ``SyncError`` otherwise."""
    reasons = {p.reason for p in problems}
    shown = "; ".join(f"{p.filename} ({p.reason}: {p.detail})" for p in problems[:_SHOWN])
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    what = "file" if len(problems) == 1 else "files"
    msg = f"{len(problems)} {what} could not be used, retried on the next sync: {shown}{more}"
    if reasons == {DECRYPT}:
        return DecryptionError(msg)
    if reasons <= {FORMAT, TOO_LARGE, APPLY}:
        return RemoteFormatError(msg)
    return SyncError(msg)
