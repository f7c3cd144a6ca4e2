"""The ``recipients`` command: the public keys a database encrypts to and trusts.

``dimpledb recipients list DB`` shows the keys kept in the database (``dimple_keys``: added
when, revoked when) and the pinned signer of each remote author (``dimple_signers``);
``add DB KEY...`` lists keys (``age1...`` or ``ssh-ed25519 AAAA...`` lines, or files holding
them, one a line, such as an ssh ``.pub`` file); ``remove DB KEY...`` revokes them (they
stay listed, marked: no new file is encrypted to them, and files they sign are no longer
accepted); ``add --restore`` trusts a revoked key again; ``unpin DB AUTHOR`` forgets an
author's pinned key (after that device really changed keys). Every later ``sync`` of the
database (the command line's, or an app's that does not pass ``recipients=``) uses this
list. The identity's own key is implicit and never listed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sqlalchemy import Connection, Engine

from ..core import keyring
from ..core.errors import ConfigurationError
from .database import open_engine
from .output import CliError, print_json, usage_error

__all__ = ["canonical_keys", "cmd_recipients", "persist_recipients"]


def canonical_keys(items: list[str]) -> list[str]:
    """The public keys named on the command line (keys, or files of keys), canonical."""
    from ..sync.crypto import parse_recipient

    texts: list[str] = []
    for item in items:
        path = Path(item)
        if not item.startswith(("age1", "ssh-")) and path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise usage_error(f"cannot read keys from {item}: {e}") from None
            texts += [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
        else:
            texts.append(item)
    out: list[str] = []
    for i, text in enumerate(texts):
        try:
            out.append(parse_recipient(text, i))
        except ConfigurationError as e:
            raise usage_error(f"bad key: {e}") from None
    return list(dict.fromkeys(out))


def persist_recipients(engine: Engine, keys: list[str], db_name: str) -> list[str]:
    """Add ``keys`` to the database's recipients (for ``sync -r``); returns the new ones.
    A revoked key is an error (exit code 1) that says how to restore it."""
    added: list[str] = []
    with engine.begin() as conn:
        for key in keys:
            before = keyring.add_key(conn, key)
            if before is not None and before.revoked:
                raise CliError(f"{key} was revoked in {db_name} at {before.revoked_at}; trust "
                               f"it again with `dimpledb recipients add {db_name} KEY "
                               "--restore`, or give that device a new key")
            if before is None:
                added.append(key)
    return added


def _list(args: argparse.Namespace) -> int:
    engine = open_engine(args.database, readonly=True)
    try:
        with engine.connect() as conn:
            records, pins = keyring.list_keys(conn), keyring.pins(conn)
    finally:
        engine.dispose()
    if args.json:
        print_json({"keys": [{"public_key": r.public_key, "added_at": r.added_at,
                              "revoked_at": r.revoked_at} for r in records],
                    "signers": [{"author": a, "public_key": k} for a, k in sorted(pins.items())]})
        return 0
    active = [r for r in records if not r.revoked]
    print(f"{len(active)} recipient(s) (besides the identity's own key)"
          + (f", {len(records) - len(active)} revoked" if len(active) < len(records) else ""))
    for r in records:
        state = f"revoked {r.revoked_at}" if r.revoked else "active"
        print(f"  {r.public_key}  added {r.added_at}, {state}")
    if pins:
        print(f"{len(pins)} pinned signer(s)")
        for author, key in sorted(pins.items()):
            print(f"  {author}  {key}")
    return 0


def _change(args: argparse.Namespace) -> int:
    keys = canonical_keys(args.keys)
    if not keys:
        raise usage_error(f"recipients {args.action} needs at least one KEY")
    engine = open_engine(args.database, readonly=False)
    try:
        with engine.begin() as conn:
            for key in keys:
                print(_apply(conn, args, key))
    finally:
        engine.dispose()
    return 0


def _apply(conn: Connection, args: argparse.Namespace, key: str) -> str:
    if args.action == "remove":
        before = keyring.revoke_key(conn, key)
        if before is not None and before.revoked:
            return f"already revoked: {key}"
        return f"revoked: {key}" + ("" if before else " (it was not listed; now it cannot be "
                                                      "added by accident)")
    if args.restore:
        before = keyring.restore_key(conn, key)
        return f"restored: {key}" if before and before.revoked else f"listed: {key}"
    before = keyring.add_key(conn, key)
    if before is not None and before.revoked:
        raise CliError(f"{key} was revoked at {before.revoked_at}; add --restore to trust it "
                       "again (or better, give that device a new key)")
    return f"added: {key}" if before is None else f"already listed: {key}"


def _unpin(args: argparse.Namespace) -> int:
    if len(args.keys) != 1:
        raise usage_error("recipients unpin takes one AUTHOR id")
    args.author = args.keys[0]
    engine = open_engine(args.database, readonly=False)
    try:
        with engine.begin() as conn:
            found = keyring.unpin(conn, args.author)
    finally:
        engine.dispose()
    if not found:
        raise CliError(f"author {args.author} has no pinned key in {args.database}")
    print(f"unpinned {args.author}: its next signed file pins its key again")
    return 0


def cmd_recipients(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(args)
    if args.action == "unpin":
        return _unpin(args)
    return _change(args)
