"""Checking a remote: every listed bundle reads, decrypts, decodes and matches its manifest.

:func:`verify_remote` is what ``dimpledb verify`` runs (and what a test or a tool can run):
it reads every author's manifest and bundles with the given cipher and reports every
problem it finds, without stopping at the first, and without writing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.errors import DecryptionError, DimpleError
from .wire import MANIFEST_NAME, NOTES_NAME, decode_bundle, decode_manifest

if TYPE_CHECKING:
    from .crypto import Cipher
    from .storage import Storage

__all__ = ["Verification", "verify_remote"]


@dataclass
class Verification:
    """What :func:`verify_remote` found."""

    authors: int = 0
    bundles: int = 0
    transactions: int = 0
    problems: list[str] = field(default_factory=list)
    """``AUTHOR/FILE: what is wrong``, one per bad file or folder."""
    notes: list[str] = field(default_factory=list)
    """Harmless findings: authors without a manifest, files no manifest lists."""
    good: list[tuple[str, int]] = field(default_factory=list)
    """``(AUTHOR/FILE, transactions)`` of every bundle that checked out."""

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_remote(storage: Storage, cipher: Cipher, *, key_name: str = "key") -> Verification:
    """Check every author folder of ``storage`` with ``cipher`` (``key_name`` names the key
    in messages)."""
    out = Verification()
    authors, bad = storage.list_authors()
    out.authors = len(authors)
    out.problems += [f"{n!r}: not an author folder (a canonical UUID)" for n in bad]
    for author in authors:
        data = storage.read_manifest(author)
        if data is None:
            out.notes.append(f"{author}: no manifest (nothing published yet)")
            continue
        try:
            manifest = decode_manifest(data, author)
        except DimpleError as e:
            out.problems.append(f"{author}/{MANIFEST_NAME}: {e}")
            continue
        listed = {b.filename for b in manifest.bundles}
        blobs = storage.read_bundles(author, sorted(listed))
        for info in manifest.bundles:
            where = f"{author}/{info.filename}"
            out.bundles += 1
            blob = blobs.get(info.filename)
            if not isinstance(blob, bytes):
                out.problems.append(f"{where}: listed in the manifest but cannot be read "
                                    f"({blob or 'missing'})")
                continue
            try:
                txs = decode_bundle(cipher.decrypt(blob), author, name=info.filename)
            except DecryptionError as e:
                out.problems.append(f"{where}: cannot decrypt with the given {key_name}: {e}")
                continue
            except DimpleError as e:
                out.problems.append(f"{where}: {e}")
                continue
            ids = [t[0] for t in txs]
            if len(txs) != info.transaction_count:
                out.problems.append(f"{where}: holds {len(txs)} transaction(s), the manifest "
                                    f"says {info.transaction_count}")
            elif ids[0] != info.first_transaction_id or ids[-1] != info.last_transaction_id:
                out.problems.append(f"{where}: transaction ids do not match the manifest")
            else:
                out.transactions += len(txs)
                out.good.append((where, len(txs)))
        for n in storage.list_files(author):
            if n not in listed and n not in (MANIFEST_NAME, NOTES_NAME):
                out.notes.append(f"{author}/{n}: not in the manifest (ignored by sync)")
    return out
