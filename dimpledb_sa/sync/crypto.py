"""Encryption of remote bundles with age (through pyrage): the ciphers and their set-up.

This module owns the ``Cipher`` protocol and its three implementations: ``X25519Cipher``
(an age secret key that decrypts, encrypting to its own public key plus any extra
recipients), ``PassphraseCipher`` (age's scrypt mode) and ``PlaintextCipher`` (no
encryption, chosen only with ``encryption=False``); ``make_cipher`` picks one from the
``DimpleDb`` keyword arguments and rejects contradictory or incomplete ones with
:class:`~dimpledb_sa.core.errors.ConfigurationError`. Output is the binary age v1 format, so
every file decrypts with the standard ``age`` tool. A file that cannot be decrypted raises
:class:`~dimpledb_sa.core.errors.DecryptionError` saying why; no message ever contains a secret
key or a passphrase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import pyrage
from pyrage import passphrase as _scrypt
from pyrage import x25519

from ..core.errors import ConfigurationError, DecryptionError

__all__ = [
    "AGE_MAGIC",
    "Cipher",
    "PassphraseCipher",
    "PlaintextCipher",
    "X25519Cipher",
    "generate_identity",
    "is_age_file",
    "make_cipher",
]

AGE_MAGIC = b"age-encryption.org/v1\n"
"""The first line of every binary age file."""

_ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
_SECRET_PREFIX = "AGE-SECRET-KEY-1"
_PUBLIC_PREFIX = "age1"
_MAX_SCRYPT_WORK_FACTOR = 22  # what the age tool accepts; higher would take minutes to try
_FIX = (
    "give identity= (an age secret key, e.g. from `dimpledb keygen` or `age-keygen`), "
    "or passphrase=, or encryption=False to sync in plaintext"
)


class Cipher(Protocol):
    """What sync needs from encryption: bytes in, bytes out."""

    encrypted: bool
    """False only for :class:`PlaintextCipher`."""

    def encrypt(self, data: bytes) -> bytes: ...

    def decrypt(self, data: bytes) -> bytes:
        """The plaintext of ``data``; ``DecryptionError`` if it cannot be had."""
        ...


def is_age_file(data: bytes) -> bool:
    """Whether ``data`` looks like an age file (binary, or ASCII-armored)."""
    return data[: len(AGE_MAGIC)] == AGE_MAGIC or data[: len(_ARMOR_BEGIN)] == _ARMOR_BEGIN


def _stanza_types(data: bytes) -> list[str]:
    """The recipient types named in a binary age header (``X25519``, ``scrypt``, ...)."""
    types: list[str] = []
    for line in data[:65536].split(b"\n")[1:]:
        if line.startswith(b"---"):
            break
        if line.startswith(b"-> "):
            types.append(line[3:].split(b" ", 1)[0].decode("ascii", "replace"))
    return types


def _scrypt_work_factor(data: bytes) -> int | None:
    for line in data[:65536].split(b"\n")[1:]:
        if line.startswith(b"-> scrypt "):
            parts = line.split(b" ")
            return int(parts[3]) if len(parts) == 4 and parts[3].isdigit() else None
    return None


def _check_age_file(data: bytes) -> None:
    if not is_age_file(data):
        raise DecryptionError(
            "the file is not age-encrypted (if the remote is meant to hold plaintext, "
            "configure encryption=False)"
        )


class X25519Cipher:
    """Decrypts with an age X25519 identity; encrypts to it and to ``recipients``.

    ``identity`` is the secret key ``AGE-SECRET-KEY-1...`` (or the text of an ``age-keygen``
    key file); ``recipients`` are public keys ``age1...``. The identity's own public key is
    always a recipient, so this device can read what it wrote.
    """

    encrypted: bool = True

    def __init__(self, identity: str, recipients: Sequence[str] = ()) -> None:
        self._identity = _parse_identity(identity)
        own = self._identity.to_public()
        self.recipient: str = str(own)
        """This identity's public key, to give to the other devices' ``recipients=``."""
        keys: dict[str, Any] = {self.recipient: own}
        if isinstance(recipients, str | bytes):
            raise ConfigurationError(
                "recipients= must be a list of age public keys, not one string"
            )
        for i, text in enumerate(recipients):
            r = _parse_recipient(text, i)
            keys.setdefault(str(r), r)
        self.recipients: tuple[str, ...] = tuple(keys)
        """Every public key that files are encrypted to, own key first, without duplicates."""
        self._recipients = list(keys.values())

    def __repr__(self) -> str:
        return f"X25519Cipher(recipient={self.recipient!r}, recipients={len(self.recipients)})"

    def encrypt(self, data: bytes) -> bytes:
        return bytes(pyrage.encrypt(bytes(data), self._recipients))

    def decrypt(self, data: bytes) -> bytes:
        data = bytes(data)
        _check_age_file(data)
        if "scrypt" in _stanza_types(data):
            raise DecryptionError(
                "the file was encrypted with a passphrase, but an identity is configured"
            )
        try:
            return bytes(pyrage.decrypt(data, [self._identity]))
        except pyrage.DecryptError as e:
            if str(e) == "No matching keys found":
                raise DecryptionError(
                    f"the file is not encrypted to this identity (public key {self.recipient}); "
                    "its author must list that key in recipients="
                ) from None
            raise DecryptionError(
                f"the file is corrupt, truncated or has been tampered with (age: {e})"
            ) from None


class PassphraseCipher:
    """age's passphrase (scrypt) mode: one shared passphrase encrypts and decrypts.

    Each operation deliberately costs about a second of CPU (the scrypt work factor).
    """

    encrypted: bool = True

    def __init__(self, passphrase: str) -> None:
        if not isinstance(passphrase, str) or not passphrase:
            raise ConfigurationError("passphrase= must be a non-empty string")
        self._passphrase = passphrase

    def __repr__(self) -> str:
        return "PassphraseCipher(passphrase=<hidden>)"

    def encrypt(self, data: bytes) -> bytes:
        return bytes(_scrypt.encrypt(bytes(data), self._passphrase))

    def decrypt(self, data: bytes) -> bytes:
        data = bytes(data)
        _check_age_file(data)
        if data.startswith(AGE_MAGIC):
            types = _stanza_types(data)
            if "scrypt" not in types:
                raise DecryptionError(
                    "the file was encrypted to public keys (X25519 recipients), but a "
                    "passphrase is configured"
                )
            work = _scrypt_work_factor(data)
            if work is not None and work > _MAX_SCRYPT_WORK_FACTOR:
                raise DecryptionError(
                    f"the file's scrypt work factor {work} is above {_MAX_SCRYPT_WORK_FACTOR}"
                )
        try:
            return bytes(_scrypt.decrypt(data, self._passphrase))
        except pyrage.DecryptError as e:
            if str(e) in ("Decryption failed", "No matching keys found"):
                raise DecryptionError(
                    "wrong passphrase (or the file's header has been tampered with)"
                ) from None
            raise DecryptionError(
                f"the file is corrupt, truncated or has been tampered with (age: {e})"
            ) from None


class PlaintextCipher:
    """No encryption (``encryption=False``): data passes through unchanged."""

    encrypted: bool = False

    def __repr__(self) -> str:
        return "PlaintextCipher()"

    def encrypt(self, data: bytes) -> bytes:
        return bytes(data)

    def decrypt(self, data: bytes) -> bytes:
        data = bytes(data)
        if is_age_file(data):
            raise DecryptionError(
                "the file is encrypted but no key is configured (give identity= or passphrase=)"
            )
        return data


def generate_identity() -> tuple[str, str]:
    """A new age X25519 key pair: ``(secret key "AGE-SECRET-KEY-1...", public key "age1...")``."""
    identity = x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def _parse_identity(text: object) -> Any:
    if not isinstance(text, str):
        raise ConfigurationError(
            f"identity= must be a string (an age secret key), not {type(text).__name__}"
        )
    # Accept the key itself or the whole text of an age-keygen key file (with # comments).
    lines = [ln.strip() for ln in text.splitlines()]
    keys = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(keys) == 1 and keys[0].upper().startswith(_SECRET_PREFIX):
        try:
            return x25519.Identity.from_str(keys[0])
        except pyrage.IdentityError:
            pass
    if len(keys) == 1 and keys[0].startswith(_PUBLIC_PREFIX):
        raise ConfigurationError(
            "identity= holds a public key (age1...); it needs the secret key "
            "(AGE-SECRET-KEY-1...), and public keys go in recipients="
        )
    if len(keys) > 1:
        raise ConfigurationError(f"identity= holds {len(keys)} keys; give exactly one secret key")
    raise ConfigurationError(
        "identity= is not a valid age X25519 secret key (expected AGE-SECRET-KEY-1..., "
        "as printed by `dimpledb keygen` or `age-keygen`)"
    )


def _parse_recipient(text: object, i: int) -> Any:
    if not isinstance(text, str):
        raise ConfigurationError(f"recipients[{i}] must be a string, not {type(text).__name__}")
    key = text.strip()
    if key.upper().startswith(_SECRET_PREFIX):
        raise ConfigurationError(
            f"recipients[{i}] is a secret key; recipients= takes public keys (age1...), "
            "and a secret key belongs only in identity= on its own device"
        )
    if key.startswith(_PUBLIC_PREFIX):
        try:
            return x25519.Recipient.from_str(key)
        except pyrage.RecipientError:
            pass
    raise ConfigurationError(
        f"recipients[{i}] is not a valid age X25519 public key (age1...): {key[:80]!r}"
    )


def make_cipher(
    *,
    identity: str | None,
    recipients: Sequence[str] | None,
    passphrase: str | None,
    encryption: bool,
) -> Cipher:
    """The cipher for these ``DimpleDb`` arguments; ``ConfigurationError`` if they clash.

    ``encryption=False`` means plaintext and allows no key; otherwise exactly one of
    ``identity`` (with optional ``recipients``) or ``passphrase`` must be given.
    """
    has_recipients = recipients is not None and (isinstance(recipients, str) or len(recipients) > 0)
    if not encryption:
        given = [
            name
            for name, present in (
                ("identity=", identity is not None),
                ("recipients=", has_recipients),
                ("passphrase=", passphrase is not None),
            )
            if present
        ]
        if given:
            raise ConfigurationError(
                f"encryption=False but {' and '.join(given)} given: drop the key(s) to sync in "
                "plaintext, or drop encryption=False to encrypt"
            )
        return PlaintextCipher()
    if identity is not None and passphrase is not None:
        raise ConfigurationError("give either identity= or passphrase=, not both")
    if has_recipients and identity is None:
        raise ConfigurationError(
            "recipients= needs identity= too: without it this device could not read back "
            "its own data (a passphrase cannot be combined with recipients)"
        )
    if identity is not None:
        return X25519Cipher(identity, recipients or ())
    if passphrase is not None:
        return PassphraseCipher(passphrase)
    raise ConfigurationError(f"a remote needs encryption settings: {_FIX}")
