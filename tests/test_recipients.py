"""Device keys as identities and recipients (``sync/crypto.py``), mixed with age keys, and
interop with the real ``age`` tool both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
from trusttools import run, tool

import dimpledb_sa as dimple
from dimpledb_sa.core.errors import ConfigurationError, DecryptionError
from dimpledb_sa.sync.crypto import KeyCipher, X25519Cipher, make_cipher

PAYLOAD = b'[{"id": "x"}]' + bytes(range(256)) * 50


@pytest.fixture(scope="module")
def device() -> tuple[str, str]:
    return dimple.generate_device_key()


@pytest.fixture(scope="module")
def other_device() -> tuple[str, str]:
    return dimple.generate_device_key()


def _key_file(tmp_path: Path, name: str, secret: str) -> Path:
    path = tmp_path / name
    path.write_text(secret)
    path.chmod(0o600)
    return path


def test_device_key_identity(device: tuple[str, str], other_device: tuple[str, str]) -> None:
    cipher = make_cipher(identity=device[0], recipients=None, passphrase=None,
                         encryption=True)
    assert isinstance(cipher, KeyCipher) and isinstance(cipher, X25519Cipher)
    assert cipher.recipient == device[1] and cipher.recipients == (device[1],)
    assert cipher.device_key is not None and cipher.device_key.public == device[1]
    data = cipher.encrypt(PAYLOAD)
    assert data.count(b"\n-> ssh-ed25519 ") == 1
    assert cipher.decrypt(data) == PAYLOAD
    with pytest.raises(DecryptionError, match="not encrypted to this identity") as e:
        KeyCipher(other_device[0]).decrypt(data)
    assert other_device[1] in str(e.value) and device[0][40:80] not in str(e.value)
    assert device[0] not in repr(cipher) and device[1] in repr(cipher)


def test_mixed_recipients(device: tuple[str, str], other_device: tuple[str, str]) -> None:
    age_secret, age_public = dimple.generate_identity()
    cipher = KeyCipher(device[0], [age_public, f"{other_device[1]} laptop", device[1]])
    assert cipher.recipients == (device[1], age_public, other_device[1])  # canonical, once
    data = cipher.encrypt(PAYLOAD)
    assert data.count(b"\n-> ssh-ed25519 ") == 2 and data.count(b"\n-> X25519 ") == 1
    for secret in (age_secret, other_device[0], device[0]):
        assert KeyCipher(secret).decrypt(data) == PAYLOAD
    # an age identity encrypting to a device key
    back = KeyCipher(age_secret, [device[1]]).encrypt(PAYLOAD)
    assert KeyCipher(device[0]).decrypt(back) == PAYLOAD


def test_with_recipients_replaces_the_list(device: tuple[str, str],
                                           other_device: tuple[str, str]) -> None:
    age_secret, age_public = dimple.generate_identity()
    cipher = KeyCipher(device[0], [age_public])
    narrower = cipher.with_recipients([other_device[1]])
    assert narrower.recipients == (device[1], other_device[1])
    assert cipher.recipients == (device[1], age_public)  # unchanged
    data = narrower.encrypt(PAYLOAD)
    with pytest.raises(DecryptionError):
        KeyCipher(age_secret).decrypt(data)
    assert narrower.decrypt(data) == PAYLOAD == KeyCipher(other_device[0]).decrypt(data)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"recipients": ["ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ"]}, r"recipients\[0\].*ed25519"),
    ({"recipients": ["DEVICE"]}, r"recipients\[0\] is a secret key"),
    ({"recipients": ["ssh-ed25519 AAAA"]}, r"recipients\[0\] is not a valid ssh-ed25519"),
    ({"identity": "PUBLIC"}, "holds a public key"),
])
def test_configuration_errors(device: tuple[str, str], kwargs: dict[str, object],
                              message: str) -> None:
    fill = {"DEVICE": device[0], "PUBLIC": device[1]}
    args: dict[str, object] = {"identity": device[0], "recipients": None, "passphrase": None,
                               "encryption": True}
    for k, v in kwargs.items():
        args[k] = [fill.get(x, x) for x in v] if isinstance(v, list) else fill.get(str(v), v)
    with pytest.raises(ConfigurationError, match=message) as e:
        make_cipher(**args)  # type: ignore[arg-type]
    assert device[0][40:80] not in str(e.value)


def test_age_decrypts_with_the_device_key_file(tmp_path: Path, device: tuple[str, str],
                                               other_device: tuple[str, str]) -> None:
    age = tool("age")
    age_secret, age_public = dimple.generate_identity()
    enc = tmp_path / "bundle"
    enc.write_bytes(KeyCipher(device[0], [other_device[1], age_public]).encrypt(PAYLOAD))
    for name, secret in (("mine", device[0]), ("other", other_device[0]),
                         ("age", age_secret + "\n")):
        key = _key_file(tmp_path, name, secret)
        assert run(age, "-d", "-i", key, enc).stdout == PAYLOAD


def test_age_decrypts_with_an_ssh_keygen_key_and_we_read_age_r(tmp_path: Path) -> None:
    age, ssh_keygen = tool("age"), tool("ssh-keygen")
    path = tmp_path / "id_ed25519"
    run(ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", "me@host", "-f", path)
    public = path.with_suffix(".pub").read_text().strip()
    # age -R with the ssh public key file; we decrypt with the private key's text
    enc = tmp_path / "from-age"
    run(age, "-R", path.with_suffix(".pub"), "-o", enc, stdin=PAYLOAD)
    assert KeyCipher(path.read_text()).decrypt(enc.read_bytes()) == PAYLOAD
    # age -r with the line itself, armored output
    armored = run(age, "-a", "-r", public, stdin=PAYLOAD).stdout
    assert KeyCipher(path.read_text()).decrypt(armored) == PAYLOAD
    # and the real age reads what we encrypt to that key
    ours = tmp_path / "ours"
    ours.write_bytes(KeyCipher(dimple.generate_identity()[0], [public]).encrypt(PAYLOAD))
    assert run(age, "-d", "-i", path, ours).stdout == PAYLOAD
