"""Trust on the command line: ``keygen --device``, ``recipients add|remove|list|unpin``,
recipients that later ``sync`` runs keep using, and ``verify`` checking signatures (also
with the real ``ssh-keygen -Y verify`` and ``age``)."""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from trusttools import allowed_signers, run, tool

import dimpledb_sa as dimple
from dimpledb_sa import cli
from dimpledb_sa.core import keyring
from dimpledb_sa.sync.signing import sign
from dimpledb_sa.sync.storage import Storage
from dimpledb_sa.sync.wire import MANIFEST_NAME


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DIMPLEDB_IDENTITY", "DIMPLEDB_IDENTITY_FILE"):
        monkeypatch.delenv(name, raising=False)


def call(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def make_db(path: Path, *texts: str) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE todo (id TEXT PRIMARY KEY, text TEXT)")
        conn.executemany("INSERT INTO todo VALUES (?, ?)",
                         [(str(uuid.uuid4()), t) for t in texts])
    return path


def keygen(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> str:
    code, _, err = call(capsys, "keygen", "--device", "-o", path, *extra)
    assert code == 0, err
    return err.split("Public key: ", 1)[1].strip()


def bundles(remote: Path) -> list[Path]:
    return sorted(p for p in remote.glob("*/*.json") if p.name != MANIFEST_NAME)


def test_keygen_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "device"
    public = keygen(capsys, key)
    assert public.startswith("ssh-ed25519 AAAA")
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Path(f"{key}.pub").read_text().startswith(public + " dimpledb-")
    assert run(tool("ssh-keygen"), "-y", "-f", key).stdout.decode().strip() == public
    code, out, _ = call(capsys, "keygen", "-y", key)
    assert (code, out.strip()) == (0, public)
    code, _, err = call(capsys, "keygen", "--device", "-o", key)
    assert code == 1 and "--force" in err
    code, out, err = call(capsys, "keygen", "--device", "-q")
    assert code == 0 and out.startswith("-----BEGIN OPENSSH PRIVATE KEY-----") and not err
    # an ssh-keygen key is an identity file too
    ssh_key = tmp_path / "id_ed25519"
    run(tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", ssh_key)
    code, out, _ = call(capsys, "keygen", "-y", ssh_key)
    assert code == 0 and out.split() == ssh_key.with_suffix(".pub").read_text().split()[:2]
    enc = tmp_path / "id_enc"
    run(tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "secret", "-f", enc)
    code, _, err = call(capsys, "keygen", "-y", enc)
    assert code == 2 and "passphrase-protected" in err


def test_recipients_persist_and_revoke(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    age = tool("age")
    a_key, b_key = tmp_path / "a.key", tmp_path / "b.key"
    keygen(capsys, a_key)
    b_public = keygen(capsys, b_key)
    db, remote = make_db(tmp_path / "a.db", "milk"), tmp_path / "remote"
    code, _, err = call(capsys, "sync", db, remote, "-i", a_key, "-r", b_public, "--adopt")
    assert code == 0, err
    assert "added 1 recipient(s)" in err
    code, out, _ = call(capsys, "recipients", "list", db, "--json")
    listed = json.loads(out)
    assert [k["public_key"] for k in listed["keys"]] == [b_public]
    first = bundles(remote)
    # format 3: gzipped JSON inside the age envelope
    assert gzip.decompress(run(age, "-d", "-i", b_key, first[0]).stdout).startswith(
        b'{"format":"dimpledb-bundle","version":3,')
    # a later sync without -r still encrypts to b
    _add_row(db)
    assert call(capsys, "sync", db, remote, "-i", a_key)[0] == 0
    second = [p for p in bundles(remote) if p not in first]
    assert second and run(age, "-d", "-i", b_key, second[0]).returncode == 0
    # remove: revoked, kept; the next bundle is not for b any more
    code, out, _ = call(capsys, "recipients", "remove", db, b_public)
    assert code == 0 and out.startswith("revoked: ")
    code, out, _ = call(capsys, "recipients", "list", db)
    assert "0 recipient(s)" in out and "1 revoked" in out and "revoked 20" in out
    seen = bundles(remote)
    _add_row(db)
    assert call(capsys, "sync", db, remote, "-i", a_key)[0] == 0
    third = [p for p in bundles(remote) if p not in seen]
    assert third and run(age, "-d", "-i", b_key, third[0], check=False).returncode != 0
    assert run(age, "-d", "-i", a_key, third[0]).returncode == 0
    # it cannot come back by accident
    code, _, err = call(capsys, "sync", db, remote, "-i", a_key, "-r", b_public)
    assert code == 1 and "--restore" in err
    code, _, err = call(capsys, "recipients", "add", db, b_public)
    assert code == 1 and "--restore" in err
    code, out, _ = call(capsys, "recipients", "add", db, b_public, "--restore")
    assert code == 0 and out.startswith("restored: ")
    pub_file = Path(f"{b_key}.pub")
    code, out, _ = call(capsys, "recipients", "add", db, pub_file)  # a .pub file works too
    assert code == 0 and out.startswith("already listed: ")


def _add_row(db: Path) -> None:
    """One recorded insert (Core DML on an engine that opts in to capture)."""
    from sqlalchemy import MetaData

    engine = create_engine(f"sqlite:///{db}").execution_options(dimpledb_sa_capture=True)
    md = MetaData()
    md.reflect(engine, only=["todo"])
    d = dimple.DimpleDb(engine, md)
    try:
        with engine.begin() as conn:
            conn.execute(md.tables["todo"].insert().values(id=str(uuid.uuid4()), text="more"))
    finally:
        d.close()
        engine.dispose()


def test_recipients_errors_and_unpin(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    db = make_db(tmp_path / "x.db")
    code, _, err = call(capsys, "recipients", "add", db, "age1nope")
    assert code == 2 and "bad key" in err
    code, _, err = call(capsys, "recipients", "add", db)
    assert code == 2 and "at least one KEY" in err
    author = str(uuid.uuid4())
    code, _, err = call(capsys, "recipients", "unpin", db, author)
    assert code == 1 and "no pinned key" in err
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        keyring.pin(conn, author, dimple.generate_device_key()[1])
    engine.dispose()
    code, out, _ = call(capsys, "recipients", "list", db)
    assert "1 pinned signer(s)" in out and author in out
    code, out, _ = call(capsys, "recipients", "unpin", db, author)
    assert code == 0 and "unpinned" in out
    code, out, _ = call(capsys, "recipients", "remove", db, dimple.generate_identity()[1])
    assert code == 0 and "not listed" in out


def _sign_remote(remote: Path, author: str, secret: str) -> list[Path]:
    """Sign every file of ``author`` as the push will (the wiring comes with it)."""
    storage = Storage.from_remote(str(remote))
    names = [n for n in storage.list_files(author) if not n.endswith(".sig")]
    for name in names:
        data = (remote / author / name).read_bytes()
        storage.write_signature(author, name, sign(secret, data))
    return [remote / author / n for n in names]


def test_verify_checks_signatures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ssh_keygen = tool("ssh-keygen")
    key, other = tmp_path / "a.key", tmp_path / "other.key"
    public = keygen(capsys, key)
    other_public = keygen(capsys, other)
    db, remote = make_db(tmp_path / "a.db", "one", "two"), tmp_path / "remote"
    assert call(capsys, "sync", db, remote, "-i", key, "--adopt")[0] == 0
    (author,) = [p.name for p in remote.iterdir()]
    code, out, _ = call(capsys, "verify", remote, "-i", key, "--require-signatures")
    assert code == 0 and "2 file(s) signed, 0 unsigned" in out  # a device key signs
    signatures = sorted((remote / author).glob("*.sig"))
    assert len(signatures) == 2
    for sig in signatures:
        sig.unlink()
    code, out, _ = call(capsys, "verify", remote, "-i", key, "--require-signatures")
    assert code == 1 and out.count("FAIL") == 2 and "not signed" in out
    code, out, _ = call(capsys, "verify", remote, "-i", key)
    assert code == 0 and "all good; 0 file(s) signed, 2 unsigned" in out
    files = _sign_remote(remote, author, key.read_text())
    signers = allowed_signers(tmp_path / "allowed_signers", {author: public})
    code, out, _ = call(capsys, "verify", remote, "-i", key, "--require-signatures",
                        "--allowed-signers", signers, "-v")
    assert code == 0, out
    assert "2 file(s) signed, 0 unsigned" in out and f"{author}: signed by {public}" in out
    code, out, _ = call(capsys, "inspect", remote)
    assert out.count("signed") >= 2
    for f in files:  # the real ssh-keygen accepts every signature on the remote
        run(ssh_keygen, "-Y", "verify", "-f", signers, "-I", author, "-n", "dimpledb",
            "-s", f"{f}.sig", stdin=f.read_bytes())
    # a key the allowed signers do not list for this author
    wrong = allowed_signers(tmp_path / "wrong", {"*": other_public})
    code, out, _ = call(capsys, "verify", remote, "-i", key, "--allowed-signers", wrong)
    assert code == 1 and "do not list" in out
    # one file signed by another key, one signature altered
    bundle = next(f for f in files if f.name != MANIFEST_NAME)
    Path(f"{bundle}.sig").write_bytes(sign(other.read_text(), bundle.read_bytes()))
    code, out, _ = call(capsys, "verify", remote, "-i", key)
    assert code == 1 and "but other files of this author by" in out
    manifest_sig = remote / author / f"{MANIFEST_NAME}.sig"
    manifest_sig.write_bytes(re.sub(rb"[A-Za-z](?=[A-Za-z0-9+/=]*\n-----END)",
                                    lambda m: b"B" if m.group() == b"A" else b"A",
                                    manifest_sig.read_bytes(), count=1))
    code, out, _ = call(capsys, "verify", remote, "-i", key)
    assert code == 1 and "bad signature" in out
    code, _, err = call(capsys, "verify", remote, "-i", key, "--allowed-signers",
                        tmp_path / "missing")
    assert code == 2 and "--allowed-signers" in err
