"""The remote a replica syncs with: where its files are, how they are encrypted and signed,
and what this handle last wrote there.

:class:`Remote` joins a :class:`~.storage.Storage` (any fsspec location), a
:class:`~.crypto.Cipher` and a :class:`~.trust.Trust`, made from ``DimpleDb``'s
``remote=``/key keywords by :meth:`Remote.open`, with the manifest this handle last wrote
(so a push need not read it back). :meth:`Remote.prepare` runs at the start of every sync:
it applies the keywords to the replica's keyring and reads it, so that the sync encrypts
to the persisted recipients and checks signatures against the current keys and pins. The
manifest this handle last wrote or read is kept, so that a sync with nothing to push need
not read it again (a push that writes reads it afresh first).

Every file the sync code writes or reads goes through the methods here, so that signing
and checking cannot be forgotten on one path: a write signs first (``F.sig`` written before
``F``, with :meth:`.trust.Trust.sign`; nothing when this device does not sign), a read
checks with :meth:`.trust.Trust.check` (nothing when signatures are not required). A
rejected file raises (or, for bundles, maps to) a
:class:`~dimpledb_sa.core.errors.SignatureError` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigurationError
from .crypto import KeyCipher, make_cipher
from .storage import Storage
from .trust import Trust, TrustSettings, check_bundles, read_manifest_checked
from .wire import MANIFEST_NAME, NOTES_NAME

if TYPE_CHECKING:
    from ..core.replica import Replica
    from .crypto import Cipher
    from .wire import Manifest

__all__ = ["Remote"]


class Remote:
    """Storage, cipher and trust, and our manifest as last written through this handle."""

    def __init__(self, storage: Storage, cipher: Cipher,
                 settings: TrustSettings | None = None) -> None:
        self.storage = storage
        self.cipher = cipher
        """The cipher of this sync: encrypts to the recipients read by :meth:`prepare`."""
        self.settings = settings or TrustSettings()
        self._keyword_cipher = cipher
        self.trust: Trust = Trust.from_cipher(cipher, self.settings)
        """Signing and acceptance of files for this sync (refreshed by :meth:`prepare`)."""
        self.own_manifest: Manifest | None = None
        self.own_known = False
        """True once this handle read or wrote our manifest: ``own_manifest`` is then what
        the remote held (``None``: no manifest) as far as this handle knows."""
        self.me: str | None = None
        """Our author id, as :meth:`prepare` last read it."""
        self.cleaned_at = float("-inf")
        """When (``time.monotonic()``) a push through this handle last removed stale
        temporary files from our folder."""

    @classmethod
    def open(cls, remote: Any, *, storage_options: Mapping[str, Any] | None = None,
             path: str | None = None, identity: str | None = None,
             recipients: Sequence[str] | None = None, passphrase: str | None = None,
             encryption: bool = True, require_signatures: bool | None = None) -> Remote:
        """A remote from ``DimpleDb``'s keywords (keys are checked first: no I/O for a bad
        configuration)."""
        if require_signatures is not None and not isinstance(require_signatures, bool):
            raise ConfigurationError("require_signatures= must be True, False or None")
        cipher = make_cipher(identity=identity, recipients=recipients, passphrase=passphrase,
                             encryption=encryption)
        given: tuple[str, ...] | None = None
        if recipients is not None and isinstance(cipher, KeyCipher):
            given = cipher.recipients[1:]  # canonical, own key first, then the keywords
        settings = TrustSettings(recipients=given, require_signatures=require_signatures)
        return cls(Storage.from_remote(remote, storage_options, path=path), cipher, settings)

    def prepare(self, replica: Replica) -> Trust:
        """Read the keyring for one sync (after applying ``recipients=`` to it): the cipher
        then encrypts to the active recipients, and :attr:`trust` knows the current keys
        and pins. ``ConfigurationError`` when ``recipients=`` lists a revoked key."""
        with replica.engine.begin() as conn:
            trust = Trust.load(conn, self._keyword_cipher, self.settings)
        base, current = self._keyword_cipher, self.cipher
        if isinstance(base, KeyCipher) and isinstance(current, KeyCipher) and (
                trust.recipients != current.recipients[1:]):
            self.cipher = base.with_recipients(trust.recipients)
        self.trust = trust
        self.me = replica.author_id
        return trust

    def __repr__(self) -> str:
        return f"<Remote {self.storage!r} {self.cipher!r}>"

    # ------------------------------------------------------------ signed writes
    def _sign(self, author: str, name: str, data: bytes) -> None:
        signature = self.trust.sign(data)
        if signature is not None:
            self.storage.write_signature(author, name, signature)

    def write_bundle(self, author: str, name: str, data: bytes) -> None:
        """Write a bundle (stored bytes ``data``), its signature first."""
        self._sign(author, name, data)
        self.storage.write_bundle(author, name, data)

    def write_manifest(self, author: str, data: bytes) -> None:
        """Write a manifest, its signature first (a reader that sees the new signature with
        the old manifest reads both again: :func:`.trust.read_manifest_checked`)."""
        self._sign(author, MANIFEST_NAME, data)
        self.storage.write_manifest(author, data)

    def write_notes(self, author: str, data: bytes) -> None:
        """Write our notes file, its signature first."""
        self._sign(author, NOTES_NAME, data)
        self.storage.write_notes(author, data)

    def write_snapshot(self, author: str, name: str, data: bytes) -> None:
        """Write a snapshot, its signature first."""
        self._sign(author, name, data)
        self.storage.write_snapshot(author, name, data)

    # ------------------------------------------------------------ checked reads
    def _checks(self, author: str) -> bool:
        """Whether files of ``author`` are checked: when signatures are required, and for
        our own folder only when this device signs (files of ours are then signed too,
        and a file forged into our folder is refused like any other)."""
        return self.trust.required and (author != self.me or self.trust.signs)

    def read_manifest(self, author: str) -> bytes | None:
        """``author``'s manifest (``None``: none), checked (``SignatureError``)."""
        if not self._checks(author):
            return self.storage.read_manifest(author)
        return read_manifest_checked(self.storage, self.trust, author)

    def read_bundles(self, author: str, names: Sequence[str]
                     ) -> dict[str, bytes | BaseException]:
        """Several bundles: name -> stored bytes, or the error reading or checking it."""
        blobs = self.storage.read_bundles(author, names)
        if not self._checks(author):
            return dict(blobs)
        return check_bundles(self.storage, self.trust, author, blobs)

    def read_snapshot(self, author: str, name: str) -> bytes:
        """One snapshot, checked (``SignatureError``)."""
        data = self.storage.read_snapshot(author, name)
        if self._checks(author):
            self.trust.check(author, name, data, self.storage.read_signature(author, name))
        return data

    def read_notes(self, author: str) -> bytes | None:
        """``author``'s notes file (``None``: none), checked (``SignatureError``)."""
        data = self.storage.read_notes(author)
        if data is not None and self._checks(author):
            self.trust.check(author, NOTES_NAME, data,
                             self.storage.read_signature(author, NOTES_NAME))
        return data
