"""Checking a remote: every listed bundle reads, decrypts, decodes and matches its manifest,
and every signature checks out.

:func:`verify_remote` is what ``dimpledb verify`` runs (and what a test or a tool can run):
it reads every author's manifest and bundles with the given cipher and reports every
problem it finds, without stopping at the first, and without writing anything. Signatures
(``F.sig``, see :mod:`.signing`) are checked where present: a bad one, one by a key that
``allowed_signers`` (when given) does not allow for its author, or an author whose files
are signed by more than one key is a problem; an unsigned file is a problem with
``require_signatures``, else counted. :func:`parse_allowed_signers` reads the OpenSSH
``allowed_signers`` file that ``ssh-keygen -Y verify -f`` takes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.errors import DecryptionError, DimpleError, SignatureError
from .keys import ED25519, parse_public_key
from .signing import SIGNATURE_SUFFIX, signature_name, verify
from .snapshot import is_snapshot_name
from .wire import MANIFEST_NAME, NOTES_NAME, decode_bundle, decode_manifest

if TYPE_CHECKING:
    from .crypto import Cipher
    from .storage import Storage

__all__ = ["Verification", "parse_allowed_signers", "verify_remote"]


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
    signed: int = 0
    """Files (manifests and bundles) whose signature checked out."""
    unsigned: int = 0
    """Files without a signature."""
    signers: dict[str, str] = field(default_factory=dict)
    """Author -> the key its files are signed with."""

    @property
    def ok(self) -> bool:
        return not self.problems


class _Signatures:
    """The signature checks of one :func:`verify_remote` run."""

    def __init__(self, out: Verification, required: bool,
                 allowed: Mapping[str, Collection[str]] | None) -> None:
        self.out, self.required, self.allowed = out, required, allowed

    def _allows(self, author: str, key: str) -> bool:
        if self.allowed is None:
            return True
        return key in self.allowed.get(author, ()) or key in self.allowed.get("*", ())

    def check(self, author: str, name: str, data: bytes, signature: bytes | None) -> bool:
        """Record what ``name``'s signature says; whether it is acceptable."""
        out, where = self.out, f"{author}/{name}"
        if signature is None:
            out.unsigned += 1
            if self.required:
                out.problems.append(f"{where}: not signed (no {signature_name(name)})")
            return not self.required
        try:
            key = verify(signature, data)
        except SignatureError as e:
            out.problems.append(f"{signature_name(where)}: bad signature: {e}")
            return False
        first = out.signers.setdefault(author, key)
        if key != first:
            out.problems.append(f"{where}: signed by {key}, but other files of this author "
                                f"by {first}")
            return False
        if not self._allows(author, key):
            out.problems.append(f"{where}: signed by {key}, which the allowed signers do "
                                "not list for this author")
            return False
        out.signed += 1
        return True


def parse_allowed_signers(text: str) -> dict[str, set[str]]:
    """Author id (or ``*``) -> allowed ``ssh-ed25519`` keys, from the text of an OpenSSH
    ``allowed_signers`` file (``PRINCIPALS [OPTIONS] KEYTYPE KEY [COMMENT]`` lines;
    principals split on commas; lines of other key types are skipped). ``ValueError``
    names a line whose key is not a valid ``ssh-ed25519`` key."""
    out: dict[str, set[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#") or ED25519 not in tokens[1:]:
            continue
        i = tokens.index(ED25519, 1)
        try:
            key = parse_public_key(" ".join(tokens[i : i + 2]))
        except DimpleError as e:
            raise ValueError(f"line {number}: {e}") from None
        for principal in tokens[0].split(","):
            out.setdefault(principal, set()).add(key)
    return out


def verify_remote(storage: Storage, cipher: Cipher, *, key_name: str = "key",
                  require_signatures: bool = False,
                  allowed_signers: Mapping[str, Collection[str]] | None = None
                  ) -> Verification:
    """Check every author folder of ``storage`` with ``cipher`` (``key_name`` names the key
    in messages); signatures as the module docstring says (``allowed_signers``: author id
    or ``*`` -> canonical ``ssh-ed25519`` lines; ``None``: any key)."""
    out = Verification()
    signatures = _Signatures(out, require_signatures, allowed_signers)
    authors, bad = storage.list_authors()
    out.authors = len(authors)
    out.problems += [f"{n!r}: not an author folder (a canonical UUID)" for n in bad]
    for author in authors:
        _verify_author(storage, cipher, author, key_name, signatures)
    return out


def _verify_author(storage: Storage, cipher: Cipher, author: str, key_name: str,
                   signatures: _Signatures) -> None:
    out = signatures.out
    data = storage.read_manifest(author)
    if data is None:
        out.notes.append(f"{author}: no manifest (nothing published yet)")
        return
    signatures.check(author, MANIFEST_NAME, data, storage.read_signature(author, MANIFEST_NAME))
    try:
        manifest = decode_manifest(data, author)
    except DimpleError as e:
        out.problems.append(f"{author}/{MANIFEST_NAME}: {e}")
        return
    listed = {b.filename for b in manifest.bundles}
    blobs = storage.read_bundles(author, sorted(listed))
    sigs = storage.read_signatures(author, sorted(listed))
    for info in manifest.bundles:
        where = f"{author}/{info.filename}"
        out.bundles += 1
        blob = blobs.get(info.filename)
        if not isinstance(blob, bytes):
            out.problems.append(f"{where}: listed in the manifest but cannot be read "
                                f"({blob or 'missing'})")
            continue
        sig = sigs.get(info.filename)
        if isinstance(sig, Exception):
            out.problems.append(f"{signature_name(where)}: cannot be read ({sig})")
        elif not signatures.check(author, info.filename, blob, sig):
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
    known = listed | {MANIFEST_NAME, NOTES_NAME}
    for n in storage.list_files(author):
        if n not in known and n.removesuffix(SIGNATURE_SUFFIX) not in known:
            if is_snapshot_name(n.removesuffix(SIGNATURE_SUFFIX)):  # hook: sync.snapshot
                out.notes.append(f"{author}/{n}: a snapshot (read by devices that bootstrap)")
                continue
            out.notes.append(f"{author}/{n}: not in the manifest (ignored by sync)")
