"""Signed sync end to end (``sync/remote.py``: every file a sync writes is signed first,
every file it reads is checked), on every storage backend, as an attacker with write
access to the remote and the devices' public keys would probe it: forged, unsigned and
re-signed files in an honest author's folder, a tampered signature, an author's key
swapped after first sight, a revoked device; and the stock ``ssh-keygen`` and ``age``
tools reading what we wrote."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import Remote as RemoteSpec
from trusttools import add_item, allowed_signers, item_names, open_db, run, tool

import dimpledb_sa as dimple
from dimpledb_sa.core.clock import HybridClock
from dimpledb_sa.sync.crypto import make_cipher
from dimpledb_sa.sync.signing import sign
from dimpledb_sa.sync.storage import Storage
from dimpledb_sa.sync.wire import (
    MANIFEST_NAME,
    BundleInfo,
    bundle_name,
    decode_manifest,
    encode_bundle,
    encode_manifest,
    is_bundle_name,
    manifest_with,
    utc_now_iso,
)

pytestmark = pytest.mark.usefixtures("no_key_in_env")

NAMES = ("a", "b", "c")


class World:
    """Three devices ``a``, ``b`` and ``c``, each with its own device key and the other two
    as recipients, on one remote."""

    def __init__(self, tmp: Path, spec: RemoteSpec) -> None:
        self.tmp, self.spec = tmp, spec
        self.keys = {n: dimple.generate_device_key() for n in NAMES}
        self.authors: dict[str, str] = {}
        self.storage = Storage.from_remote(spec.url, spec.storage_options)

    def public(self, name: str) -> str:
        return self.keys[name][1]

    @contextmanager
    def open(self, name: str, **kw: Any) -> Iterator[dimple.DimpleDb]:
        kw.setdefault("recipients", [self.public(n) for n in NAMES if n != name])
        with open_db(self.tmp / f"{name}.db", self.spec.url, identity=self.keys[name][0],
                     storage_options=self.spec.storage_options, **kw) as db:
            self.authors[name] = db.author_id
            yield db

    def write(self, name: str, item: str, **kw: Any) -> dimple.SyncReport:
        with self.open(name, **kw) as db:
            add_item(db, item)
            return _sync(db)

    def sync(self, name: str, **kw: Any) -> tuple[dimple.SyncReport, list[str]]:
        with self.open(name, **kw) as db:
            return _sync(db), item_names(db)

    def forge(self, author_of: str, *, item: str, encrypt_to: str,
              signer: str | None, sign_manifest: bool = True) -> str:
        """A bundle inserting ``item`` in the folder of ``author_of``, encrypted to
        ``encrypt_to``'s key, listed in that author's manifest; the bundle (and, with
        ``sign_manifest``, the manifest) signed by ``signer`` (a secret key) or not at all.
        Returns the bundle's name."""
        author = self.authors[author_of]
        clock = HybridClock()
        tx, c_id, c_name = clock.reserve(3)
        eid = dimple.new_id()
        rows = [(c_id, tx, "item", eid, "id", None, json.dumps(eid)),
                (c_name, tx, "item", eid, "name", None, json.dumps(item))]
        attacker, _ = dimple.generate_identity()
        cipher = make_cipher(identity=attacker, recipients=[self.public(encrypt_to)],
                             passphrase=None, encryption=True)
        data = cipher.encrypt(encode_bundle([(tx, author, rows)]))
        name = bundle_name(tx, tx)
        self.storage.write_bundle(author, name, data)
        if signer is not None:
            self.storage.write_signature(author, name, sign(signer, data))
        old = self.storage.read_manifest(author)
        assert old is not None
        manifest = manifest_with(decode_manifest(old, author), author,
                                 BundleInfo(name, tx, tx, 1, utc_now_iso()))
        text = encode_manifest(manifest)
        self.storage.write_manifest(author, text)
        if signer is not None and sign_manifest:
            self.storage.write_signature(author, MANIFEST_NAME, sign(signer, text))
        return name

    def bundles(self, name: str) -> list[str]:
        return sorted(f for f in self.storage.list_files(self.authors[name])
                      if is_bundle_name(f))


def _sync(db: dimple.DimpleDb) -> dimple.SyncReport:
    """``db.sync()``'s report, also when the sync raises for the errors it reports."""
    try:
        return db.sync()
    except dimple.SyncError as exc:
        assert exc.report is not None
        return exc.report


@pytest.fixture
def world(tmp_path: Path, remote: RemoteSpec) -> World:
    w = World(tmp_path, remote)
    w.write("a", "a1")
    w.write("b", "b1")
    return w


@pytest.mark.parametrize(("remote", "signer"), [
    *[(b, "unsigned") for b in ("memory", "local", "s3")],
    ("memory", "attacker"), ("memory", "garbage"),
], indirect=["remote"])
def test_a_forged_bundle_is_rejected_for_that_author_while_the_others_merge(
        world: World, signer: str) -> None:
    attacker, _ = dimple.generate_device_key()
    secret = {"unsigned": None, "attacker": attacker, "garbage": world.keys["a"][0]}[signer]
    name = world.forge("a", item="forged", encrypt_to="c", signer=secret,
                       sign_manifest=signer != "garbage")
    if signer == "garbage":  # a's own key signed something else: it does not verify
        author = world.authors["a"]
        world.storage.write_signature(author, MANIFEST_NAME, sign(secret or "", b"other"))
        world.storage.write_signature(author, name, sign(secret or "", b"other"))
    report, names = world.sync("c")
    a, b = world.authors["a"], world.authors["b"]
    assert names == ["b1"]  # b merged; nothing of a's folder, forged or not
    assert set(report.errors) == {a}
    assert re.search(r"not signed|not among|does not verify|signature", report.errors[a])
    # the honest author rewrites its manifest (signed) on its next push: then it reaches c
    world.write("a", "a2")
    report, names = world.sync("c")
    assert names == ["a1", "a2", "b1"] and report.errors == {}
    assert b not in report.errors


def test_a_replaced_bundle_is_set_aside_and_the_rest_merges(world: World) -> None:
    """The attacker overwrites a listed bundle (manifest and its signature untouched)."""
    a = world.authors["a"]
    (first,) = world.bundles("a")
    world.write("a", "a2")
    attacker, _ = dimple.generate_device_key()
    forged = world.forge("a", item="x", encrypt_to="c", signer=attacker, sign_manifest=False)
    data = world.storage.read_bundle(a, forged)
    world.storage.write_bundle(a, first, data)  # the bytes of a forged bundle
    report, names = world.sync("c")
    assert "a1" not in names and "b1" in names and "x" not in names
    assert a in report.errors and report.quarantined >= 1


def test_a_tampered_signature_is_rejected(world: World) -> None:
    a = world.authors["a"]
    sig = world.storage.read_signature(a, MANIFEST_NAME)
    assert sig is not None
    tampered = re.sub(rb"[A-Za-z](?=[A-Za-z0-9+/=]*\n-----END)",
                      lambda m: b"B" if m.group() == b"A" else b"A", sig, count=1)
    assert tampered != sig
    world.storage.write_signature(a, MANIFEST_NAME, tampered)
    report, names = world.sync("c")
    assert names == ["b1"] and set(report.errors) == {a}


def test_an_authors_key_swapped_after_first_sight_is_rejected(world: World) -> None:
    """``c`` first sees ``a``'s files signed by ``a``'s key; later files in ``a``'s folder
    signed by ``b`` (a trusted device, acting as an attacker) are rejected."""
    assert world.sync("c")[1] == ["a1", "b1"]
    world.forge("a", item="swapped", encrypt_to="c", signer=world.keys["b"][0])
    world.write("b", "b2")
    report, names = world.sync("c")
    a = world.authors["a"]
    assert names == ["a1", "b1", "b2"]
    assert set(report.errors) == {a} and "first seen" in report.errors[a]


def test_a_signed_file_copied_into_another_authors_folder_pins_nothing(world: World) -> None:
    """Before ``c`` first sees ``a``, the attacker copies ``b``'s signed manifest into
    ``a``'s folder: that sync rejects ``a`` (the manifest names ``b``), and once ``a``
    pushes again, ``c`` takes ``a``'s own key, not ``b``'s."""
    a, b = world.authors["a"], world.authors["b"]
    manifest, sig = world.storage.read_manifest(b), world.storage.read_signature(
        b, MANIFEST_NAME)
    assert manifest is not None and sig is not None
    world.storage.write_manifest(a, manifest)
    world.storage.write_signature(a, MANIFEST_NAME, sig)
    report, names = world.sync("c")
    assert names == ["b1"] and set(report.errors) == {a}
    world.write("a", "a2")
    report, names = world.sync("c")
    assert names == ["a1", "a2", "b1"] and report.errors == {}


def test_a_revoked_device_is_rejected_and_cannot_read_what_follows(world: World) -> None:
    tool("age")
    assert world.sync("a")[1] == ["a1", "b1"]  # a merged b's files before revoking it
    before = world.bundles("a")
    with world.open("a", recipients=[world.public("c")]) as db:  # b revoked
        add_item(db, "after")
        assert _sync(db).errors == {}
    after = [f for f in world.bundles("a") if f not in before]
    assert after
    keyfile = world.tmp / "b.key"
    keyfile.write_text(world.keys["b"][0])
    keyfile.chmod(0o600)
    a = world.authors["a"]
    age = tool("age")
    old = run(age, "-d", "-i", keyfile, stdin=world.storage.read_bundle(a, before[0]))
    assert b"a1" in _plain(old.stdout)
    new = run(age, "-d", "-i", keyfile, stdin=world.storage.read_bundle(a, after[0]),
              check=False)
    assert new.returncode != 0 and b"after" not in new.stdout
    # b goes on writing; a rejects b's new files and still merges c
    world.write("b", "b2")
    world.write("c", "c1")
    with world.open("a", recipients=[world.public("c")]) as db:
        report = _sync(db)
        names = item_names(db)
    b = world.authors["b"]
    assert "c1" in names and "b2" not in names and "b1" in names
    assert set(report.errors) == {b} and "revoked" in report.errors[b]
    assert world.sync("c")[1] == ["a1", "after", "b1", "b2", "c1"]
    # the next snapshot is encrypted to the remaining keys only, and signed
    with world.open("a", recipients=[world.public("c")]) as db:
        snap = db.snapshot()
    data = world.storage.read_snapshot(a, snap)
    assert world.storage.read_signature(a, snap) is not None
    denied = run(age, "-d", "-i", keyfile, stdin=data, check=False)
    assert denied.returncode != 0
    c_key = world.tmp / "c.key"
    c_key.write_text(world.keys["c"][0])
    c_key.chmod(0o600)
    assert b"after" in _plain(run(age, "-d", "-i", c_key, stdin=data).stdout)


def test_the_stock_tools_read_what_a_sync_wrote(world: World) -> None:
    ssh_keygen, age = tool("ssh-keygen"), tool("age")
    a = world.authors["a"]
    signers = allowed_signers(world.tmp / "allowed_signers", {a: world.public("a")})
    keyfile = world.tmp / "c.key"
    keyfile.write_text(world.keys["c"][0])
    keyfile.chmod(0o600)
    (bundle,) = world.bundles("a")
    for name in (MANIFEST_NAME, bundle):
        data = (world.storage.read_manifest(a) if name == MANIFEST_NAME
                else world.storage.read_bundle(a, name))
        assert data is not None
        sig_file = world.tmp / f"{name}.sig"
        signature = world.storage.read_signature(a, name)
        assert signature is not None
        sig_file.write_bytes(signature)
        run(ssh_keygen, "-Y", "verify", "-f", signers, "-I", a, "-n", "dimpledb",
            "-s", sig_file, stdin=data)
        bad = run(ssh_keygen, "-Y", "verify", "-f", signers, "-I", a, "-n", "dimpledb",
                  "-s", sig_file, stdin=data + b" ", check=False)
        assert bad.returncode != 0
    plain = run(age, "-d", "-i", keyfile, stdin=world.storage.read_bundle(a, bundle)).stdout
    assert b'"a1"' in _plain(plain)


def _plain(data: bytes) -> bytes:
    """A bundle's JSON (format 2 compresses it with gzip)."""
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def test_a_device_that_requires_signatures_but_signs_nothing_reads_its_own_folder(
        tmp_path: Path, remote: RemoteSpec) -> None:
    """An age identity with ``require_signatures=True``: its own files are unsigned, and
    its pushes still read its own manifest (instead of taking it for forged and uploading
    the whole history again)."""
    key, _ = dimple.generate_identity()
    with open_db(tmp_path / "x.db", remote.url, identity=key, require_signatures=True,
                 storage_options=remote.storage_options) as db:
        add_item(db, "one")
        assert db.sync().pushed == 1
        add_item(db, "two")
        report = db.sync()
        assert report.pushed == 1 and report.errors == {}
