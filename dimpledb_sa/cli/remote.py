"""The remote on the command line, and the commands that only read it: inspect and verify.

This module owns the ``REMOTE`` argument and its ``--storage-option KEY=VALUE`` options
(values parsed as JSON, dots nesting keys) turned into a ``Storage``, a missing local
folder reported instead of created, and backend failures (network, permissions, a missing
bucket) turned into one line with exit code 1. ``inspect`` lists the authors, manifests and
bundles of a remote (and which are signed), or decrypts and prints one bundle; ``verify``
checks that every bundle listed in every manifest exists, decrypts, parses and matches its
manifest entry, and that every signature verifies (``--require-signatures``,
``--allowed-signers FILE``). Neither changes the remote.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigurationError, DecryptionError, DimpleError
from ..sync.compress import gunzip_bounded, is_gzip
from ..sync.signing import SIGNATURE_SUFFIX
from ..sync.verify import parse_allowed_signers, verify_remote
from ..sync.wire import MANIFEST_NAME, decode_bundle, decode_manifest, is_bundle_name, is_uuid
from .keys import Keys, read_keys
from .output import CliError, print_json, usage_error, when

if TYPE_CHECKING:
    from ..sync.crypto import Cipher
    from ..sync.storage import Storage

__all__ = ["add_remote_options", "cmd_inspect", "cmd_verify", "is_folder", "open_remote",
           "remote_errors", "storage_options"]


def storage_options(items: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as JSON when they are JSON; dots nest keys)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise usage_error(f"--storage-option takes key=value, not {item!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        target = out
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise usage_error(f"--storage-option {key}: {part} is not a group of options")
        target[last] = value
    return out


def add_remote_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-option", "-o", action="append", metavar="KEY=VALUE",
                   help="an fsspec storage option, e.g. endpoint_url=http://127.0.0.1:9000 "
                        "or client_kwargs.region_name=eu-west-1; repeatable")


def is_folder(storage: Storage) -> bool:
    protocol = storage.fs.protocol
    names = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "file" in names or "local" in names


def open_remote(text: str, options: Sequence[str] | None, *, must_exist: bool) -> Storage:
    from ..sync.storage import Storage

    try:
        storage = Storage.from_remote(text, storage_options(options) or None)
    except ConfigurationError as e:
        raise usage_error(str(e)) from None
    if must_exist and is_folder(storage) and not storage.fs.isdir(storage.root):
        what = "is not a folder" if storage.fs.exists(storage.root) else "does not exist"
        raise CliError(f"remote {text}: {storage.root} {what}")
    return storage


@contextmanager
def remote_errors(text: str) -> Iterator[None]:
    """Turn backend failures (network, permissions, missing bucket) into one clear line."""
    try:
        yield
    except (CliError, DimpleError, KeyboardInterrupt):
        raise
    except OSError as e:
        raise CliError(f"cannot read remote {text}: {e}") from None
    except Exception as e:  # botocore and friends raise their own exception types
        raise CliError(f"cannot read remote {text}: {type(e).__name__}: {e}") from None


# -- inspect ----------------------------------------------------------------------------------
def _manifest_doc(storage: Storage, author: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"author_id": author}
    try:
        data = storage.read_manifest(author)
        if data is None:
            doc["error"] = f"no manifest ({MANIFEST_NAME})"
            manifest = None
        else:
            manifest = decode_manifest(data, author)
    except DimpleError as e:
        doc["error"] = f"bad manifest: {e}"
        manifest = None
    listed: set[str] = set()
    if manifest is not None:
        doc["last_transaction_id"] = manifest.last_transaction_id
        doc["last_sync_timestamp"] = manifest.last_sync_timestamp
        doc["transactions"] = sum(b.transaction_count for b in manifest.bundles)
        doc["bundles"] = [{"filename": b.filename, "transaction_count": b.transaction_count,
                           "first_transaction_id": b.first_transaction_id,
                           "last_transaction_id": b.last_transaction_id,
                           "created_at": b.created_at} for b in manifest.bundles]
        listed = {b.filename for b in manifest.bundles}
    files = storage.list_files(author)
    known = listed | {MANIFEST_NAME}
    doc["signed_files"] = sorted(n.removesuffix(SIGNATURE_SUFFIX) for n in files
                                 if n.removesuffix(SIGNATURE_SUFFIX) in known
                                 and n.endswith(SIGNATURE_SUFFIX))
    doc["unlisted_files"] = [n for n in files if n not in known
                             and n.removesuffix(SIGNATURE_SUFFIX) not in known]
    return doc


def _decrypt(cipher: Cipher | None, blob: bytes, where: str, keys: Keys) -> bytes:
    from ..sync.crypto import is_age_file

    if cipher is None:
        if is_age_file(blob):
            raise usage_error(f"{where} is encrypted: give --identity-file (or --identity, "
                              "--passphrase-env)")
        return blob
    try:
        return cipher.decrypt(blob)
    except DecryptionError as e:
        raise CliError(f"cannot decrypt {where} with the given {keys.what}: {e}") from None


def _inspect_bundle(storage: Storage, spec: str, keys: Keys) -> int:
    author, sep, name = spec.strip("/").partition("/")
    if not sep or not is_uuid(author) or not is_bundle_name(name):
        raise usage_error(f"--bundle takes AUTHOR_ID/FIRST_LAST.json (as `inspect` lists them), "
                          f"not {spec!r}")
    cipher = keys.cipher() if keys.given else None
    try:
        blob = storage.read_bundle(author, name)
    except FileNotFoundError:
        raise CliError(f"no bundle {author}/{name} in the remote") from None
    plain = _decrypt(cipher, blob, f"{author}/{name}", keys)
    try:  # format 2 is gzipped JSON, format 1 the JSON itself
        doc = json.loads(gunzip_bounded(plain, name) if is_gzip(plain) else plain)
    except (ValueError, DimpleError):
        doc = None
    if doc is not None:
        print_json(doc)
    try:
        txs = decode_bundle(plain, author, name=name)
    except DimpleError as e:
        raise CliError(f"{author}/{name} is not a valid bundle: {e}") from None
    changes = sum(len(t[2]) for t in txs)
    print(f"{author}/{name}: {len(txs)} transaction(s), {changes} change(s)", file=sys.stderr)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    keys = read_keys(args)
    storage = open_remote(args.remote, args.storage_option, must_exist=True)
    with remote_errors(args.remote):
        if args.bundle:
            return _inspect_bundle(storage, args.bundle, keys)
        authors, bad = storage.list_authors()
        docs = [_manifest_doc(storage, a) for a in authors]
    if args.json:
        print_json({"remote": args.remote, "authors": docs, "other_entries": bad})
        return 0
    print(f"remote {args.remote}: {len(authors)} author(s)")
    for doc in docs:
        print(f"\nauthor {doc['author_id']}")
        if "error" in doc:
            print(f"  {doc['error']}")
        if "bundles" in doc:
            print(f"  {len(doc['bundles'])} bundle(s), {doc['transactions']} transaction(s), "
                  f"last transaction {doc['last_transaction_id'] or '-'} "
                  f"({when(doc['last_transaction_id'])}), manifest written "
                  f"{doc['last_sync_timestamp']}")
            signed = set(doc["signed_files"])
            if MANIFEST_NAME in signed:
                print(f"  {MANIFEST_NAME}  signed")
            for b in doc["bundles"]:
                print(f"  {b['filename']}  {b['transaction_count']:>6} tx  "
                      f"created {b['created_at']}"
                      + ("  signed" if b["filename"] in signed else ""))
        for n in doc["unlisted_files"]:
            print(f"  {n}  (not in the manifest: ignored by sync)")
    for name in bad:
        print(f"\n{name!r}: not an author folder (sync reports it as an error)")
    return 0


# -- verify -----------------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    keys = read_keys(args)
    if not keys.given:
        raise usage_error("verify needs the key the bundles were encrypted to: --identity-file "
                          "PATH (or --identity, --passphrase-env VAR), or --no-encryption")
    cipher = keys.cipher()
    allowed = None
    if args.allowed_signers:
        try:
            text = Path(args.allowed_signers).read_text(encoding="utf-8")
            allowed = parse_allowed_signers(text)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise usage_error(f"--allowed-signers {args.allowed_signers}: {e}") from None
    storage = open_remote(args.remote, args.storage_option, must_exist=True)
    with remote_errors(args.remote):
        found = verify_remote(storage, cipher, key_name=keys.what,
                              require_signatures=args.require_signatures,
                              allowed_signers=allowed)
    if args.verbose:
        for where, count in found.good:
            print(f"ok   {where}: {count} transaction(s)")
        for author, key in sorted(found.signers.items()):
            print(f"ok   {author}: signed by {key}")
    for p in found.problems:
        print(f"FAIL {p}")
    if not args.quiet:
        for n in found.notes:
            print(f"note {n}")
        verdict = "all good" if found.ok else f"{len(found.problems)} problem(s)"
        print(f"verified {found.bundles} bundle(s) ({found.transactions} transaction(s)) of "
              f"{found.authors} author(s): {verdict}; {found.signed} file(s) signed, "
              f"{found.unsigned} unsigned")
    return 0 if found.ok else 1
