"""The remote a replica syncs with: where its files are, how they are encrypted, and what
this handle last wrote there.

:class:`Remote` joins a :class:`~.storage.Storage` (any fsspec location) and a
:class:`~.crypto.Cipher`, made from ``DimpleDb``'s ``remote=``/key keywords by
:meth:`Remote.open`, with the manifest this handle last wrote or read (so that a sync with
nothing to push need not read it again; a push that writes reads it afresh first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .crypto import make_cipher
from .storage import Storage

if TYPE_CHECKING:
    from .crypto import Cipher
    from .wire import Manifest

__all__ = ["Remote"]


class Remote:
    """Storage plus cipher, and our manifest as last written through this handle."""

    def __init__(self, storage: Storage, cipher: Cipher) -> None:
        self.storage = storage
        self.cipher = cipher
        self.own_manifest: Manifest | None = None
        self.own_known = False
        """True once this handle read or wrote our manifest: ``own_manifest`` is then what
        the remote held (``None``: no manifest) as far as this handle knows."""
        self.cleaned_at = float("-inf")
        """When (``time.monotonic()``) a push through this handle last removed stale
        temporary files from our folder."""

    @classmethod
    def open(cls, remote: Any, *, storage_options: Mapping[str, Any] | None = None,
             path: str | None = None, identity: str | None = None,
             recipients: Sequence[str] | None = None, passphrase: str | None = None,
             encryption: bool = True) -> Remote:
        """A remote from ``DimpleDb``'s keywords (keys are checked first: no I/O for a bad
        configuration)."""
        cipher = make_cipher(identity=identity, recipients=recipients, passphrase=passphrase,
                             encryption=encryption)
        return cls(Storage.from_remote(remote, storage_options, path=path), cipher)

    def __repr__(self) -> str:
        return f"<Remote {self.storage!r} {self.cipher!r}>"
