"""Trust: whom a replica encrypts to, what it signs with, and whose files it accepts.

:class:`TrustSettings` is what the facade passes down from ``DimpleDb``'s keywords.
:meth:`Trust.load` reads the replica's keyring (:mod:`~dimpledb_sa.core.keyring`) at the
start of a sync, after applying the **recipients rule**:

- ``recipients=None`` (not given): the persisted list is used as it is (what the command
  line's ``dimpledb recipients add|remove`` and ``sync -r`` maintain);
- ``recipients=[...]`` (given, even empty): that list *is* the set of other devices. Keys
  not persisted yet are added; persisted keys missing from it are **revoked** (kept,
  marked with the time); a revoked key listed again is a ``ConfigurationError`` (restore
  it explicitly with ``dimpledb recipients add --restore``, or better, give the device a new
  key). The identity's own key is implicit and never stored.

A :class:`Trust` then holds, for one sync: ``recipients`` (the active keys, what new files
are encrypted to besides the own key), the device key that signs (:meth:`Trust.sign`), and
the **acceptance rule** applied by :meth:`Trust.check` to every file read from another
author when signatures are required (``require_signatures=``, on by default when the
identity is a device key): the file must have a signature, it must verify (SSHSIG,
namespace ``dimpledb``, over the stored bytes), its key must not be revoked and must be
an active recipient or our own key, and it must be the key that author was first seen
with (pinned in ``dimple_signers``, once a file it signed proved to be that author's: a
manifest that decodes for that folder; new pins are written with :meth:`Trust.save_pins` in
the merge's transaction). Any failure is a :class:`~dimpledb_sa.core.errors.SignatureError`
naming the file. With signatures not required nothing is checked or pinned.

:func:`read_manifest_checked` and :func:`check_bundles` are the read paths the pull uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core import keyring
from ..core.errors import ConfigurationError, RemoteFormatError, SignatureError
from .keys import ED25519
from .signing import sign, signature_name, verify
from .wire import MANIFEST_NAME, decode_manifest

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from .crypto import Cipher
    from .keys import DeviceKey
    from .storage import Storage

__all__ = ["RevokedSignature", "Trust", "TrustSettings", "apply_recipients", "check_bundles",
           "read_manifest_checked"]


class RevokedSignature(SignatureError):
    """A file signed by a key this replica revoked. A pull tells apart the manifest of a
    revoked device that wrote nothing new since (nothing to reject) from one that did."""


@dataclass(frozen=True)
class TrustSettings:
    """What ``DimpleDb``'s keywords say about trust."""

    recipients: tuple[str, ...] | None = None
    """``recipients=`` in canonical form (the cipher's list less the own key); ``None``:
    not given, use the persisted list."""
    require_signatures: bool | None = None
    """``require_signatures=``; ``None``: on exactly when the identity is a device key."""


def apply_recipients(conn: Connection, own: str | None, recipients: Sequence[str]) -> None:
    """Make the persisted active keys exactly ``recipients`` (less ``own``): add the new,
    revoke the missing; ``ConfigurationError`` when one of them was revoked."""
    wanted = [k for k in dict.fromkeys(recipients) if k != own]
    records = {r.public_key: r for r in keyring.list_keys(conn)}
    revoked = [k for k in wanted if k in records and records[k].revoked]
    if revoked:
        raise ConfigurationError(
            f"recipients= lists {revoked[0]}, which this database revoked at "
            f"{records[revoked[0]].revoked_at}: drop it from recipients= (and give that "
            "device a new key), or trust it again with `dimpledb recipients add DB KEY "
            "--restore`")
    for key in wanted:
        if key not in records:
            keyring.add_key(conn, key)
    keep = set(wanted)
    for key, record in records.items():
        if not record.revoked and key not in keep:
            keyring.revoke_key(conn, key)


class Trust:
    """The keys of one sync; see the module docstring."""

    def __init__(self, *, own: str | None = None, device_key: DeviceKey | None = None,
                 required: bool = False, recipients: Sequence[str] = (),
                 revoked: frozenset[str] = frozenset(),
                 pins: Mapping[str, str] | None = None) -> None:
        self.own = own
        """This identity's public key (``None`` in passphrase or plaintext mode)."""
        self.device_key = device_key
        self.required = required
        """Whether other authors' files must be signed (:meth:`check` does nothing if not)."""
        self.recipients: tuple[str, ...] = tuple(k for k in recipients if k != own)
        """The active keys besides our own: what new files are encrypted to."""
        self.revoked = revoked
        ours = (own,) if own is not None and own.startswith(ED25519 + " ") else ()
        self.trusted: frozenset[str] = frozenset(
            k for k in self.recipients if k.startswith(ED25519 + " ") and k not in revoked
        ).union(ours)
        """The keys whose signatures are accepted: active ssh-ed25519 recipients and ours."""
        self.pins: dict[str, str] = dict(pins or {})
        """Author -> pinned key, as read from ``dimple_signers``."""
        self.new_pins: dict[str, str] = {}
        """Pins made in this sync (:meth:`confirm`), for :meth:`save_pins`."""
        self.unconfirmed: dict[str, str] = {}
        """Author -> the key a file of that not yet pinned author verified with, until a
        file it signed proves to be that author's (:meth:`confirm`): a signature covers
        bytes, not the folder they lie in, so a file copied from another author's folder
        must not pin its signer for this one."""

    @classmethod
    def from_cipher(cls, cipher: Cipher, settings: TrustSettings, *,
                    recipients: Sequence[str] | None = None,
                    revoked: frozenset[str] = frozenset(),
                    pins: Mapping[str, str] | None = None) -> Trust:
        """The trust of ``cipher``'s identity under ``settings``; ``recipients`` default to
        the keyword ones (what holds before the keyring is read)."""
        own: str | None = getattr(cipher, "recipient", None)
        device_key: DeviceKey | None = getattr(cipher, "device_key", None)
        required = (settings.require_signatures if settings.require_signatures is not None
                    else device_key is not None)
        return cls(own=own, device_key=device_key, required=required,
                   recipients=settings.recipients or () if recipients is None else recipients,
                   revoked=revoked, pins=pins)

    @classmethod
    def load(cls, conn: Connection, cipher: Cipher, settings: TrustSettings) -> Trust:
        """Apply ``settings.recipients`` to the keyring (see the module docstring), then
        read it."""
        if settings.recipients is not None:
            apply_recipients(conn, getattr(cipher, "recipient", None), settings.recipients)
        records = keyring.list_keys(conn)
        return cls.from_cipher(
            cipher, settings, recipients=[r.public_key for r in records if not r.revoked],
            revoked=frozenset(r.public_key for r in records if r.revoked),
            pins=keyring.pins(conn))

    def __repr__(self) -> str:
        return (f"<Trust own={self.own!r} signs={self.signs} required={self.required} "
                f"recipients={len(self.recipients)} pins={len(self.pins)}>")

    # ----------------------------------------------------------------------- writing
    @property
    def signs(self) -> bool:
        """Whether this device signs what it writes (its identity is a device key)."""
        return self.device_key is not None

    def sign(self, data: bytes) -> bytes | None:
        """The contents of the ``.sig`` file of a file about to be written with ``data``
        (its stored bytes), or ``None`` when this device does not sign."""
        return None if self.device_key is None else sign(self.device_key, data)

    # ----------------------------------------------------------------------- reading
    def check(self, author: str, name: str, data: bytes, signature: bytes | None
              ) -> str | None:
        """Accept or reject ``author``'s file ``name`` (stored bytes ``data``, signature
        file contents ``signature`` or ``None``); returns the signer's key (``None`` when
        signatures are not required: nothing is checked). ``SignatureError`` otherwise."""
        if not self.required:
            return None
        where = f"{author}/{name}"
        if signature is None:
            raise SignatureError(
                f"{where} is not signed (no {signature_name(name)}), and this replica "
                "requires signatures (require_signatures=)")
        try:
            key = verify(signature, data)
        except SignatureError as e:
            raise SignatureError(f"{where}: {e}") from None
        if key in self.revoked and key != self.own:
            raise RevokedSignature(f"{where} is signed by a revoked key ({key})")
        if key not in self.trusted:
            raise SignatureError(
                f"{where} is signed by {key}, which is not among this replica's "
                "recipients (nor its own key): add it to recipients= to trust that device")
        pinned = self.pins.get(author) or self.new_pins.get(author)
        if pinned is None:
            seen = self.unconfirmed.setdefault(author, key)
            if seen != key:
                raise SignatureError(
                    f"{where} is signed by {key}, but another file of author {author} in "
                    f"this sync by {seen}: neither is pinned yet, so neither is trusted")
        elif pinned != key:
            raise SignatureError(
                f"{where} is signed by {key}, but author {author}'s files were first seen "
                f"signed by {pinned}: if that device really changed its key, forget the "
                f"old one with `dimpledb recipients unpin DB {author}`")
        return key

    def confirm(self, author: str) -> None:
        """A file of ``author`` that :meth:`check` accepted proved to be that author's (its
        contents name the author: a manifest decoded for that folder): pin its key."""
        key = self.unconfirmed.pop(author, None)
        if key is not None and author not in self.pins and author not in self.new_pins:
            self.new_pins[author] = key

    def save_pins(self, conn: Connection) -> None:
        """Write the pins :meth:`confirm` made (call it in the merge's transaction)."""
        for author, key in self.new_pins.items():
            self.pins[author] = keyring.pin(conn, author, key)
        self.new_pins.clear()


def read_manifest_checked(storage: Storage, trust: Trust, author: str) -> bytes | None:
    """``author``'s manifest (``None``: it has none), checked by ``trust``.

    The manifest and its signature are rewritten on every push (signature first), so a
    reader can see one new and one old: a signature that does not match is read once more,
    with the manifest, before it counts.
    """
    data = storage.read_manifest(author)
    if data is None or not trust.required:
        return data
    signature = storage.read_signature(author, MANIFEST_NAME)
    try:
        trust.check(author, MANIFEST_NAME, data, signature)
    except SignatureError:
        if signature is None:
            raise
        data = storage.read_manifest(author)
        if data is None:
            return None
        trust.check(author, MANIFEST_NAME, data,
                    storage.read_signature(author, MANIFEST_NAME))
    try:
        decode_manifest(data, author)  # it names its author: now its signer may be pinned
    except RemoteFormatError:
        return data  # the caller's decoding says what is wrong; nothing pinned
    trust.confirm(author)
    return data


def check_bundles(storage: Storage, trust: Trust, author: str,
                  blobs: Mapping[str, bytes | BaseException]
                  ) -> dict[str, bytes | BaseException]:
    """``blobs`` (file name -> stored bytes, or the error reading it) with every file that
    ``trust`` rejects replaced by its ``SignatureError``; the signatures are read in one
    backend call. Unchanged when signatures are not required."""
    if not trust.required:
        return dict(blobs)
    names = [n for n, b in blobs.items() if isinstance(b, bytes)]
    signatures = storage.read_signatures(author, names)
    out: dict[str, bytes | BaseException] = {}
    for name, blob in blobs.items():
        if not isinstance(blob, bytes):
            out[name] = blob
            continue
        sig = signatures.get(name)
        if isinstance(sig, Exception):
            out[name] = sig
            continue
        try:
            trust.check(author, name, blob, sig)
        except SignatureError as e:
            out[name] = e
        else:
            out[name] = blob
    return out
