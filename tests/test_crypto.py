"""Tests for ``dimpledb_sa.sync.crypto``: encryption round trips, failure modes,
configuration, and interop with the `age` tool."""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dimpledb_sa.core.errors import ConfigurationError, DecryptionError
from dimpledb_sa.sync.crypto import (
    AGE_MAGIC,
    Cipher,
    PassphraseCipher,
    PlaintextCipher,
    X25519Cipher,
    generate_identity,
    is_age_file,
    make_cipher,
)

PAYLOAD = b'[{"id": "x", "author": "y", "changes": []}]' + bytes(range(256)) * 300
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def alice() -> tuple[str, str]:
    return generate_identity()


@pytest.fixture(scope="module")
def bob() -> tuple[str, str]:
    return generate_identity()


@pytest.fixture(scope="module")
def passphrase_file() -> bytes:
    """PAYLOAD encrypted once with PASSPHRASE (scrypt costs about a second per operation)."""
    return PassphraseCipher(PASSPHRASE).encrypt(PAYLOAD)


def no_secret_in(message: str, *secrets: str) -> bool:
    return all(s not in message and s.lower() not in message.lower() for s in secrets)


# --------------------------------------------------------------------------- round trips


def test_generate_identity() -> None:
    secret, public = generate_identity()
    assert secret.startswith("AGE-SECRET-KEY-1") and public.startswith("age1")
    assert X25519Cipher(secret).recipient == public
    assert generate_identity()[0] != secret


def test_x25519_round_trip_and_recipients(alice: tuple[str, str], bob: tuple[str, str]) -> None:
    a = X25519Cipher(alice[0], [bob[1], bob[1], alice[1]])
    assert a.encrypted is True
    assert a.recipients == (alice[1], bob[1])  # own key first, deduplicated
    data = a.encrypt(PAYLOAD)
    assert data.startswith(AGE_MAGIC) and is_age_file(data)
    assert data.count(b"\n-> X25519 ") == 2
    assert a.decrypt(data) == PAYLOAD
    assert X25519Cipher(bob[0]).decrypt(data) == PAYLOAD
    assert a.decrypt(a.encrypt(b"")) == b""
    # Without recipients, only the identity's own key.
    solo = X25519Cipher(alice[0]).encrypt(b"x")
    assert solo.count(b"\n-> X25519 ") == 1
    with pytest.raises(DecryptionError):
        X25519Cipher(bob[0]).decrypt(solo)


def test_passphrase_round_trip_and_wrong_passphrase(passphrase_file: bytes) -> None:
    assert passphrase_file.startswith(AGE_MAGIC + b"-> scrypt ")
    cipher = PassphraseCipher(PASSPHRASE)
    assert cipher.encrypted is True
    assert cipher.decrypt(passphrase_file) == PAYLOAD
    with pytest.raises(DecryptionError, match="wrong passphrase") as info:
        PassphraseCipher("not it").decrypt(passphrase_file)
    assert no_secret_in(str(info.value), PASSPHRASE, "not it")
    assert PASSPHRASE not in repr(cipher)


def test_plaintext_cipher() -> None:
    p = PlaintextCipher()
    assert p.encrypted is False
    assert p.encrypt(PAYLOAD) == PAYLOAD == p.decrypt(PAYLOAD)
    assert p.decrypt(b"") == b""


# --------------------------------------------------------------------------- failures


def test_wrong_key(alice: tuple[str, str], bob: tuple[str, str]) -> None:
    data = X25519Cipher(alice[0]).encrypt(PAYLOAD)
    with pytest.raises(DecryptionError, match="not encrypted to this identity") as info:
        X25519Cipher(bob[0]).decrypt(data)
    assert bob[1] in str(info.value)  # names the public key to add to recipients=
    assert no_secret_in(str(info.value), alice[0], bob[0])
    assert info.value.report is None


@pytest.mark.parametrize("where", ["payload", "last byte", "header mac", "stanza"])
def test_tampered_file(alice: tuple[str, str], where: str) -> None:
    cipher = X25519Cipher(alice[0])
    data = bytearray(cipher.encrypt(PAYLOAD))
    header_end = data.index(b"\n--- ") + 1
    i = {
        "payload": len(data) // 2,
        "last byte": len(data) - 1,
        "header mac": header_end + 6,
        "stanza": data.index(b"-> X25519 ") + 12,
    }[where]
    data[i] = data[i] ^ 0x01 if where in ("payload", "last byte") else (
        ord("A") if data[i] != ord("A") else ord("B"))
    with pytest.raises(DecryptionError) as info:
        cipher.decrypt(bytes(data))
    assert no_secret_in(str(info.value), alice[0])


@pytest.mark.parametrize("keep", [0, 10, 30, 200, -1])
def test_truncated_file(alice: tuple[str, str], keep: int) -> None:
    cipher = X25519Cipher(alice[0])
    data = cipher.encrypt(PAYLOAD)
    with pytest.raises(DecryptionError):
        cipher.decrypt(data[:keep])


def test_appended_garbage(alice: tuple[str, str]) -> None:
    cipher = X25519Cipher(alice[0])
    with pytest.raises(DecryptionError, match="corrupt"):
        cipher.decrypt(cipher.encrypt(PAYLOAD) + b"\0")


def test_plaintext_and_encrypted_mix_ups(alice: tuple[str, str], passphrase_file: bytes) -> None:
    x = X25519Cipher(alice[0])
    encrypted = x.encrypt(PAYLOAD)
    # An encrypting cipher given plaintext.
    for cipher in (x, PassphraseCipher(PASSPHRASE)):
        for data in (PAYLOAD, b"", b"[]", b"age-encryption.org/v2\n"):
            with pytest.raises(DecryptionError, match="not age-encrypted"):
                cipher.decrypt(data)
    # A plaintext cipher given an age file (binary or armored).
    for data in (encrypted, passphrase_file, b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n"):
        with pytest.raises(DecryptionError, match="encrypted but no key"):
            PlaintextCipher().decrypt(data)
    # Identity given a passphrase file, passphrase given an X25519 file: no scrypt run.
    with pytest.raises(DecryptionError, match="encrypted with a passphrase"):
        x.decrypt(passphrase_file)
    with pytest.raises(DecryptionError, match="encrypted to public keys"):
        PassphraseCipher(PASSPHRASE).decrypt(encrypted)


def test_excessive_scrypt_work_factor_is_refused_quickly(passphrase_file: bytes) -> None:
    header, rest = passphrase_file.split(b"\n", 2)[1], passphrase_file.split(b"\n", 2)[2]
    parts = header.split(b" ")
    assert parts[1] == b"scrypt"
    hostile = AGE_MAGIC + b" ".join([*parts[:3], b"40"]) + b"\n" + rest
    with pytest.raises(DecryptionError, match="work factor 40"):
        PassphraseCipher(PASSPHRASE).decrypt(hostile)


# --------------------------------------------------------------------------- configuration


def test_make_cipher_choices(alice: tuple[str, str], bob: tuple[str, str]) -> None:
    c: Cipher = make_cipher(identity=None, recipients=None, passphrase=None, encryption=False)
    assert isinstance(c, PlaintextCipher)
    c = make_cipher(identity=alice[0], recipients=None, passphrase=None, encryption=True)
    assert isinstance(c, X25519Cipher) and c.recipients == (alice[1],)
    c = make_cipher(identity=alice[0], recipients=[bob[1]], passphrase=None, encryption=True)
    assert isinstance(c, X25519Cipher) and c.recipients == (alice[1], bob[1])
    c = make_cipher(identity=alice[0], recipients=[], passphrase=None, encryption=True)
    assert isinstance(c, X25519Cipher)
    c = make_cipher(identity=None, recipients=None, passphrase="pw", encryption=True)
    assert isinstance(c, PassphraseCipher)
    c = make_cipher(identity=None, recipients=[], passphrase=None, encryption=False)
    assert isinstance(c, PlaintextCipher)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"identity=.*dimpledb keygen.*passphrase=.*encryption=False"),
        ({"encryption": False, "identity": "ALICE"}, "encryption=False but identity="),
        ({"encryption": False, "passphrase": "pw"}, "encryption=False but passphrase="),
        ({"encryption": False, "recipients": ["BOB"]}, "encryption=False but recipients="),
        ({"identity": "ALICE", "passphrase": "pw"}, "not both"),
        ({"recipients": ["BOB"]}, "recipients= needs identity="),
        ({"recipients": ["BOB"], "passphrase": "pw"}, "recipients= needs identity="),
        ({"passphrase": ""}, "non-empty"),
        ({"identity": "AGE-SECRET-KEY-1NOTAKEY"}, "not a valid age X25519 secret key"),
        ({"identity": ""}, "not a valid age X25519 secret key"),
        ({"identity": "BOB"}, "public key"),
        ({"identity": "ALICE\nALICE"}, "holds 2 keys"),
        ({"identity": "ALICE", "recipients": ["age1nope"]}, r"recipients\[0\] is not a valid"),
        ({"identity": "ALICE", "recipients": ["BOB", "ssh-ed25519 AAAA"]}, r"recipients\[1\]"),
        ({"identity": "ALICE", "recipients": ["ALICE"]}, r"recipients\[0\] is a secret key"),
        ({"identity": "ALICE", "recipients": "BOB"}, "not one string"),
    ],
)
def test_configuration_errors(
    alice: tuple[str, str], bob: tuple[str, str], kwargs: dict[str, object], message: str
) -> None:
    subst = {"ALICE": alice[0], "BOB": bob[1]}

    def fill(v: object) -> object:
        if isinstance(v, str):
            return "\n".join(subst.get(part, part) for part in v.split("\n"))
        if isinstance(v, list):
            return [fill(x) for x in v]
        return v

    args: dict[str, object] = {"identity": None, "recipients": None, "passphrase": None,
                               "encryption": True}
    args.update({k: fill(v) for k, v in kwargs.items()})
    with pytest.raises(ConfigurationError, match=message) as info:
        make_cipher(**args)  # type: ignore[arg-type]
    assert no_secret_in(str(info.value), alice[0], "AGE-SECRET-KEY-1NOTAKEY")


def test_identity_from_key_file_text(alice: tuple[str, str]) -> None:
    text = f"# created: 2024-07-11T10:30:45Z\n# public key: {alice[1]}\n{alice[0]}\n"
    assert X25519Cipher(text).recipient == alice[1]
    assert X25519Cipher(f"  {alice[0]}  \n").recipient == alice[1]


def test_reprs_hide_secrets(alice: tuple[str, str]) -> None:
    assert alice[0] not in repr(X25519Cipher(alice[0]))
    assert alice[1] in repr(X25519Cipher(alice[0]))
    assert "pw-secret" not in repr(PassphraseCipher("pw-secret"))


# --------------------------------------------------------------------------- age CLI interop


def age_tool(name: str) -> str:
    """Path of an age command-line tool; skips the test when it is missing, except in CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"`{name}` is not installed, and CI must run the age interop tests")
        pytest.skip(f"`{name}` is not installed (e.g. `apt-get install age`)")
    return path


@pytest.fixture
def age() -> str:
    """The `age` tool (request it first, so a skip comes before any costly fixture)."""
    return age_tool("age")


@pytest.fixture
def age_keygen() -> str:
    return age_tool("age-keygen")


def run(*cmd: str, stdin: bytes = b"") -> bytes:
    done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


# Runs in the child: become the session leader's controlling terminal, then exec the tool.
_ATTACH_TTY = "import os, sys; os.open(sys.argv[1], os.O_RDWR); os.execv(sys.argv[2], sys.argv[2:])"


def run_with_tty(cmd: list[str], answers: list[str], timeout: float = 60) -> None:
    """Run ``cmd`` on a fresh pseudo-terminal, typing ``answers`` at its passphrase prompts.

    age reads passphrases from /dev/tty only; the child gets the pty as its controlling
    terminal (new session, then open the slave) before it execs the tool.
    """
    if not hasattr(os, "openpty"):
        pytest.skip("needs a POSIX pseudo-terminal")
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _ATTACH_TTY, os.ttyname(slave), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    finally:
        os.close(slave)
    transcript = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                transcript += chunk
                asked = len(re.findall(rb"(?i)passphrase", transcript))
                if pending and asked > len(answers) - len(pending):
                    os.write(master, pending.pop(0).encode() + b"\n")
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail(f"{cmd[0]} did not finish; terminal said {transcript!r}")
        stderr = proc.communicate(timeout=10)[1]
    finally:
        os.close(master)
    assert proc.returncode == 0, (transcript + stderr).decode(errors="replace")
    assert not pending, f"not asked for every passphrase; terminal said {transcript!r}"


def test_age_decrypts_our_x25519_files(
    age: str, tmp_path: Path, alice: tuple[str, str], bob: tuple[str, str]
) -> None:
    enc = tmp_path / "bundle.age"
    enc.write_bytes(X25519Cipher(alice[0], [bob[1]]).encrypt(PAYLOAD))
    for who, secret in (("alice", alice[0]), ("bob", bob[0])):
        key = tmp_path / f"{who}.key"
        key.write_text(secret + "\n")
        assert run(age, "-d", "-i", str(key), str(enc)) == PAYLOAD


def test_we_decrypt_what_age_encrypts_to_our_key(age: str, alice: tuple[str, str]) -> None:
    cipher = X25519Cipher(alice[0])
    assert cipher.decrypt(run(age, "-r", alice[1], stdin=PAYLOAD)) == PAYLOAD
    assert cipher.decrypt(run(age, "-a", "-r", alice[1], stdin=PAYLOAD)) == PAYLOAD  # armored
    with pytest.raises(DecryptionError, match="not encrypted to this identity"):
        cipher.decrypt(run(age, "-r", generate_identity()[1], stdin=PAYLOAD))


def test_age_keygen_keys_work_with_us(age: str, age_keygen: str, tmp_path: Path) -> None:
    keygen = age_keygen
    key = tmp_path / "key.txt"
    run(keygen, "-o", str(key))
    public = run(keygen, "-y", str(key)).decode().strip()
    cipher = X25519Cipher(key.read_text())  # the whole key file, comments included
    assert cipher.recipient == public
    assert run(age, "-d", "-i", str(key), stdin=cipher.encrypt(PAYLOAD)) == PAYLOAD
    assert cipher.decrypt(run(age, "-r", public, stdin=PAYLOAD)) == PAYLOAD
    secret = next(ln for ln in key.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-"))
    assert make_cipher(identity=secret, recipients=None, passphrase=None,
                       encryption=True).decrypt(cipher.encrypt(b"x")) == b"x"


def test_age_decrypts_our_passphrase_files(
    age: str, tmp_path: Path, passphrase_file: bytes
) -> None:
    enc, out = tmp_path / "bundle.age", tmp_path / "bundle.json"
    enc.write_bytes(passphrase_file)
    run_with_tty([age, "-d", "-o", str(out), str(enc)], [PASSPHRASE])
    assert out.read_bytes() == PAYLOAD


def test_we_decrypt_what_age_encrypts_with_a_passphrase(age: str, tmp_path: Path) -> None:
    plain, enc = tmp_path / "bundle.json", tmp_path / "bundle.age"
    plain.write_bytes(PAYLOAD)
    run_with_tty([age, "-p", "-o", str(enc), str(plain)], [PASSPHRASE, PASSPHRASE])
    data = enc.read_bytes()
    assert data.startswith(AGE_MAGIC + b"-> scrypt ")
    assert PassphraseCipher(PASSPHRASE).decrypt(data) == PAYLOAD
