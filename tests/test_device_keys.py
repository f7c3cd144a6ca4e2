"""Device keys (``sync/keys.py``): OpenSSH Ed25519 key pairs made by us or by ``ssh-keygen``,
and clear refusals of every other kind of key, without ever showing key material."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest
from trusttools import run, tool

import dimpledb_sa as dimple
from dimpledb_sa.core.errors import ConfigurationError
from dimpledb_sa.sync.keys import (
    PRIVATE_KEY_BEGIN,
    is_device_key,
    is_ssh_public_key,
    parse_device_key,
    parse_public_key,
    public_key_bytes,
)


def _ssh_keygen(tmp_path: Path, kind: str, passphrase: str = "") -> tuple[str, str]:
    path = tmp_path / f"id_{kind}{'_enc' if passphrase else ''}"
    run(tool("ssh-keygen"), "-q", "-t", kind, "-N", passphrase, "-C", "me@host", "-f", path)
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


def _body(secret: str) -> str:
    """The base64 body of a private key file (what must never appear in a message)."""
    return "".join(secret.strip().splitlines()[1:-1])


def test_generate_device_key(tmp_path: Path) -> None:
    secret, public = dimple.generate_device_key()
    assert secret.startswith(PRIVATE_KEY_BEGIN) and secret.endswith("-----END OPENSSH "
                                                                    "PRIVATE KEY-----\n")
    assert public.startswith("ssh-ed25519 AAAA") and len(public.split()) == 2
    assert parse_device_key(secret).public == public
    assert dimple.generate_device_key()[1] != public
    assert is_device_key(secret) and not is_device_key(public) and is_ssh_public_key(public)
    assert secret not in repr(parse_device_key(secret))
    # ssh-keygen reads the file and derives the same public key
    key = tmp_path / "device_key"
    key.write_text(secret)
    key.chmod(0o600)
    assert run(tool("ssh-keygen"), "-y", "-f", key).stdout.decode().strip() == public


def test_existing_openssh_ed25519_key(tmp_path: Path) -> None:
    secret, public = _ssh_keygen(tmp_path, "ed25519")
    key = parse_device_key(secret)
    assert key.public == " ".join(public.split()[:2])  # comment dropped
    assert parse_device_key("\n  " + secret + "\n\n").public == key.public
    assert parse_public_key(public) == key.public
    assert len(public_key_bytes(key.public)) == 32


def test_passphrase_protected_key_is_refused(tmp_path: Path) -> None:
    secret, _ = _ssh_keygen(tmp_path, "ed25519", passphrase="hunter22")
    with pytest.raises(ConfigurationError, match=r"passphrase-protected.*ssh-keygen -p") as e:
        parse_device_key(secret)
    assert _body(secret)[:40] not in str(e.value) and "hunter22" not in str(e.value)


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_other_key_types_are_refused(tmp_path: Path, kind: str) -> None:
    secret, public = _ssh_keygen(tmp_path, kind)
    with pytest.raises(ConfigurationError, match="Ed25519") as e:
        parse_device_key(secret)
    assert _body(secret)[:40] not in str(e.value)
    assert ("ssh-rsa" if kind == "rsa" else "ecdsa-sha2-nistp256") in str(e.value)
    with pytest.raises(ConfigurationError, match="not an ssh-ed25519 public key"):
        parse_public_key(public)


@pytest.mark.parametrize("text", [
    "", "AGE-SECRET-KEY-1XYZ", "ssh-ed25519 AAAA", PRIVATE_KEY_BEGIN,
    f"{PRIVATE_KEY_BEGIN}\nnot base64 at all\n-----END OPENSSH PRIVATE KEY-----\n",
    f"{PRIVATE_KEY_BEGIN}\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    PRIVATE_KEY_BEGIN + "\n" + "A" * 20_000,
])
def test_garbage_private_keys(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_device_key(text)
    with pytest.raises(ConfigurationError, match="must be a string"):
        parse_device_key(b"bytes")


def _line(kind: bytes, raw: bytes, prefix: str = "ssh-ed25519") -> str:
    blob = struct.pack(">I", len(kind)) + kind + struct.pack(">I", len(raw)) + raw
    return f"{prefix} {base64.b64encode(blob).decode()}"


@pytest.mark.parametrize(("text", "message"), [
    ("", "not an ssh-ed25519"),
    ("ssh-ed25519", "lacks the key"),
    ("ssh-ed25519 !!!!", "base64"),
    ("ssh-rsa AAAAB3NzaC1yc2E", "not an ssh-ed25519"),
    (_line(b"ssh-rsa", b"\0" * 32), "of type 'ssh-rsa'"),  # the blob disagrees
    (_line(b"ssh-ed25519", b"\0" * 31), "32 bytes"),
    (_line(b"ssh-ed25519", b"\0" * 32) + "AAAA", "trailing"),
    ("ssh-ed25519 AAAA\nssh-ed25519 AAAA", "one ssh-ed25519"),
])
def test_bad_public_key_lines(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_public_key(text)


def test_public_key_line_canonical_form() -> None:
    _, public = dimple.generate_device_key()
    assert parse_public_key(f"  {public}   laptop of me  ") == public
    assert parse_public_key(public + "\n") == public
    with pytest.raises(ValueError):
        public_key_bytes(public + " comment")
