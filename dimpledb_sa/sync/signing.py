"""SSH signatures (SSHSIG) of remote files: making them and checking them strictly.

The signature of a remote file ``F`` is the file ``F.sig``: an armored SSH signature
(OpenSSH's ``PROTOCOL.sshsig``) over ``F``'s stored bytes, made with a device key
(:mod:`.keys`) in the namespace ``dimpledb``, the format ``ssh-keygen -Y sign`` writes::

    -----BEGIN SSH SIGNATURE-----
    base64 of: "SSHSIG", uint32 1, string publickey, string namespace, string reserved,
               string "sha512", string signature
    -----END SSH SIGNATURE-----

where ``signature`` is the Ed25519 signature of ``"SSHSIG", string namespace, string
reserved, string "sha512", string SHA-512(F)``. So ``ssh-keygen -Y verify -f
allowed_signers -I AUTHOR_ID -n dimpledb -s F.sig < F`` accepts it.

:func:`sign` makes one; :func:`verify` checks one and returns the signer's public key line.
Verification is strict and bounded, since signatures come from the remote: at most
:data:`MAX_SIGNATURE` bytes, the exact armor, magic, version 1, the expected namespace,
hash ``sha512``, an ``ssh-ed25519`` key and signature of the right sizes, nothing left over
(the ``reserved`` field is covered by the signature and otherwise ignored, as the protocol
says). Every failure raises :class:`~dimpledb_sa.core.errors.SignatureError` saying what is
wrong; no input makes it raise anything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..core.errors import SignatureError
from .keys import ED25519, DeviceKey, SshReader, parse_device_key, ssh_string

__all__ = [
    "ARMOR_BEGIN",
    "ARMOR_END",
    "MAX_SIGNATURE",
    "NAMESPACE",
    "SIGNATURE_SUFFIX",
    "sign",
    "signature_name",
    "verify",
]

NAMESPACE = "dimpledb"
"""The SSHSIG namespace of every dimpledb signature (``ssh-keygen -Y ... -n dimpledb``)."""

SIGNATURE_SUFFIX = ".sig"
"""The signature of remote file ``F`` is ``F + SIGNATURE_SUFFIX`` next to it."""

ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
MAX_SIGNATURE = 4096
"""Largest signature file read (an Ed25519 signature's armor is under 300 bytes)."""

_MAGIC = b"SSHSIG"
_VERSION = 1
_HASH = "sha512"
_LINE = 70  # what ssh-keygen writes (the protocol suggests at most 76)


def signature_name(name: str) -> str:
    """The file name of ``name``'s signature."""
    return name + SIGNATURE_SUFFIX


def _signed_data(namespace: bytes, reserved: bytes, digest: bytes) -> bytes:
    return (_MAGIC + ssh_string(namespace) + ssh_string(reserved)
            + ssh_string(_HASH.encode()) + ssh_string(digest))


def _check_namespace(namespace: str) -> bytes:
    if not isinstance(namespace, str) or not namespace:
        raise ValueError("an SSH signature namespace must be a non-empty string")
    return namespace.encode("utf-8")


def sign(secret: str | DeviceKey, data: bytes, namespace: str = NAMESPACE) -> bytes:
    """The armored SSH signature (SSHSIG, SHA-512) of ``data`` by a device key.

    ``secret`` is the key's text (an OpenSSH Ed25519 private key) or a parsed
    :class:`~.keys.DeviceKey` (cheaper when signing many files). Returns the contents of
    the ``.sig`` file, ending with a newline.
    """
    key = secret if isinstance(secret, DeviceKey) else parse_device_key(secret)
    ns = _check_namespace(namespace)
    digest = hashlib.sha512(bytes(data)).digest()
    raw_sig = key.sign(_signed_data(ns, b"", digest))
    public_blob = ssh_string(ED25519.encode()) + ssh_string(key.public_bytes)
    blob = (_MAGIC + _VERSION.to_bytes(4, "big") + ssh_string(public_blob) + ssh_string(ns)
            + ssh_string(b"") + ssh_string(_HASH.encode())
            + ssh_string(ssh_string(ED25519.encode()) + ssh_string(raw_sig)))
    text = base64.b64encode(blob).decode("ascii")
    lines = [text[i : i + _LINE] for i in range(0, len(text), _LINE)]
    return "\n".join([ARMOR_BEGIN, *lines, ARMOR_END, ""]).encode("ascii")


def _unarmor(signature: bytes | str) -> bytes:
    if isinstance(signature, str):
        signature = signature.encode("utf-8", "replace")
    if not isinstance(signature, bytes | bytearray | memoryview):
        raise SignatureError(f"a signature must be bytes, not {type(signature).__name__}")
    signature = bytes(signature)
    if len(signature) > MAX_SIGNATURE:
        raise SignatureError(f"the signature file is {len(signature)} bytes, more than "
                             f"{MAX_SIGNATURE}: not an SSH signature")
    try:
        text = signature.decode("ascii")
    except UnicodeDecodeError:
        raise SignatureError("the signature file is not ASCII text (an armored SSH "
                             "signature)") from None
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    if len(lines) < 3 or lines[0] != ARMOR_BEGIN or lines[-1] != ARMOR_END:
        raise SignatureError(f"the signature file is not an armored SSH signature "
                             f"({ARMOR_BEGIN} ... {ARMOR_END})")
    body = "".join(lines[1:-1])
    if not body or any(c.isspace() for c in body):
        raise SignatureError("the signature's armor holds blank or spaced lines")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature's armor is not valid base64") from None


def _parse_blob(blob: bytes, namespace: bytes) -> tuple[bytes, bytes, bytes]:
    """(Ed25519 public key, reserved, raw signature) of an SSHSIG blob; ``ValueError``."""
    r = SshReader(blob, "the signature")
    if r.raw(len(_MAGIC), "magic") != _MAGIC:
        raise ValueError("the signature does not start with SSHSIG")
    version = r.uint32("version")
    if version != _VERSION:
        raise ValueError(f"the signature has version {version}; only version 1 is known")
    public_blob = r.string("public key", 1024)
    ns = r.string("namespace", 256)
    reserved = r.string("reserved field", 1024)
    hash_alg = r.string("hash algorithm", 64)
    sig_blob = r.string("signature", 1024)
    r.end()
    if ns != namespace:
        raise ValueError(f"the signature is for namespace {ns.decode('utf-8', 'replace')!r:.80}"
                         f", not {namespace.decode('utf-8')!r}")
    if hash_alg != _HASH.encode():
        raise ValueError(f"the signature hashes with {hash_alg.decode('ascii', 'replace')!r:.40};"
                         f" only {_HASH} is accepted")
    k = SshReader(public_blob, "the signer's public key")
    kind = k.string("key type", 64)
    if kind != ED25519.encode():
        raise ValueError(f"the signer's key is of type {kind.decode('ascii', 'replace')!r:.40};"
                         f" only {ED25519} is accepted")
    public = k.string("key", 64)
    k.end()
    s = SshReader(sig_blob, "the signature value")
    algorithm = s.string("signature algorithm", 64)
    if algorithm != ED25519.encode():
        raise ValueError(f"the signature algorithm is "
                         f"{algorithm.decode('ascii', 'replace')!r:.40}, not {ED25519}")
    raw_sig = s.string("signature bytes", 128)
    s.end()
    if len(public) != 32 or len(raw_sig) != 64:
        raise ValueError("the Ed25519 key or signature has the wrong size")
    return public, reserved, raw_sig


def verify(signature: bytes | str, data: bytes, namespace: str = NAMESPACE) -> str:
    """Check the armored SSH signature ``signature`` of ``data``; returns the signer's
    public key as a canonical ``ssh-ed25519 AAAA...`` line.

    Whether that key is one to trust is the caller's decision (see :mod:`.trust`).
    :class:`~dimpledb_sa.core.errors.SignatureError` for every failure.
    """
    try:
        ns = _check_namespace(namespace)
    except ValueError as e:
        raise SignatureError(str(e)) from None
    blob = _unarmor(signature)
    try:
        public, reserved, raw_sig = _parse_blob(blob, ns)
        key = ed25519.Ed25519PublicKey.from_public_bytes(public)
    except ValueError as e:
        raise SignatureError(f"malformed SSH signature: {e}") from None
    digest = hashlib.sha512(bytes(data)).digest()
    try:
        key.verify(raw_sig, _signed_data(ns, reserved, digest))
    except InvalidSignature:
        raise SignatureError("the signature does not match the file: the file or its "
                             "signature has been altered") from None
    public_blob = ssh_string(ED25519.encode()) + ssh_string(public)
    return f"{ED25519} {base64.b64encode(public_blob).decode('ascii')}"
