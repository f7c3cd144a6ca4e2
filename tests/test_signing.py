"""SSH signatures (``sync/signing.py``): the real ``ssh-keygen -Y`` accepts ours, we accept
its, and every altered, foreign or hostile signature is refused with ``SignatureError``."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trusttools import allowed_signers, run, tool

from dimpledb_sa.core.errors import SignatureError
from dimpledb_sa.sync.keys import generate_device_key, parse_device_key
from dimpledb_sa.sync.signing import (
    ARMOR_BEGIN,
    ARMOR_END,
    MAX_SIGNATURE,
    NAMESPACE,
    sign,
    signature_name,
    verify,
)

AUTHOR = "01933b2d-1234-7890-abcd-ef1234567890"
DATA = b"age-encryption.org/v1\n" + bytes(range(256)) * 40

_KEY = generate_device_key()


@pytest.fixture(scope="module")
def key() -> tuple[str, str]:
    return _KEY


def _blob(signature: bytes) -> bytes:
    lines = signature.decode().strip().split("\n")
    return base64.b64decode("".join(lines[1:-1]))


def _armor(blob: bytes) -> bytes:
    text = base64.b64encode(blob).decode()
    body = "\n".join(text[i : i + 70] for i in range(0, len(text), 70))
    return f"{ARMOR_BEGIN}\n{body}\n{ARMOR_END}\n".encode()


def _ssh_keygen_key(tmp_path: Path, kind: str = "ed25519") -> tuple[Path, str]:
    path = tmp_path / f"id_{kind}"
    run(tool("ssh-keygen"), "-q", "-t", kind, "-N", "", "-C", "me@host", "-f", path)
    return path, path.with_suffix(".pub").read_text().strip()


# --------------------------------------------------------------------------- round trip


def test_sign_and_verify(key: tuple[str, str]) -> None:
    secret, public = key
    sig = sign(secret, DATA)
    text = sig.decode("ascii")
    assert text.startswith(ARMOR_BEGIN + "\n") and text.endswith(ARMOR_END + "\n")
    assert all(len(line) <= 76 for line in text.splitlines())
    assert verify(sig, DATA) == public
    assert verify(sig.decode(), DATA, NAMESPACE) == public  # text works too
    assert sign(parse_device_key(secret), DATA) == sig  # Ed25519 is deterministic
    assert verify(sign(secret, b""), b"") == public
    assert signature_name("dimple_db.json") == "dimple_db.json.sig"


def test_ssh_keygen_accepts_our_signatures(tmp_path: Path, key: tuple[str, str]) -> None:
    ssh_keygen = tool("ssh-keygen")
    secret, public = key
    data, sig = tmp_path / "F", tmp_path / "F.sig"
    data.write_bytes(DATA)
    sig.write_bytes(sign(secret, DATA))
    signers = allowed_signers(tmp_path / "allowed_signers", {AUTHOR: public})
    done = run(ssh_keygen, "-Y", "verify", "-f", signers, "-I", AUTHOR, "-n", "dimpledb",
               "-s", sig, stdin=DATA)
    assert b"Good" in done.stdout
    # and refuses it for altered data, another namespace or another principal
    for args, stdin in (((AUTHOR, "dimpledb"), DATA + b"x"), ((AUTHOR, "git"), DATA),
                        (("someone-else", "dimpledb"), DATA)):
        bad = run(ssh_keygen, "-Y", "verify", "-f", signers, "-I", args[0], "-n", args[1],
                  "-s", sig, stdin=stdin, check=False)
        assert bad.returncode != 0


def test_we_accept_ssh_keygen_signatures(tmp_path: Path) -> None:
    ssh_keygen = tool("ssh-keygen")
    path, public = _ssh_keygen_key(tmp_path)
    data = tmp_path / "F"
    data.write_bytes(DATA)
    run(ssh_keygen, "-Y", "sign", "-n", "dimpledb", "-f", path, data)
    sig = (tmp_path / "F.sig").read_bytes()
    assert verify(sig, DATA) == " ".join(public.split()[:2])  # the comment is not kept
    # an existing OpenSSH key signs too, and ssh-keygen checks what it signed
    ours = tmp_path / "ours.sig"
    ours.write_bytes(sign(path.read_text(), DATA))
    signers = allowed_signers(tmp_path / "allowed", {AUTHOR: public})
    run(ssh_keygen, "-Y", "verify", "-f", signers, "-I", AUTHOR, "-n", "dimpledb",
        "-s", ours, stdin=DATA)


# --------------------------------------------------------------------------- refusals


def test_altered_data_or_signature_is_refused(key: tuple[str, str]) -> None:
    secret, _ = key
    sig = sign(secret, DATA)
    with pytest.raises(SignatureError, match="does not match"):
        verify(sig, DATA[:-1] + b"\0")
    blob = bytearray(_blob(sig))
    blob[-1] ^= 0x01  # a bit of the Ed25519 signature
    with pytest.raises(SignatureError, match="does not match"):
        verify(_armor(bytes(blob)), DATA)
    other = generate_device_key()[0]
    swapped = _blob(sign(other, DATA))[:-64] + bytes(_blob(sig)[-64:])  # our value, its key
    with pytest.raises(SignatureError, match="does not match"):
        verify(_armor(swapped), DATA)


def test_other_namespace_hash_or_key_type_is_refused(tmp_path: Path,
                                                     key: tuple[str, str]) -> None:
    ssh_keygen = tool("ssh-keygen")
    secret, _ = key
    with pytest.raises(SignatureError, match="namespace 'git'"):
        verify(sign(secret, DATA, namespace="git"), DATA)
    with pytest.raises(SignatureError, match="namespace"):
        verify(sign(secret, DATA), DATA, namespace="")
    with pytest.raises(ValueError, match="namespace"):
        sign(secret, DATA, namespace="")
    path, _ = _ssh_keygen_key(tmp_path)
    data = tmp_path / "F"
    data.write_bytes(DATA)
    run(ssh_keygen, "-Y", "sign", "-n", "dimpledb", "-O", "hashalg=sha256", "-f", path, data)
    with pytest.raises(SignatureError, match="sha256"):
        verify((tmp_path / "F.sig").read_bytes(), DATA)
    rsa, _ = _ssh_keygen_key(tmp_path, "rsa")
    (tmp_path / "F.sig").unlink()
    run(ssh_keygen, "-Y", "sign", "-n", "dimpledb", "-f", rsa, data)
    with pytest.raises(SignatureError, match="ssh-rsa"):
        verify((tmp_path / "F.sig").read_bytes(), DATA)


def _fields(blob: bytes) -> list[bytes]:
    """magic, version, then the five strings of an SSHSIG blob."""
    out = [blob[:6], blob[6:10]]
    pos = 10
    while pos < len(blob):
        (n,) = struct.unpack(">I", blob[pos : pos + 4])
        out.append(blob[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def _join(fields: list[bytes]) -> bytes:
    return fields[0] + fields[1] + b"".join(struct.pack(">I", len(f)) + f for f in fields[2:])


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: [b"SSHSIH", *f[1:]], "SSHSIG"),
    (lambda f: [f[0], struct.pack(">I", 2), *f[2:]], "version 2"),
    (lambda f: [*f[:5], b"sha1", f[6]], "sha1"),
    (lambda f: f[:6], "truncated"),
    (lambda f: [*f, b""], "trailing"),
    (lambda f: [*f[:2], b"\0" * 1500, *f[3:]], "1500 bytes long, more than 1024"),
    (lambda f: [*f[:6], f[6] + b"x"], "trailing"),
])
def test_malformed_blobs_are_refused(key: tuple[str, str], change: object,
                                     message: str) -> None:
    fields = _fields(_blob(sign(key[0], DATA)))
    assert len(fields) == 7 and fields[3] == b"dimpledb" and fields[5] == b"sha512"
    blob = _join(change(fields))  # type: ignore[operator]
    with pytest.raises(SignatureError, match=message):
        verify(_armor(blob), DATA)


def test_reserved_field_is_signed_and_otherwise_ignored(key: tuple[str, str]) -> None:
    fields = _fields(_blob(sign(key[0], DATA)))
    fields[4] = b"future"
    with pytest.raises(SignatureError, match="does not match"):  # not what was signed
        verify(_armor(_join(fields)), DATA)


@pytest.mark.parametrize("text", [
    b"", b"hello", ARMOR_BEGIN.encode(), f"{ARMOR_BEGIN}\n{ARMOR_END}\n".encode(),
    f"{ARMOR_BEGIN}\n!!!!\n{ARMOR_END}\n".encode(),
    f"{ARMOR_BEGIN}\nU1NI U0lH\n{ARMOR_END}\n".encode(),
    f"{ARMOR_BEGIN}\nU1NIU0lH\n\n{ARMOR_END}\n".encode(),
    b"\xff\xfe" * 10, b"x" * (MAX_SIGNATURE + 1),
    f"{ARMOR_BEGIN}\nU1NIU0lH\n{ARMOR_END}\n".encode(),
])
def test_garbage_is_refused(text: bytes) -> None:
    with pytest.raises(SignatureError):
        verify(text, DATA)


def test_armor_line_endings(key: tuple[str, str]) -> None:
    sig = sign(key[0], DATA)
    assert verify(sig.replace(b"\n", b"\r\n"), DATA) == key[1]
    assert verify(sig.rstrip(b"\n"), DATA) == key[1]
    with pytest.raises(SignatureError):
        verify(b"junk\n" + sig, DATA)


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_raise_only_signature_errors(data: bytes) -> None:
    for candidate in (data, _armor(data), ARMOR_BEGIN.encode() + b"\n" + data):
        with pytest.raises(SignatureError):
            verify(candidate, DATA)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1,
                max_size=4), st.integers(0, 3))
def test_fuzz_mutated_signatures_never_verify(flips: list[tuple[int, int]], cut: int) -> None:
    blob = bytearray(_blob(sign(_KEY[0], DATA)))
    for pos, xor in {pos % len(blob): xor for pos, xor in flips}.items():  # each byte once
        blob[pos] ^= xor
    mutated = bytes(blob[: len(blob) - cut])
    with pytest.raises(SignatureError):
        verify(_armor(mutated), DATA)
