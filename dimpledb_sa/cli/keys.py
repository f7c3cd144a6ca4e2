"""Keys on the command line: the key options, reading identity files, and ``keygen``.

This module owns the key options every command that reads or writes bundles takes
(``--identity-file`` as written by ``keygen``, ``age-keygen`` or ``ssh-keygen -t ed25519``,
``--identity``, ``--passphrase-env VAR``, ``--no-encryption``, and for ``sync`` and
``verify`` ``--recipient`` and ``--recipients-file``), their fallbacks
``$DIMPLEDB_IDENTITY_FILE`` and ``$DIMPLEDB_IDENTITY``, :class:`Keys` (the result, in the
form ``DimpleDb`` takes it; recipients in canonical form), and the ``keygen`` command,
which writes a new age identity (the default) or, with ``--device``, a device key (an
OpenSSH Ed25519 key pair, ``FILE`` and ``FILE.pub``), or prints the public key of either.
A key that cannot be read or parsed is a command-line error (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigurationError
from ..sync.keys import PRIVATE_KEY_BEGIN
from .output import CliError, usage_error

if TYPE_CHECKING:
    from ..sync.crypto import Cipher

__all__ = ["Keys", "add_key_options", "cmd_keygen", "read_keys"]

_SECRET_PREFIX = "AGE-SECRET-KEY-1"


@dataclass
class Keys:
    """The encryption settings read from the command line, as ``DimpleDb`` takes them."""

    identity: str | None = None
    recipients: list[str] = field(default_factory=list)
    passphrase: str | None = None
    encryption: bool = True
    what: str = "key"
    """How to name the key in messages: "identity", "passphrase"."""
    recipient: str | None = None
    """The identity's public key."""
    device: bool = False
    """Whether the identity is a device key (an OpenSSH Ed25519 key, which signs)."""

    @property
    def given(self) -> bool:
        return self.identity is not None or self.passphrase is not None or not self.encryption

    def kwargs(self) -> dict[str, Any]:
        return {"identity": self.identity, "recipients": self.recipients or None,
                "passphrase": self.passphrase, "encryption": self.encryption}

    def cipher(self) -> Cipher:
        from ..sync.crypto import make_cipher

        try:
            return make_cipher(**self.kwargs())
        except ConfigurationError as e:
            raise usage_error(str(e)) from None


def _read_identity_file(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise usage_error(f"cannot read identity file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise usage_error(f"identity file {path} is not a text file") from None
    if PRIVATE_KEY_BEGIN in text:
        return text.strip() + "\n"  # an OpenSSH private key: the whole file
    keys = [ln.strip() for ln in text.splitlines()
            if ln.strip().upper().startswith(_SECRET_PREFIX)]
    if not keys:
        raise usage_error(f"identity file {path} holds no secret key line ({_SECRET_PREFIX}...)"
                          " nor an OpenSSH private key")
    if len(keys) > 1:
        raise usage_error(f"identity file {path} holds {len(keys)} secret keys; "
                          "dimpledb uses exactly one")
    return keys[0]


def _read_recipients_file(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise usage_error(f"cannot read recipients file {path}: {e}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def read_keys(args: argparse.Namespace) -> Keys:
    """The key options, then ``$DIMPLEDB_IDENTITY_FILE`` / ``$DIMPLEDB_IDENTITY``."""
    from ..sync.crypto import KeyCipher

    keys = Keys()
    chosen = [name for name, on in (
        ("--identity-file", args.identity_file is not None),
        ("--identity", args.identity is not None),
        ("--passphrase-env", args.passphrase_env is not None),
        ("--no-encryption", args.no_encryption),
    ) if on]
    if len(chosen) > 1:
        raise usage_error(f"give only one of {' and '.join(chosen)}")
    identity: str | None = None
    if args.identity_file is not None:
        identity = _read_identity_file(args.identity_file)
    elif args.identity is not None:
        identity = args.identity
    elif args.passphrase_env is not None:
        value = os.environ.get(args.passphrase_env)
        if not value:
            raise usage_error(f"environment variable {args.passphrase_env} (--passphrase-env) "
                              "is not set or empty")
        keys.passphrase = value
        keys.what = "passphrase"
    elif args.no_encryption:
        keys.encryption = False
        keys.what = "no key (--no-encryption)"
    elif os.environ.get("DIMPLEDB_IDENTITY_FILE"):
        identity = _read_identity_file(os.environ["DIMPLEDB_IDENTITY_FILE"])
    elif os.environ.get("DIMPLEDB_IDENTITY"):
        identity = os.environ["DIMPLEDB_IDENTITY"]
    keys.recipients = list(args.recipient or [])
    for path in args.recipients_file or []:
        keys.recipients.extend(_read_recipients_file(path))
    if identity is not None:
        try:
            cipher = KeyCipher(identity, keys.recipients)
        except ConfigurationError as e:
            raise usage_error(f"bad key: {e}") from None
        keys.identity = identity
        keys.what = "identity"
        keys.recipient = cipher.recipient
        keys.recipients = list(cipher.recipients[1:])
        keys.device = cipher.device_key is not None
    elif keys.recipients:
        raise usage_error("--recipient needs an identity (--identity-file or --identity) too")
    return keys


def add_key_options(p: argparse.ArgumentParser, *, recipients: bool = False) -> None:
    g = p.add_argument_group("keys (default: $DIMPLEDB_IDENTITY_FILE, then $DIMPLEDB_IDENTITY)")
    g.add_argument("--identity-file", "-i", metavar="PATH",
                   help="an age identity file, as written by `dimpledb keygen` or "
                        "`age-keygen`, or a device key (an unencrypted OpenSSH Ed25519 "
                        "private key, from `dimpledb keygen --device` or `ssh-keygen`)")
    g.add_argument("--identity", metavar="AGE-SECRET-KEY-1...",
                   help="the secret key itself (visible to other users in the process list: "
                        "prefer --identity-file or $DIMPLEDB_IDENTITY)")
    g.add_argument("--passphrase-env", metavar="VAR",
                   help="read a passphrase (age scrypt mode) from environment variable VAR")
    g.add_argument("--no-encryption", action="store_true",
                   help="the remote holds plaintext (no key)")
    if recipients:
        g.add_argument("--recipient", "-r", action="append", metavar="KEY",
                       help="another device's public key (age1... or 'ssh-ed25519 AAAA...'); "
                            "repeatable. sync adds it to the database's recipients, which "
                            "later syncs keep using (see `dimpledb recipients`)")
        g.add_argument("--recipients-file", "-R", action="append", metavar="PATH",
                       help="the public keys in PATH, one a line (an ssh .pub file works); "
                            "repeatable")
    else:
        p.set_defaults(recipient=None, recipients_file=None)


def _public_of(text: str, where: str) -> str:
    from ..sync.crypto import KeyCipher

    if PRIVATE_KEY_BEGIN in text:
        secret = text
    else:
        keys = [ln.strip() for ln in text.splitlines()
                if ln.strip().upper().startswith(_SECRET_PREFIX)]
        if len(keys) != 1:
            raise usage_error(f"{where} holds no single secret key line nor an OpenSSH "
                              "private key")
        secret = keys[0]
    try:
        return KeyCipher(secret).recipient
    except ConfigurationError as e:
        raise usage_error(f"bad key: {e}") from None


def _write_private(path: Path, text: str, force: bool) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL),
                     0o600)
    except FileExistsError:
        raise CliError(f"{path} exists; not overwriting a key (use --force)") from None
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def cmd_keygen(args: argparse.Namespace) -> int:
    from ..sync.crypto import generate_identity
    from ..sync.keys import generate_device_key

    if args.convert is not None:
        if args.convert == "-":
            text, where = sys.stdin.read(), "standard input"
        else:
            text, where = _read_identity_file(args.convert), f"identity file {args.convert}"
        print(_public_of(text, where))
        return 0
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.device:
        text, public = generate_device_key()
        public_file: str | None = f"{public} dimpledb-{created}\n"
    else:
        secret, public = generate_identity()
        text, public_file = f"# created: {created}\n# public key: {public}\n{secret}\n", None
    if args.output:
        path = Path(args.output)
        _write_private(path, text, args.force)
        if public_file is not None:
            try:
                Path(f"{path}.pub").write_text(public_file, encoding="utf-8")
            except OSError as e:
                raise CliError(f"cannot write {path}.pub: {e.strerror or e}") from None
    else:
        sys.stdout.write(text)
    if not args.quiet:
        print(f"Public key: {public}", file=sys.stderr)
    return 0
