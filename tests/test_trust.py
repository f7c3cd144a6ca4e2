"""Trust (``core/keyring.py``, ``sync/trust.py``, ``Remote.prepare``): persisted recipients and
the recipients rule, revocation, the acceptance rule with key pinning, and signature files
on every storage backend."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Remote as RemoteSpec
from sqlalchemy import Connection, create_engine
from trusttools import add_item, item_names, open_db

import dimpledb_sa as dimple
from dimpledb_sa.core import keyring, schema
from dimpledb_sa.core.errors import ConfigurationError, DecryptionError, SignatureError
from dimpledb_sa.sync.crypto import KeyCipher
from dimpledb_sa.sync.signing import sign
from dimpledb_sa.sync.storage import Storage
from dimpledb_sa.sync.trust import (
    Trust,
    TrustSettings,
    apply_recipients,
    check_bundles,
    read_manifest_checked,
)
from dimpledb_sa.sync.wire import MANIFEST_NAME

A1 = "01933b2d-1234-7890-abcd-ef1234567890"
A2 = "01933b2d-5678-7890-abcd-ef1234567890"
BUNDLE = f"{A1}_{A1}.json"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    engine = create_engine(f"sqlite:///{tmp_path / 'k.db'}")
    with engine.begin() as c:
        yield c
    engine.dispose()


def keys(n: int) -> list[tuple[str, str]]:
    return [dimple.generate_device_key() for _ in range(n)]


# --------------------------------------------------------------------------- keyring


def test_keyring_without_tables_reads_empty(conn: Connection) -> None:
    assert keyring.list_keys(conn) == [] and keyring.pins(conn) == {}
    assert keyring.unpin(conn, A1) is False
    assert keyring.add_key(conn, "age1x", "2024-01-01T00:00:00.000Z") is None  # creates
    assert keyring.add_key(conn, "age1x") is not None
    assert keyring.active_keys(conn) == ["age1x"]
    assert keyring.revoke_key(conn, "age1x", "2024-02-01T00:00:00.000Z") is not None
    assert keyring.list_keys(conn) == [keyring.KeyRecord("age1x", "2024-01-01T00:00:00.000Z",
                                                         "2024-02-01T00:00:00.000Z")]
    assert keyring.add_key(conn, "age1x") is not None and keyring.active_keys(conn) == []
    keyring.revoke_key(conn, "age1never")  # recorded as revoked, so it cannot be added
    assert keyring.list_keys(conn)[-1].revoked
    keyring.restore_key(conn, "age1x")
    assert keyring.active_keys(conn) == ["age1x"]
    assert keyring.pin(conn, A1, "k1") == "k1" and keyring.pin(conn, A1, "k2") == "k1"
    assert keyring.pins(conn) == {A1: "k1"}
    assert keyring.unpin(conn, A1) and keyring.pins(conn) == {}


def test_recipients_rule(conn: Connection) -> None:
    (_, own), (_, b), (_, c) = keys(3)
    apply_recipients(conn, own, [b, own, c, b])
    assert sorted(keyring.active_keys(conn)) == sorted([b, c])
    apply_recipients(conn, own, [c])  # b dropped: revoked, kept for the record
    records = {r.public_key: r for r in keyring.list_keys(conn)}
    assert records[b].revoked and not records[c].revoked and own not in records
    with pytest.raises(ConfigurationError, match=r"revoked.*--restore"):
        apply_recipients(conn, own, [b, c])
    apply_recipients(conn, own, [])
    assert keyring.active_keys(conn) == []


# --------------------------------------------------------------------------- acceptance


def test_check_requires_a_good_trusted_pinned_signature() -> None:
    (s_own, own), (s_b, b), (s_c, c), (s_d, d) = keys(4)
    trust = Trust(own=own, required=True, recipients=[b, c, "age1notasigner"],
                  revoked=frozenset({d}))
    data = b"stored bytes"
    assert trust.check(A1, BUNDLE, data, sign(s_b, data)) == b
    assert trust.new_pins == {} and trust.unconfirmed == {A1: b}  # not pinned before proof
    with pytest.raises(SignatureError, match="neither is pinned"):
        trust.check(A1, BUNDLE, data, sign(s_c, data))  # two keys for one unpinned author
    trust.confirm(A1)
    assert trust.new_pins == {A1: b} and trust.unconfirmed == {}
    with pytest.raises(SignatureError, match="first seen signed by " + re.escape(b)):
        trust.check(A1, BUNDLE, data, sign(s_c, data))  # another key for the same author
    assert trust.check(A2, BUNDLE, data, sign(s_own, data)) == own  # our own key: trusted
    with pytest.raises(SignatureError, match="not signed"):
        trust.check(A1, BUNDLE, data, None)
    with pytest.raises(SignatureError, match=f"{A1}/{BUNDLE}: .*does not match"):
        trust.check(A1, BUNDLE, data + b"!", sign(s_b, data))
    with pytest.raises(SignatureError, match="revoked"):
        trust.check(A1, BUNDLE, data, sign(s_d, data))
    stranger = keys(1)[0][0]
    with pytest.raises(SignatureError, match="not among this replica's recipients"):
        Trust(own=own, required=True, recipients=[b]).check(A1, BUNDLE, data,
                                                             sign(stranger, data))
    # not required: nothing is checked, nothing pinned
    lax = Trust(own=own, recipients=[b])
    assert lax.check(A1, BUNDLE, data, None) is None and lax.new_pins == {}


def test_pins_are_saved_and_enforced_across_syncs(conn: Connection) -> None:
    (s_own, _), (s_b, b), (s_c, c) = keys(3)
    cipher = KeyCipher(s_own, [b, c])
    settings = TrustSettings(recipients=(b, c))
    first = Trust.load(conn, cipher, settings)
    assert first.required and first.signs and set(first.recipients) == {b, c}
    first.check(A1, BUNDLE, b"x", sign(s_b, b"x"))
    first.confirm(A1)
    first.save_pins(conn)
    assert keyring.pins(conn) == {A1: b}
    later = Trust.load(conn, cipher, TrustSettings())  # recipients= not given: persisted
    assert set(later.recipients) == {b, c} and later.pins == {A1: b}
    with pytest.raises(SignatureError, match="first seen"):
        later.check(A1, BUNDLE, b"x", sign(s_c, b"x"))
    revoking = Trust.load(conn, cipher, TrustSettings(recipients=(c,)))  # b revoked
    with pytest.raises(SignatureError, match="revoked"):
        revoking.check(A1, BUNDLE, b"x", sign(s_b, b"x"))
    age = Trust.load(conn, KeyCipher(dimple.generate_identity()[0]), TrustSettings())
    assert not age.required and not age.signs and age.sign(b"x") is None
    forced = Trust.from_cipher(KeyCipher(dimple.generate_identity()[0]),
                               TrustSettings(require_signatures=True))
    assert forced.required and forced.trusted == frozenset()


# --------------------------------------------------------------------------- read paths


def test_signature_files_on_every_backend(remote: RemoteSpec) -> None:
    storage = Storage.from_remote(remote.url, remote.storage_options or None)
    (s_b, b), (s_c, _) = keys(2)
    trust = Trust(required=True, recipients=[b])
    manifest = b'{"manifest": 1}'
    storage.write_manifest(A1, manifest)
    with pytest.raises(SignatureError, match="not signed"):
        read_manifest_checked(storage, trust, A1)
    storage.write_signature(A1, MANIFEST_NAME, sign(s_b, manifest))
    assert read_manifest_checked(storage, trust, A1) == manifest
    assert read_manifest_checked(storage, trust, A2) is None
    assert read_manifest_checked(storage, Trust(), A1) == manifest
    good, bad, unsigned = (f"{uuid.uuid4()}_{A1}.json" for _ in range(3))
    blobs: dict[str, bytes | BaseException] = {good: b"g", bad: b"b", unsigned: b"u",
                                               "missing.json": FileNotFoundError("x")}
    storage.write_signature(A1, good, sign(s_b, b"g"))
    storage.write_signature(A1, bad, sign(s_c, b"b"))  # a key not among the recipients
    checked = check_bundles(storage, trust, A1, blobs)
    assert checked[good] == b"g"
    assert isinstance(checked[bad], SignatureError) and "not among" in str(checked[bad])
    assert isinstance(checked[unsigned], SignatureError)
    assert isinstance(checked["missing.json"], FileNotFoundError)
    assert check_bundles(storage, Trust(), A1, blobs) == blobs
    huge = b"-----BEGIN SSH SIGNATURE-----\n" + b"A" * 100_000
    storage.write_signature(A1, good, huge)
    got = storage.read_signature(A1, good)
    assert got is not None and len(got) <= 4097  # a hostile signature file is not read whole
    assert storage.read_signatures(A1, [good])[good] == got
    with pytest.raises(dimple.RemoteFormatError, match="unsafe"):
        storage.write_signature(A1, "../escape", b"x")


def test_manifest_rewritten_between_reads_is_read_again(tmp_path: Path) -> None:
    storage = Storage.from_remote(str(tmp_path / "remote"))
    (s_b, b), = keys(1)
    storage.write_manifest(A1, b"old")
    storage.write_signature(A1, MANIFEST_NAME, sign(s_b, b"old"))
    real = storage.read_signature
    calls: list[int] = []

    def racing(author: str, name: str) -> bytes | None:
        if not calls:  # a push lands between our reads of the manifest and its signature
            storage.write_signature(A1, MANIFEST_NAME, sign(s_b, b"new"))
            storage.write_manifest(A1, b"new")
        calls.append(1)
        return real(author, name)

    storage.read_signature = racing  # type: ignore[method-assign]
    assert read_manifest_checked(storage, Trust(required=True, recipients=[b]), A1) == b"new"


# --------------------------------------------------------------------------- the facade


def test_persisted_recipients_and_revocation_through_the_facade(tmp_path: Path) -> None:
    """A device key encrypts to the recipients it was given, keeps doing so when reopened
    without recipients=, and stops once a later recipients= drops one (revoked)."""
    remote = str(tmp_path / "remote")
    (s_a, a), (s_b, b) = keys(2)
    with open_db(tmp_path / "a.db", remote, identity=s_a, recipients=[b]) as db:
        assert db.remote.trust.required and db.remote.trust.signs
        add_item(db, "one")
        db.sync()
        assert [r.public_key for r in keyring.list_keys(db.engine.connect())] == [b]
    with open_db(tmp_path / "a.db", remote, identity=s_a) as db:  # recipients= not given
        add_item(db, "two")
        db.sync()
        assert db.cipher.recipients == (a, b)
    with open_db(tmp_path / "b.db", remote, identity=s_b, recipients=[a],
                 require_signatures=False) as db_b:
        db_b.sync()
        assert item_names(db_b) == ["one", "two"]
    with open_db(tmp_path / "a.db", remote, identity=s_a, recipients=[]) as db:  # b revoked
        add_item(db, "three")
        db.sync()
        assert db.cipher.recipients == (a,)
        with db.engine.connect() as c:
            assert [r.revoked for r in keyring.list_keys(c)] == [True]
    with open_db(tmp_path / "b.db", remote, identity=s_b, recipients=[a],
                 require_signatures=False) as db_b:
        with pytest.raises(DecryptionError):
            db_b.sync()
        assert item_names(db_b) == ["one", "two"]
    with pytest.raises(ConfigurationError, match="revoked"), \
            open_db(tmp_path / "a.db", remote, identity=s_a, recipients=[b]) as db:
        db.sync()


def test_facade_keywords(tmp_path: Path) -> None:
    s_a, _ = dimple.generate_device_key()
    age, _ = dimple.generate_identity()
    remote = str(tmp_path / "remote")
    for kw, required in (({"identity": s_a}, True), ({"identity": age}, False),
                         ({"identity": s_a, "require_signatures": False}, False),
                         ({"identity": age, "require_signatures": True}, True),
                         ({"encryption": False}, False)):
        with open_db(tmp_path / "x.db", remote, **kw) as db:
            assert db.remote.trust.required is required
            assert db.replica.max_drift == dimple.DimpleDb.__init__.__kwdefaults__["max_drift"]
    with pytest.raises(ConfigurationError, match="require_signatures"), \
            open_db(tmp_path / "y.db", remote, identity=s_a, require_signatures="yes"):
        pass
    assert schema.keys.name == "dimple_keys" and schema.signers.name == "dimple_signers"
