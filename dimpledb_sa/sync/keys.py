"""Device keys: OpenSSH Ed25519 key pairs, parsed strictly, and the SSH wire encoding.

A *device key* is an unencrypted OpenSSH Ed25519 private key, the text of a file such as
``~/.ssh/id_ed25519`` (``-----BEGIN OPENSSH PRIVATE KEY-----``), made by
:func:`generate_device_key`, ``dimpledb keygen --device`` or ``ssh-keygen -t ed25519 -N ''``.
It serves twice: age encrypts to its public key and decrypts with it natively, and
:mod:`.signing` signs remote files with it (SSHSIG). Its public key is the one line
``ssh-ed25519 AAAA...``; :func:`parse_public_key` accepts such a line (a trailing comment is
dropped) and returns it in canonical form, the form keys are compared, stored and trusted
in. Passphrase-protected keys and keys of other types (RSA, ECDSA, security keys) are
refused with a :class:`~dimpledb_sa.core.errors.ConfigurationError` that says what to do;
no message ever contains secret key material.

This module also owns the RFC 4251 encoding both use (:func:`ssh_string`,
:class:`SshReader`, a bounded reader that raises ``ValueError`` on any malformed input).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..core.errors import ConfigurationError

__all__ = [
    "ED25519",
    "PRIVATE_KEY_BEGIN",
    "DeviceKey",
    "SshReader",
    "generate_device_key",
    "is_device_key",
    "is_ssh_public_key",
    "parse_device_key",
    "parse_public_key",
    "public_key_bytes",
    "ssh_string",
]

ED25519 = "ssh-ed25519"
"""The SSH name of Ed25519 keys and signatures, the only kind dimpledb signs with."""

PRIVATE_KEY_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_PRIVATE_KEY_END = "-----END OPENSSH PRIVATE KEY-----"
_MAX_PRIVATE_KEY = 16_384  # an Ed25519 key file is about 400 bytes; RSA-16384 fits too
_MAX_PUBLIC_LINE = 4_096
_NEW_KEY = (
    "make a new device key with `dimpledb keygen --device -o KEYFILE` (or "
    "dimpledb_sa.generate_device_key(), or `ssh-keygen -t ed25519 -N '' -f KEYFILE`)"
)


def ssh_string(data: bytes) -> bytes:
    """``data`` as an SSH ``string``: a big-endian uint32 length, then the bytes."""
    return struct.pack(">I", len(data)) + data


class SshReader:
    """Reads SSH wire fields from ``data``; every read is bounded and checked.

    A field that runs past the end, a ``string`` longer than ``limit`` bytes, or (with
    :meth:`end`) bytes left over raise ``ValueError`` naming the field.
    """

    def __init__(self, data: bytes, what: str = "data") -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def raw(self, n: int, field: str) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise ValueError(f"{self._what} is truncated (in {field})")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def uint32(self, field: str) -> int:
        value: int = struct.unpack(">I", self.raw(4, field))[0]
        return value

    def string(self, field: str, limit: int = 1024) -> bytes:
        n = self.uint32(field)
        if n > limit:
            raise ValueError(f"{self._what}: {field} is {n} bytes long, more than {limit}")
        return self.raw(n, field)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise ValueError(f"{self._what} has {len(self._data) - self._pos} unexpected "
                             "trailing byte(s)")


@dataclass(frozen=True, eq=False)
class DeviceKey:
    """A parsed device key: the Ed25519 private key and its canonical public key line."""

    private: ed25519.Ed25519PrivateKey
    public: str
    """``ssh-ed25519 AAAA...``: what the other devices list in ``recipients=``."""

    def __repr__(self) -> str:
        return f"DeviceKey(public={self.public!r})"

    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``data``."""
        return self.private.sign(data)

    @property
    def public_bytes(self) -> bytes:
        """The 32 bytes of the public key."""
        return self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                      serialization.PublicFormat.Raw)


def _public_line(raw: bytes) -> str:
    blob = ssh_string(ED25519.encode()) + ssh_string(raw)
    return f"{ED25519} {base64.b64encode(blob).decode('ascii')}"


def generate_device_key() -> tuple[str, str]:
    """A new device key: ``(secret, public)``.

    ``secret`` is an unencrypted OpenSSH Ed25519 private key (the text of a key file such
    as ``~/.ssh/id_ed25519``: give it as ``identity=``); ``public`` its ``ssh-ed25519
    AAAA...`` line (give it to the other devices' ``recipients=``). ``age -d -i KEYFILE``
    decrypts what is encrypted to it, and ``ssh-keygen -Y verify`` checks what it signs.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    secret = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                               serialization.NoEncryption()).decode("ascii")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return secret, _public_line(raw)


def is_device_key(text: object) -> bool:
    """Whether ``text`` looks like an OpenSSH private key (any type; not yet validated)."""
    return isinstance(text, str) and text.lstrip().startswith(PRIVATE_KEY_BEGIN)


def _private_key_type(text: str) -> str | None:
    """The key type named inside an OpenSSH private key (``ssh-rsa``, ...), if readable."""
    body = text.strip().removeprefix(PRIVATE_KEY_BEGIN).removesuffix(_PRIVATE_KEY_END)
    try:
        data = base64.b64decode("".join(body.split()), validate=True)
        r = SshReader(data, "key")
        r.raw(len(b"openssh-key-v1\0"), "magic")
        for field in ("cipher", "kdf", "kdf options"):
            r.string(field, _MAX_PRIVATE_KEY)
        r.uint32("key count")
        public = SshReader(r.string("public key", _MAX_PRIVATE_KEY), "public key")
        return public.string("key type", 64).decode("ascii")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def parse_device_key(text: object, *, what: str = "identity=") -> DeviceKey:
    """The device key in ``text`` (the text of an OpenSSH Ed25519 private key file).

    ``ConfigurationError`` (never showing key material) for anything else: a
    passphrase-protected key, another key type, a public key, garbage.
    """
    if not isinstance(text, str):
        raise ConfigurationError(f"{what} must be a string, not {type(text).__name__}")
    if len(text) > _MAX_PRIVATE_KEY or not is_device_key(text):
        raise ConfigurationError(f"{what} is not an OpenSSH private key (-----BEGIN OPENSSH "
                                 f"PRIVATE KEY-----); {_NEW_KEY}")
    data = text.strip().encode("ascii", "replace") + b"\n"
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except TypeError:  # cryptography: "Key is password-protected"
        raise ConfigurationError(
            f"{what} is a passphrase-protected OpenSSH key; dimpledb needs it unencrypted "
            "(remove the passphrase from a copy with `ssh-keygen -p -N '' -f KEYFILE`, and "
            f"keep that file private), or {_NEW_KEY}") from None
    except (ValueError, UnsupportedAlgorithm):
        kind = _private_key_type(text)
        if kind is not None and kind != ED25519:
            raise ConfigurationError(
                f"{what} is an OpenSSH {kind} key; dimpledb device keys are Ed25519: "
                f"{_NEW_KEY}") from None
        raise ConfigurationError(f"{what} is not a valid OpenSSH private key; "
                                 f"{_NEW_KEY}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        kind = _private_key_type(text) or type(key).__name__
        raise ConfigurationError(
            f"{what} is an OpenSSH {kind} key; dimpledb device keys are Ed25519: {_NEW_KEY}")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return DeviceKey(key, _public_line(raw))


def public_key_bytes(line: str) -> bytes:
    """The 32 raw bytes of a canonical ``ssh-ed25519 AAAA...`` line (``ValueError`` if the
    line is not one)."""
    kind, _, b64 = line.partition(" ")
    if kind != ED25519 or not b64 or " " in b64:
        raise ValueError("not an ssh-ed25519 public key line")
    try:
        blob = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("the key is not valid base64") from None
    return _ed25519_from_blob(blob)


def _ed25519_from_blob(blob: bytes) -> bytes:
    r = SshReader(blob, "public key")
    kind = r.string("key type", 64)
    if kind != ED25519.encode():
        raise ValueError(f"the key is of type {kind.decode('ascii', 'replace')!r:.40}, "
                         f"not {ED25519}")
    raw = r.string("key", 64)
    r.end()
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return raw


def is_ssh_public_key(text: object) -> bool:
    """Whether ``text`` looks like an OpenSSH public key line (``ssh-...`` / ``ecdsa-...``
    / ``sk-...``, any type; not yet validated)."""
    return isinstance(text, str) and text.strip().startswith(("ssh-", "ecdsa-", "sk-"))


def parse_public_key(text: object, *, what: str = "the key") -> str:
    """``text`` (an ``ssh-ed25519 AAAA... [comment]`` line) in canonical form, without the
    comment; ``ConfigurationError`` for anything else."""
    if not isinstance(text, str):
        raise ConfigurationError(f"{what} must be a string, not {type(text).__name__}")
    if len(text) > _MAX_PUBLIC_LINE or "\n" in text.strip():
        raise ConfigurationError(f"{what} is not one ssh-ed25519 public key line")
    fields = text.split()
    if not fields or fields[0] != ED25519:
        kind = fields[0] if fields else ""
        raise ConfigurationError(
            f"{what} is not an ssh-ed25519 public key ({kind[:40]!r}): dimpledb takes "
            "Ed25519 SSH keys (ssh-ed25519 AAAA...) besides age keys (age1...)")
    if len(fields) < 2:
        raise ConfigurationError(f"{what} lacks the key after 'ssh-ed25519'")
    try:
        raw = public_key_bytes(f"{ED25519} {fields[1]}")
    except ValueError as e:
        raise ConfigurationError(f"{what} is not a valid ssh-ed25519 public key: {e}") from None
    return _public_line(raw)
