"""Encryption of remote bundles with age (through pyrage): the ciphers and their set-up.

This module owns the ``Cipher`` protocol and its three implementations: ``KeyCipher``
(an identity that decrypts, an age X25519 secret key or an OpenSSH Ed25519 device key,
encrypting to its own public key plus any extra recipients, ``age1...`` and
``ssh-ed25519`` keys mixed; ``X25519Cipher`` is its old name), ``PassphraseCipher``
(age's scrypt mode) and ``PlaintextCipher`` (no encryption, chosen only with
``encryption=False``); ``make_cipher`` picks one from the
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
from pyrage import ssh, x25519

from ..core.errors import ConfigurationError, DecryptionError
from .keys import DeviceKey, is_device_key, is_ssh_public_key, parse_device_key, parse_public_key

__all__ = [
    "AGE_MAGIC",
    "Cipher",
    "KeyCipher",
    "PassphraseCipher",
    "PlaintextCipher",
    "X25519Cipher",
    "generate_identity",
    "is_age_file",
    "make_cipher",
    "parse_recipient",
]

AGE_MAGIC = b"age-encryption.org/v1\n"
"""The first line of every binary age file."""

_ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
_SECRET_PREFIX = "AGE-SECRET-KEY-1"
_PUBLIC_PREFIX = "age1"
_MAX_SCRYPT_WORK_FACTOR = 22  # what the age tool accepts; higher would take minutes to try
_FIX = (
    "give identity= (an age secret key, e.g. from `dimpledb keygen` or `age-keygen`, or a "
    "device key from `dimpledb keygen --device`), or passphrase=, or encryption=False to "
    "sync in plaintext"
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


class KeyCipher:
    """Decrypts with an identity; encrypts to it and to ``recipients``.

    ``identity`` is an age X25519 secret key ``AGE-SECRET-KEY-1...`` (or the text of an
    ``age-keygen`` key file), or a device key: the text of an unencrypted OpenSSH Ed25519
    private key (see :mod:`.keys`). ``recipients`` are public keys, ``age1...`` and
    ``ssh-ed25519 AAAA...`` lines mixed (age encrypts to both natively). The identity's
    own public key is always a recipient, so this device can read what it wrote.
    """

    encrypted: bool = True

    def __init__(self, identity: str, recipients: Sequence[str] = ()) -> None:
        self._identity, own, self.recipient, self.device_key = _parse_identity(identity)
        self._own = own
        self._set_recipients(recipients)

    def _set_recipients(self, recipients: Sequence[str]) -> None:
        if isinstance(recipients, str | bytes):
            raise ConfigurationError(
                "recipients= must be a list of public keys, not one string"
            )
        keys: dict[str, Any] = {self.recipient: self._own}
        for i, text in enumerate(recipients):
            name, r = _parse_recipient(text, i)
            keys.setdefault(name, r)
        self.recipients: tuple[str, ...] = tuple(keys)
        """Every public key that files are encrypted to, own key first, without duplicates,
        in canonical form (``age1...``, or ``ssh-ed25519 AAAA...`` without a comment)."""
        self._recipients = list(keys.values())

    def with_recipients(self, recipients: Sequence[str]) -> KeyCipher:
        """The same identity encrypting to its own key and ``recipients`` (instead of the
        recipients this cipher was made with)."""
        other = object.__new__(type(self))
        other._identity, other._own = self._identity, self._own
        other.recipient, other.device_key = self.recipient, self.device_key
        other._set_recipients(recipients)
        return other

    def __repr__(self) -> str:
        return f"KeyCipher(recipient={self.recipient!r}, recipients={len(self.recipients)})"

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


X25519Cipher = KeyCipher
"""The name :class:`KeyCipher` had when identities could only be age X25519 keys."""


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


def _parse_identity(text: object) -> tuple[Any, Any, str, DeviceKey | None]:
    """(pyrage identity, its own recipient, that recipient as text, the device key or
    ``None``) of an age secret key or an OpenSSH Ed25519 private key."""
    if not isinstance(text, str):
        raise ConfigurationError(
            f"identity= must be a string (an age secret key or an OpenSSH Ed25519 private "
            f"key), not {type(text).__name__}"
        )
    if is_device_key(text):
        device = parse_device_key(text)
        try:
            identity = ssh.Identity.from_buffer(text.strip().encode("ascii") + b"\n")
            own = ssh.Recipient.from_str(device.public)
        except (pyrage.IdentityError, pyrage.RecipientError, UnicodeEncodeError):
            raise ConfigurationError("identity= is an OpenSSH key age cannot use") from None
        return identity, own, device.public, device
    # Accept the key itself or the whole text of an age-keygen key file (with # comments).
    lines = [ln.strip() for ln in text.splitlines()]
    keys = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(keys) == 1 and keys[0].upper().startswith(_SECRET_PREFIX):
        try:
            age_identity = x25519.Identity.from_str(keys[0])
        except pyrage.IdentityError:
            pass
        else:
            age_own = age_identity.to_public()
            return age_identity, age_own, str(age_own), None
    if len(keys) == 1 and (keys[0].startswith(_PUBLIC_PREFIX) or is_ssh_public_key(keys[0])):
        raise ConfigurationError(
            "identity= holds a public key; it needs the secret key (AGE-SECRET-KEY-1..., or "
            "an OpenSSH private key file's text), and public keys go in recipients="
        )
    if len(keys) > 1:
        raise ConfigurationError(f"identity= holds {len(keys)} keys; give exactly one secret key")
    raise ConfigurationError(
        "identity= is not a valid age X25519 secret key (expected AGE-SECRET-KEY-1..., "
        "as printed by `dimpledb keygen` or `age-keygen`) nor an OpenSSH Ed25519 private key"
    )


def parse_recipient(text: object, i: int = 0) -> str:
    """``recipients[i]`` (an ``age1...`` or ``ssh-ed25519 AAAA...`` public key) in canonical
    form; ``ConfigurationError`` when it is neither."""
    return _parse_recipient(text, i)[0]


def _parse_recipient(text: object, i: int) -> tuple[str, Any]:
    """(canonical text, pyrage recipient) of ``recipients[i]``."""
    if not isinstance(text, str):
        raise ConfigurationError(f"recipients[{i}] must be a string, not {type(text).__name__}")
    key = text.strip()
    if key.upper().startswith(_SECRET_PREFIX) or is_device_key(key):
        raise ConfigurationError(
            f"recipients[{i}] is a secret key; recipients= takes public keys (age1... or "
            "ssh-ed25519 AAAA...), and a secret key belongs only in identity= on its own device"
        )
    if is_ssh_public_key(key):
        line = parse_public_key(key, what=f"recipients[{i}]")
        try:
            return line, ssh.Recipient.from_str(line)
        except pyrage.RecipientError:
            raise ConfigurationError(f"recipients[{i}] is an ssh key age cannot use") from None
    if key.startswith(_PUBLIC_PREFIX):
        try:
            r = x25519.Recipient.from_str(key)
        except pyrage.RecipientError:
            pass
        else:
            return str(r), r
    raise ConfigurationError(
        f"recipients[{i}] is not a valid age X25519 public key (age1...) nor an ssh-ed25519 "
        f"public key: {key[:80]!r}"
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
        return KeyCipher(identity, recipients or ())
    if passphrase is not None:
        return PassphraseCipher(passphrase)
    raise ConfigurationError(f"a remote needs encryption settings: {_FIX}")
