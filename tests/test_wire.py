"""Tests for ``dimpledb_sa.sync.wire``: the bundle and manifest codec: round trips, strict
validation, remote-name validators."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimpledb_sa.core.errors import RemoteFormatError
from dimpledb_sa.sync.wire import (
    MANIFEST_NAME,
    BundleInfo,
    ChangeRow,
    Manifest,
    TxRecord,
    _decode_checked,
    _decode_fast,
    bundle_name,
    decode_bundle,
    decode_manifest,
    encode_bundle,
    encode_manifest,
    is_bundle_name,
    is_timestamp,
    is_uuid,
    manifest_with,
    parse_bundle_name,
    utc_now_iso,
)

AUTHOR = "01933b2d-1234-7890-abcd-ef1234567890"
OTHER = "01933b2d-9999-7890-abcd-ef1234567890"
TS = "2024-07-11T10:30:45.123Z"


def uid(n: int, kind: int = 0) -> str:
    """A canonical UUIDv7-shaped id; ``kind`` separates transaction ids from change ids."""
    return (
        f"0193{kind:02x}ef-{n >> 48 & 0xFFFF:04x}-7{n >> 36 & 0xFFF:03x}-"
        f"8{n >> 24 & 0xFFF:03x}-{n & 0xFFFFFFFFFFFF:012x}"
    )


def tx(n: int, changes: list[tuple[str, str, str, Any, Any]], author: str = AUTHOR) -> TxRecord:
    tid = uid(n, 1)
    rows: list[ChangeRow] = [
        (
            uid(n * 100 + i, 2),
            tid,
            etype,
            eid,
            attr,
            None if old is None else json.dumps(old),
            None if new is None else json.dumps(new),
        )
        for i, (etype, eid, attr, old, new) in enumerate(changes)
    ]
    return (tid, author, rows)


SAMPLE: list[TxRecord] = [
    tx(1, [("users", "e1", "id", None, "e1"), ("users", "e1", "name", None, "John")]),
    tx(
        2,
        [
            ("users", "e1", "name", "John", "Jöhn \"Doe\" \\ \n\t ☃ 𝄞 \u0001 \\u0000"),
            ("users", "e1", "prefs", None, {"a": [1, 2.5, None, True], "b": {"ü": "x"}}),
            ("users", "e1", "score", 1, -2.75e-10),
            ("users", "e1", "big", None, 12345678901234567890),
            ("users", "e1", "flag", False, True),
            ("users", "e1", "nan", 0.0, float("nan")),
            ("users", "e1", "inf", float("-inf"), float("inf")),
            ("users", "e1", "empty", "", []),
            ("ユーザー", "ключ/../\\x", "名前", {}, "value"),
        ],
    ),
    tx(3, [("users", "e1", "id", "e1", None)]),
]


def raw(transactions: list[TxRecord]) -> list[dict[str, Any]]:
    """The bundle as a JSON document, to be broken by the tests."""
    return json.loads(encode_bundle(transactions))  # type: ignore[no-any-return]


def decode_doc(doc: Any, author: str = AUTHOR, **kw: Any) -> list[TxRecord]:
    return decode_bundle(json.dumps(doc).encode(), author, **kw)


# --------------------------------------------------------------------------- names


def test_uuid_and_bundle_name_validators() -> None:
    good = uid(0xABCDEF, 0xFA)
    assert is_uuid(good)
    assert is_uuid("00000000-0000-0000-0000-000000000000")
    for bad in [
        good.upper(),
        good + "\n",
        " " + good,
        good.replace("-", ""),
        "{" + good + "}",
        good[:-1],
        good[:-1] + "g",
        "..",
        "",
        None,
        5,
        good.encode(),
        "\uff10" + good[1:],  # a non-ASCII digit (fullwidth zero)
    ]:
        assert not is_uuid(bad), bad
    name = bundle_name(uid(1), uid(2))
    assert name == f"{uid(1)}_{uid(2)}.json"
    assert is_bundle_name(name)
    assert parse_bundle_name(name) == (uid(1), uid(2))
    for bad in [
        MANIFEST_NAME,
        f"{uid(1)}_{uid(2)}.JSON",
        f"{uid(1)}_{uid(2)}.json\n",
        f"../{uid(1)}_{uid(2)}.json",
        f"{uid(1)}_{uid(2)}.json/..",
        f"{uid(1)}/{uid(2)}.json",
        f"{uid(1)}_{uid(2)}\x00.json",
        f"{good.upper()}_{uid(2)}.json",
        f"{uid(1)}_{uid(2)}",
        "",
        None,
    ]:
        assert not is_bundle_name(bad), bad
        with pytest.raises(RemoteFormatError):
            parse_bundle_name(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bundle_name("x", uid(1))


def test_timestamps() -> None:
    now = utc_now_iso()
    assert is_timestamp(now) and now.endswith("Z") and len(now) == len(TS)
    assert is_timestamp(TS)
    assert is_timestamp("2024-07-11T10:30:45Z")
    assert is_timestamp("2024-07-11T10:30:45.123456Z")
    for bad in ["2024-07-11T10:30:45.123", "2024-07-11 10:30:45Z", "2024-13-11T10:30:45Z",
                "2024-02-30T10:30:45Z", "2024-07-11T10:30:45+00:00", "", None, 0]:
        assert not is_timestamp(bad), bad


# --------------------------------------------------------------------------- bundles


def test_round_trip_is_exact() -> None:
    data = encode_bundle(SAMPLE)
    assert decode_bundle(data, AUTHOR) == SAMPLE
    assert decode_bundle(data, AUTHOR, name=bundle_name(uid(1, 1), uid(3, 1))) == SAMPLE
    assert data.isascii()


def test_encoding_is_the_seed_format() -> None:
    doc = raw(SAMPLE)
    first = doc[1]
    assert set(first) == {"id", "author", "changes"}
    assert first["id"] == uid(2, 1) and first["author"] == AUTHOR
    change = first["changes"][0]
    assert list(change) == ["id", "transaction_id", "entity_type", "entity_id", "attribute",
                            "old_value", "new_value"]
    assert change["old_value"] == "John"  # embedded as a JSON value, not as a string of JSON
    assert first["changes"][1]["new_value"] == {"a": [1, 2.5, None, True], "b": {"ü": "x"}}
    assert doc[0]["changes"][0]["old_value"] is None
    assert doc[2]["changes"][0]["new_value"] is None


def test_empty_bundle_and_empty_transaction() -> None:
    assert decode_bundle(encode_bundle([]), AUTHOR) == []
    empty: list[TxRecord] = [(uid(1, 1), AUTHOR, [])]
    assert decode_bundle(encode_bundle(empty), AUTHOR) == empty
    with pytest.raises(RemoteFormatError, match="no transactions"):
        decode_bundle(encode_bundle([]), AUTHOR, name=bundle_name(uid(1), uid(2)))


def test_values_are_reserialized_canonically() -> None:
    doc = raw(SAMPLE[:1])
    doc[0]["changes"][1]["new_value"] = {"b": 1e2, "a": "\u00e9"}
    text = json.dumps(doc, ensure_ascii=False, indent=4).encode("utf-8")
    rows = decode_bundle(text, AUTHOR)[0][2]
    assert rows[1][6] == json.dumps({"b": 100.0, "a": "é"})


def test_encode_rejects_misordered_input() -> None:
    with pytest.raises(ValueError, match="ascending"):
        encode_bundle([SAMPLE[1], SAMPLE[0]])
    with pytest.raises(ValueError, match="ascending"):
        encode_bundle([SAMPLE[0], SAMPLE[0]])
    tid, author, rows = SAMPLE[0]
    with pytest.raises(ValueError, match="transaction_id"):
        encode_bundle([(tid, author, [(*rows[0][:1], uid(9, 1), *rows[0][2:])])])


def _mutate(path: tuple[Any, ...], value: Any) -> Any:
    doc: Any = raw(SAMPLE)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()
C = (1, "changes", 0)  # the first change of the second transaction

MALFORMED: list[tuple[str, Any, str]] = [
    ("not a list", {"id": uid(1, 1)}, "not a JSON array"),
    ("tx not an object", [1], r"transaction #0 is not an object"),
    ("tx missing field", _mutate((0, "author"), _DELETE), "transaction #0 lacks field.*author"),
    ("tx extra field", _mutate((0, "extra"), 1), "transaction #0 has unknown field.*extra"),
    ("tx id not a uuid", _mutate((0, "id"), "1"), "transaction #0 has an id that is not"),
    ("tx id uppercase", _mutate((0, "id"), uid(1, 1).upper()), "not a canonical UUID"),
    ("tx id not a string", _mutate((0, "id"), 7), "transaction #0 has an id that is not"),
    ("foreign author", _mutate((0, "author"), OTHER), f"author '{OTHER}'.*folder of author"),
    ("changes not a list", _mutate((0, "changes"), {}), "changes that are not a list"),
    ("change not an object", _mutate(C, "x"), r"change #0 is not an object"),
    ("change missing field", _mutate((*C, "new_value"), _DELETE), "lacks field.*new_value"),
    ("change extra field", _mutate((*C, "deleted"), True), "unknown field.*deleted"),
    ("change id bad", _mutate((*C, "id"), "../../etc"), "change #0 has an id that is not"),
    ("change id null", _mutate((*C, "id"), None), "change #0 has an id that is not"),
    ("change in wrong tx", _mutate((*C, "transaction_id"), uid(1, 1)), "has transaction_id"),
    ("entity_type empty", _mutate((*C, "entity_type"), ""), "empty entity_type"),
    ("entity_type number", _mutate((*C, "entity_type"), 3), "entity_type that is not a string"),
    ("entity_id empty", _mutate((*C, "entity_id"), ""), "empty entity_id"),
    ("entity_id number", _mutate((*C, "entity_id"), 12), "entity_id that is not a string"),
    ("entity_id null", _mutate((*C, "entity_id"), None), "entity_id that is not a string"),
    ("attribute empty", _mutate((*C, "attribute"), ""), "empty attribute"),
    ("attribute list", _mutate((*C, "attribute"), ["a"]), "attribute that is not a string"),
    ("duplicate change id", _mutate((*C, "id"), raw(SAMPLE)[0]["changes"][0]["id"]),
     "appears more than once"),
    ("duplicate tx", [raw(SAMPLE)[0], raw(SAMPLE)[0]], "appears twice"),
    ("txs out of order", [raw(SAMPLE)[1], raw(SAMPLE)[0]], "out of order"),
]


@pytest.mark.parametrize(("doc", "message"), [(d, m) for _, d, m in MALFORMED],
                         ids=[n for n, _, _ in MALFORMED])
def test_malformed_bundles_are_rejected_precisely(doc: Any, message: str) -> None:
    with pytest.raises(RemoteFormatError, match=message) as info:
        decode_doc(doc)
    assert info.value.report is None
    assert _decode_fast(doc, AUTHOR) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b"[", "not valid JSON"),
        (b"\xff\xfe[]", "not UTF-8"),
        ("[]".encode("utf-16"), "not UTF-8"),
        (b"\xef\xbb\xbf[]", "not valid JSON"),  # a BOM
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'[{"id": 1' + b"0" * 5000 + b"}]", "not valid JSON"),  # int digit limit
        (b"age-encryption.org/v1\n-> X25519 abc\n", "not valid JSON"),
        (b"null", "not a JSON array"),
    ],
)
def test_unparseable_bundles_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(RemoteFormatError, match=message):
        decode_bundle(data, AUTHOR)


def test_author_argument_and_bundle_name_are_checked() -> None:
    data = encode_bundle(SAMPLE)
    with pytest.raises(RemoteFormatError, match="folder of author"):
        decode_bundle(data, OTHER)
    with pytest.raises(RemoteFormatError, match="not a canonical author id"):
        decode_bundle(data, "../x")
    with pytest.raises(RemoteFormatError, match="not the ones its name states"):
        decode_bundle(data, AUTHOR, name=bundle_name(uid(1, 1), uid(2, 1)))
    with pytest.raises(RemoteFormatError, match="not a bundle file name"):
        decode_bundle(data, AUTHOR, name="x.json")


def test_large_bundle_round_trip() -> None:
    txs = [
        tx(t, [("todo", uid(t, 3), f"c{i}", f"v{t}", i * 0.5) for i in range(20)])
        for t in range(1, 501)
    ]
    data = encode_bundle(txs)
    assert len(data) > 1 << 20  # the garbage-collector pause path
    assert decode_bundle(data, AUTHOR) == txs


# Values as the capture layer produces them: json.dumps of JSON-compatible values.
texts = st.text(st.characters(blacklist_characters="\x00"))  # no NUL: see test_limits
names = st.text(st.characters(blacklist_characters="\x00"), min_size=1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
changes_st = st.lists(
    st.tuples(names, names, names, json_values,
              json_values),
    max_size=4,
)


@settings(max_examples=50, deadline=None)
@given(st.lists(changes_st, max_size=4))
def test_round_trip_property(transactions: list[list[tuple[str, str, str, Any, Any]]]) -> None:
    txs = [tx(n + 1, changes) for n, changes in enumerate(transactions)]
    data = encode_bundle(txs)
    assert decode_bundle(data, AUTHOR) == txs
    doc = json.loads(data)
    assert _decode_fast(doc, AUTHOR) == _decode_checked(doc, AUTHOR, "bundle") == txs


junk = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from(["", "x", AUTHOR, OTHER]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "author", "changes", "transaction_id", "x"]), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_fast_path_never_accepts_what_the_checked_path_rejects(data: st.DataObject) -> None:
    doc = raw(SAMPLE)
    # Replace one node of a valid bundle with junk.
    tx_i = data.draw(st.integers(0, len(doc) - 1))
    where = data.draw(st.sampled_from(["tx", "change"]))
    target = doc[tx_i] if where == "tx" or not doc[tx_i]["changes"] else data.draw(
        st.sampled_from(doc[tx_i]["changes"]))
    key = data.draw(st.sampled_from(sorted(target)))
    target[key] = data.draw(junk)
    fast = _decode_fast(doc, AUTHOR)
    try:
        checked = _decode_checked(doc, AUTHOR, "bundle")
    except RemoteFormatError:
        assert fast is None
    else:
        assert fast is None or fast == checked


# --------------------------------------------------------------------------- manifests

B1 = BundleInfo(bundle_name(uid(1, 1), uid(2, 1)), uid(1, 1), uid(2, 1), 2, TS)
B2 = BundleInfo(bundle_name(uid(3, 1), uid(3, 1)), uid(3, 1), uid(3, 1), 1, TS)
M = Manifest(AUTHOR, uid(3, 1), TS, (B1, B2))


def test_manifest_round_trip_and_seed_shape() -> None:
    data = encode_manifest(M)
    assert decode_manifest(data, AUTHOR) == M
    doc = json.loads(data)
    assert doc == {
        "author_id": AUTHOR,
        "last_transaction_id": uid(3, 1),
        "last_sync_timestamp": TS,
        "bundles": [
            {"filename": B1.filename, "first_transaction_id": uid(1, 1),
             "last_transaction_id": uid(2, 1), "transaction_count": 2, "created_at": TS},
            {"filename": B2.filename, "first_transaction_id": uid(3, 1),
             "last_transaction_id": uid(3, 1), "transaction_count": 1, "created_at": TS},
        ],
    }
    empty = Manifest(AUTHOR, None, TS, ())
    assert decode_manifest(encode_manifest(empty), AUTHOR) == empty


def test_manifest_accepts_the_seed_example() -> None:
    seed = {
        "author_id": "01933b2d-1234-7890-abcd-ef1234567890",
        "last_transaction_id": "01933b2e-3f47-7b12-9c8d-1234567890ab",
        "last_sync_timestamp": "2024-07-11T10:30:45.123Z",
        "bundles": [
            {
                "filename": "01933b2a-1111-7111-1111-111111111111_"
                "01933b2d-2222-7222-2222-222222222222.json",
                "first_transaction_id": "01933b2a-1111-7111-1111-111111111111",
                "last_transaction_id": "01933b2d-2222-7222-2222-222222222222",
                "transaction_count": 42,
                "created_at": "2024-07-11T09:15:30.456Z",
            },
            {
                "filename": "01933b2d-3333-7333-3333-333333333333_"
                "01933b2e-3f47-7b12-9c8d-1234567890ab.json",
                "first_transaction_id": "01933b2d-3333-7333-3333-333333333333",
                "last_transaction_id": "01933b2e-3f47-7b12-9c8d-1234567890ab",
                "transaction_count": 15,
                "created_at": "2024-07-11T10:30:45.123Z",
            },
        ],
    }
    m = decode_manifest(json.dumps(seed, indent=2).encode(), AUTHOR)
    assert [b.transaction_count for b in m.bundles] == [42, 15]


def _manifest_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(encode_manifest(M))
    for key, value in changes.items():
        if key.startswith("b0_"):
            doc["bundles"][0][key[3:]] = value
        elif value is _DELETE:
            del doc[key]
        else:
            doc[key] = value
    return doc


BAD_MANIFESTS: list[tuple[str, Any, str]] = [
    ("not an object", [], "not a JSON object"),
    ("missing field", _manifest_doc(bundles=_DELETE), "lacks field.*bundles"),
    ("extra field", _manifest_doc(version=2), "unknown field.*version"),
    ("foreign author", _manifest_doc(author_id=OTHER), "folder of"),
    ("bad timestamp", _manifest_doc(last_sync_timestamp="yesterday"), "last_sync_timestamp"),
    ("bundles not a list", _manifest_doc(bundles={}), "not a list"),
    ("unsafe filename", _manifest_doc(b0_filename="../../x.json"), "unsafe or malformed"),
    ("filename mismatch", _manifest_doc(b0_filename=B2.filename), "does not match"),
    ("first not a uuid", _manifest_doc(b0_first_transaction_id="x"), "first_transaction_id"),
    ("first after last", _manifest_doc(
        b0_filename=bundle_name(uid(2, 1), uid(1, 1)), b0_first_transaction_id=uid(2, 1),
        b0_last_transaction_id=uid(1, 1)), "sorts after"),
    ("zero count", _manifest_doc(b0_transaction_count=0), "positive integer"),
    ("bool count", _manifest_doc(b0_transaction_count=True), "positive integer"),
    ("float count", _manifest_doc(b0_transaction_count=2.0), "positive integer"),
    ("bad created_at", _manifest_doc(b0_created_at=12), "created_at"),
    ("entry not an object", _manifest_doc(bundles=["x"]), "entry #0 is not a JSON object"),
    ("unsorted", _manifest_doc(bundles=json.loads(encode_manifest(M))["bundles"][::-1]),
     "not sorted"),
    ("wrong last id", _manifest_doc(last_transaction_id=uid(2, 1)), "not the last bundle's"),
    ("null last id", _manifest_doc(last_transaction_id=None), "not the last bundle's"),
    ("last id without bundles", _manifest_doc(bundles=[]), "not the last bundle's"),
]


@pytest.mark.parametrize(("doc", "message"), [(d, m) for _, d, m in BAD_MANIFESTS],
                         ids=[n for n, _, _ in BAD_MANIFESTS])
def test_bad_manifests_are_rejected(doc: Any, message: str) -> None:
    with pytest.raises(RemoteFormatError, match=message):
        decode_manifest(json.dumps(doc).encode(), AUTHOR)


def test_unparseable_manifest() -> None:
    for data in (b"", b"\xff", b"{"):
        with pytest.raises(RemoteFormatError, match="manifest is not"):
            decode_manifest(data, AUTHOR)
    with pytest.raises(RemoteFormatError, match="author id"):
        decode_manifest(encode_manifest(M), "..")


def test_manifest_with() -> None:
    m1 = manifest_with(None, AUTHOR, B1, now=TS)
    assert m1 == Manifest(AUTHOR, B1.last_transaction_id, TS, (B1,))
    m2 = manifest_with(m1, AUTHOR, B2)
    assert m2.bundles == (B1, B2) and m2.last_transaction_id == uid(3, 1)
    assert is_timestamp(m2.last_sync_timestamp)
    # Same filename: replaced in place.
    b1_again = replace(B1, created_at="2025-01-01T00:00:00.000Z")
    m3 = manifest_with(m2, AUTHOR, b1_again, now=TS)
    assert m3.bundles == (b1_again, B2)
    # Out of order: kept sorted by last id, so the result still validates.
    m4 = manifest_with(manifest_with(None, AUTHOR, B2), AUTHOR, B1, now=TS)
    assert m4.bundles == (B1, B2) and m4.last_transaction_id == uid(3, 1)
    assert decode_manifest(encode_manifest(m4), AUTHOR) == m4
    with pytest.raises(ValueError, match="another bundle"):
        manifest_with(m4, AUTHOR, BundleInfo(bundle_name(uid(2, 1), uid(3, 1)), uid(2, 1),
                                             uid(3, 1), 1, TS))
    with pytest.raises(ValueError, match="manifest of"):
        manifest_with(m4, OTHER, B1)
    with pytest.raises(ValueError, match="inconsistent"):
        manifest_with(None, AUTHOR, replace(B1, filename=B2.filename))
    with pytest.raises(ValueError, match="positive"):
        manifest_with(None, AUTHOR, replace(B1, transaction_count=0))
    with pytest.raises(ValueError, match="created_at"):
        manifest_with(None, AUTHOR, replace(B1, created_at="now"))
    with pytest.raises(ValueError, match="author id"):
        manifest_with(None, "x", B1)
