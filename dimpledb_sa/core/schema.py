"""The bookkeeping tables: the change log, transactions, sync cursors, held changes, meta.

All live in their own :data:`metadata` (what Alembic's ``target_metadata`` may include and
what ``alembic_ext`` keeps out of autogenerate); every name starts with ``dimple_``.

- ``dimple_changes``: the change log, packed: one row per run of attribute changes of one
  entity in one transaction whose ids are consecutive (see :mod:`.changelog`, which alone
  reads and writes it and owns its stored form): keyed and clustered by (entity_type,
  entity_id, first change id) (``WITHOUT ROWID`` on SQLite), so "the changes of one entity"
  (and so the latest of each of its attributes) is one range of the table itself; then the
  transaction id (``ix_dimple_changes_transaction``), the attribute names as a reference to
  ``dimple_names``, and the JSON arrays of old values (``NULL`` when all are null: an
  insert) and new values (the entity id's own value elided). On SQLite ids are stored as
  their 16 bytes. A row whose new values ``prune_history`` dropped (old winning changes
  whose values are the live row's, see :mod:`.restore`) has the empty text as new values,
  is left out of the transaction index (a partial index), and on SQLite holds its
  transaction id as the number of counter steps it lies before the row's first id when it
  is such an id (as a local transaction's is).
- ``dimple_names``: the JSON lists of attribute names the log's rows name, each once, keyed
  by a hash of its text (so every database and process gives a list the same key).
- ``dimple_pending``: local transactions not yet folded into ``dimple_changes``: one row
  per transaction, its author, its packed rows as one JSON body (see :mod:`.pending`: the
  change ids are the transaction's run, implied by the rows' order; earlier versions
  spelled each row's first id) and the JSON list of its tables. A commit writes one such
  row and nothing else (no indexed row per entity, no ``dimple_transactions`` row);
  :func:`.changelog.fold` moves them into the indexed log and the transaction table before
  a merge, a replay or an adoption, during a push (in short steps), and when more than
  ``log.PENDING_LIMIT`` have gathered. ``author`` is null
  in rows an earlier version wrote (with their ``dimple_transactions`` row), and missing
  from a table it made until :func:`.changelog.ensure_pending_author` adds it.
- ``dimple_transactions``: one row per folded or pulled transaction (id, author).
- ``dimple_cursors``: per remote author, the last transaction id of the bundles a pull has
  dealt with in manifest order: merged, or set aside in ``dimple_unreadable``.
- ``dimple_unreadable``: per remote author, the bundle files a pull could not use (unreadable,
  too large, missing, or whose changes cannot be applied here), with why, since when and how
  often tried; each is retried on every sync until it reads (see :mod:`..sync.quarantine`).
- ``dimple_peers``: per remote author, what its "could not read" notes say about our
  bundles (and what we re-sent for them), with the digest of its manifest when they were
  read; for our own author, the notes we published (see :mod:`..sync.notes`).
- ``dimple_held``: (entity, attribute) pairs whose logged changes this schema could not
  apply yet (unknown table or column, a parent row never seen), with the reason.
- ``dimple_ahead``: pulled transactions further ahead of local time than ``max_drift``,
  whole (bundle JSON, author, largest id, change count), until local time catches up (see
  :mod:`..sync.ahead`).
- ``dimple_conflicts``: changes the merge keeps out of the tables by a conflict (see
  :mod:`.conflicts`): the entity, the kind, the attribute, the change kept out (id,
  transaction, values), the row it collided with, a hash of the colliding unique key and a
  sentence. Rows with ``listed`` false only let the merge find the entity again (a key its
  fallback value collided on). Derived state: every merge that decides an entity rewrites
  its rows.
- ``dimple_meta``: key/value settings (``author_id``, ``clock``, ``pushed_through``), read and
  written only by :mod:`.meta`.
- ``dimple_keys``: the public keys this database encrypts to and trusts (``age1...`` and
  ``ssh-ed25519 AAAA...`` in canonical form), when each was added and, for a revoked one,
  when it was revoked (kept for the record); read and written only by :mod:`.keyring`.
- ``dimple_signers``: per remote author, the public key its signatures were first seen
  with (key pinning), and when; owned by :mod:`.keyring` too.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import UserDefinedType

__all__ = [
    "BOOKKEEPING_PREFIX",
    "ahead",
    "changes",
    "conflicts",
    "cursors",
    "held",
    "keys",
    "meta",
    "metadata",
    "names",
    "peers",
    "pending",
    "signers",
    "transactions",
    "unreadable",
]

BOOKKEEPING_PREFIX = "dimple_"

metadata = MetaData()

_ID = String(36).with_variant(String(36, collation="C"), "postgresql")
"""Ids compare as strings in SQL: byte order on PostgreSQL too, whatever its collation."""


class _Blob(UserDefinedType[bytes]):
    """A column of SQLite's BLOB affinity whose values pass through untouched (bytes stay
    bytes and text stays text: no bind or result processing)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "BLOB"


_BID = _Blob().with_variant(String(36, collation="C"), "postgresql")
"""A change or transaction id in ``dimple_changes``: 16 bytes on SQLite (the UUID's bytes,
which sort as its text does), the 36-character text elsewhere."""
_KEY = _Blob().with_variant(String(255), "postgresql")
"""An entity id in ``dimple_changes``: on SQLite the 16 bytes of an id that is a canonical
(lowercase) UUID's text, any other id as its text; the text elsewhere."""

changes = Table(
    "dimple_changes",
    metadata,
    Column("entity_type", String(255), primary_key=True),
    Column("entity_id", _KEY, primary_key=True),
    Column("id", _BID, primary_key=True),
    Column("transaction_id", _BID, nullable=False),
    Column("names", BigInteger, nullable=False),
    Column("old_values", Text, nullable=True),
    Column("new_values", Text, nullable=False),
    Index("ix_dimple_changes_transaction", "transaction_id",
          sqlite_where=text("new_values != ''"), postgresql_where=text("new_values != ''")),
    sqlite_with_rowid=False,
)

names = Table(
    "dimple_names",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("names", Text, nullable=False),
)

pending = Table(
    "dimple_pending",
    metadata,
    Column("seq", Integer, primary_key=True),
    Column("transaction_id", _ID, nullable=False),
    Column("author", _ID),  # before the body (a reader of it skips no overflow pages)
    Column("tables", Text, nullable=False),
    Column("body", Text, nullable=False),
)

transactions = Table(
    "dimple_transactions",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("author", _ID, nullable=False),
    Index("ix_dimple_transactions_author", "author", "id"),
    sqlite_with_rowid=False,
)

cursors = Table(
    "dimple_cursors",
    metadata,
    Column("author", _ID, primary_key=True),
    Column("last_transaction_id", _ID, nullable=False),
    Column("synced_at", String(32), nullable=False),
)

unreadable = Table(
    "dimple_unreadable",
    metadata,
    Column("author", _ID, primary_key=True),
    Column("filename", String(80), primary_key=True),
    Column("reason", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Column("first_seen", String(32), nullable=False),
    Column("last_tried", String(32), nullable=False),
    Column("attempts", Integer, nullable=False),
)

peers = Table(
    "dimple_peers",
    metadata,
    Column("author", _ID, primary_key=True),
    Column("manifest_digest", String(64)),
    Column("notes", Text, nullable=False),
)

held = Table(
    "dimple_held",
    metadata,
    Column("entity_type", String(255), primary_key=True),
    Column("entity_id", String(255), primary_key=True),
    Column("attribute", String(255), primary_key=True),
    Column("reason", String(255), nullable=False),
)

ahead = Table(
    "dimple_ahead",
    metadata,
    Column("transaction_id", _ID, primary_key=True),
    Column("author", _ID, nullable=False),
    Column("newest", _ID, nullable=False, index=True),
    Column("changes", Integer, nullable=False),
    Column("body", Text, nullable=False),
)

conflicts = Table(
    "dimple_conflicts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("entity_type", String(255), nullable=False),
    Column("entity_id", String(255), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("attribute", String(255)),
    Column("change_id", _ID, nullable=False),
    Column("transaction_id", _ID, nullable=False),
    Column("change_attribute", String(255), nullable=False),
    Column("old_value", Text),
    Column("new_value", Text),
    Column("other_entity_type", String(255)),
    Column("other_entity_id", String(255)),
    Column("key", String(64)),
    Column("listed", Boolean, nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_dimple_conflicts_entity", "entity_type", "entity_id"),
    Index("ix_dimple_conflicts_key", "entity_type", "key"),
    Index("ix_dimple_conflicts_other", "other_entity_type", "other_entity_id"),
)

meta = Table(
    "dimple_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

keys = Table(
    "dimple_keys",
    metadata,
    Column("public_key", String(255), primary_key=True),
    Column("added_at", String(32), nullable=False),
    Column("revoked_at", String(32), nullable=True),
)

signers = Table(
    "dimple_signers",
    metadata,
    Column("author", _ID, primary_key=True),
    Column("public_key", String(255), nullable=False),
    Column("first_seen", String(32), nullable=False),
)
