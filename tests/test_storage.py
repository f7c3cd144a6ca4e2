"""Tests for ``dimpledb_sa.sync.storage``, the remote storage layer: one conformance suite
run on memory, a local folder and S3."""

from __future__ import annotations

import importlib.util
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
from conftest import Remote, s3_options

from dimpledb_sa.core.errors import ConfigurationError, RemoteFormatError
from dimpledb_sa.sync.storage import Storage
from dimpledb_sa.sync.wire import MANIFEST_NAME, bundle_name

A1 = "01933b2d-1234-7890-abcd-ef1234567890"
A2 = "01933b2d-5678-7890-abcd-ef1234567890"
A3 = "01933b2f-0000-7000-8000-000000000000"
T1, T2, T3 = (f"01933b2e-3f47-7b12-9c8d-00000000000{i}" for i in (1, 2, 3))
B12 = bundle_name(T1, T2)
B33 = bundle_name(T3, T3)


def open_storage(remote: Remote, **extra: Any) -> Storage:
    return Storage.from_remote(remote.url, {**remote.storage_options, **extra})


@pytest.fixture
def storage(remote: Remote) -> Storage:
    return open_storage(remote)


# --------------------------------------------------------------------------- conformance


def test_write_read_round_trip(storage: Storage) -> None:
    storage.write_bundle(A1, B12, b"bundle \x00\xff one")
    storage.write_bundle(A1, B33, b"")
    storage.write_manifest(A1, b'{"m": 1}')
    assert storage.read_bundle(A1, B12) == b"bundle \x00\xff one"
    assert storage.read_bundle(A1, B33) == b""
    assert storage.read_manifest(A1) == b'{"m": 1}'
    assert storage.list_files(A1) == sorted([B12, B33, MANIFEST_NAME])  # no temporary files
    assert storage.list_authors() == ([A1], [])


def test_overwrite(storage: Storage) -> None:
    storage.write_manifest(A1, b"first, and longer")
    storage.write_manifest(A1, b"second")
    assert storage.read_manifest(A1) == b"second"
    storage.write_bundle(A1, B12, b"one")
    storage.write_bundle(A1, B12, b"two")
    assert storage.read_bundle(A1, B12) == b"two"
    assert storage.list_files(A1) == sorted([B12, MANIFEST_NAME])


def test_empty_and_missing(storage: Storage) -> None:
    assert storage.list_authors() == ([], [])  # the root does not exist yet
    assert storage.read_manifest(A1) is None
    assert storage.list_files(A1) == []
    with pytest.raises(FileNotFoundError):
        storage.read_bundle(A1, B12)
    storage.write_bundle(A1, B12, b"x")  # an author folder without a manifest
    assert storage.read_manifest(A1) is None
    with pytest.raises(FileNotFoundError):
        storage.read_bundle(A1, B33)
    assert storage.list_authors() == ([A1], [])


def test_list_authors_separates_bad_names(remote: Remote, storage: Storage) -> None:
    for author in (A2, A1, A3):
        storage.write_manifest(author, b"{}")
    fs, root = remote.filesystem()
    fs.pipe_file(f"{root}/not-an-author/{MANIFEST_NAME}", b"{}")
    fs.pipe_file(f"{root}/{A2.upper()}/{MANIFEST_NAME}", b"{}")
    fs.pipe_file(f"{root}/README.txt", b"hello")
    fs.pipe_file(f"{root}/{uuid.UUID(A3).hex}", b"x")
    fs.pipe_file(f"{root}/01933b2d-0000-7000-8000-00000000000a", b"a file, not a folder")
    authors, bad = storage.list_authors()
    assert authors == [A1, A2, A3]
    assert bad == sorted(["not-an-author", A2.upper(), "README.txt", uuid.UUID(A3).hex,
                          "01933b2d-0000-7000-8000-00000000000a"])


def test_read_bundles_mixes_present_and_missing(storage: Storage) -> None:
    storage.write_bundle(A1, B12, b"one-two")
    storage.write_bundle(A1, B33, b"three")
    storage.requests.clear()
    got = storage.read_bundles(A1, [B33, bundle_name(T1, T1), B12])
    assert got[B12] == b"one-two" and got[B33] == b"three"
    assert isinstance(got[bundle_name(T1, T1)], FileNotFoundError)
    assert list(got) == [B33, bundle_name(T1, T1), B12]
    assert storage.requests == Counter({"get": 3})
    assert storage.read_bundles(A1, []) == {}
    only_missing = storage.read_bundles(A2, [B12])
    assert isinstance(only_missing[B12], FileNotFoundError)


HOSTILE_AUTHORS = [
    "", ".", "..", "/", "/etc", "../x", f"../{A1}", f"{A1}/..", f"{A1}/../{A2}", "a/b", "a\\b",
    f"{A1}\x00", A1.upper(), f" {A1}", f"{A1}\n", A1[:-1], f"{A1}/", "~", "%2e%2e",
    f"s3://{A1}", f"file:///{A1}",
]
HOSTILE_BUNDLES = [
    MANIFEST_NAME, "", "..", "x.json", f"../{B12}", f"{B12}/../../x", f"/{B12}", f"{A1}/{B12}",
    B12.upper(), B12.replace(".json", ".JSON"), B12 + "\n", B12 + "\x00", "..\\" + B12,
    B12.replace("_", "/"), f"{T1}_{T2}", f"{T1}_{T2}.json.tmp",
]


class Untouchable:
    """A stand-in filesystem that fails the test on any use."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the backend was touched: fs.{name}")


def test_hostile_names_never_reach_the_backend(storage: Storage) -> None:
    storage.write_manifest(A1, b"{}")
    storage.requests.clear()
    by_author: list[tuple[Callable[..., object], tuple[object, ...]]] = [
        (storage.read_manifest, ()),
        (storage.write_manifest, (b"x",)),
        (storage.list_files, ()),
        (storage.read_bundle, (B12,)),
        (storage.write_bundle, (B12, b"x")),
        (storage.read_bundles, ([B12],)),
    ]
    by_name: list[tuple[Callable[..., object], Callable[[object], tuple[object, ...]]]] = [
        (storage.read_bundle, lambda name: (A1, name)),
        (storage.write_bundle, lambda name: (A1, name, b"x")),
        (storage.read_bundles, lambda name: (A1, [B12, name])),
    ]
    real_fs, storage.fs = storage.fs, Untouchable()
    try:
        for author in [*HOSTILE_AUTHORS, None, 7]:
            for method, rest in by_author:
                with pytest.raises(RemoteFormatError, match="author folder name"):
                    method(author, *rest)
        for name in [*HOSTILE_BUNDLES, None]:
            for method, args in by_name:
                with pytest.raises(RemoteFormatError, match="bundle file name"):
                    method(*args(name))
    finally:
        storage.fs = real_fs
    assert storage.requests == Counter()
    assert storage.list_authors() == ([A1], [])
    assert storage.list_files(A1) == [MANIFEST_NAME]


def test_listing_is_fresh_after_another_instance_wrote(remote: Remote) -> None:
    reader = open_storage(remote)
    writer = open_storage(remote, skip_instance_cache=True)  # its own client and caches
    assert writer.fs is not reader.fs
    writer.write_manifest(A1, b"{}")
    assert reader.list_authors() == ([A1], [])  # fills s3fs's listing cache
    assert reader.list_files(A1) == [MANIFEST_NAME]
    writer.write_manifest(A2, b"{}")
    writer.write_bundle(A1, B12, b"x")
    assert reader.list_authors() == ([A1, A2], [])
    assert reader.list_files(A1) == sorted([B12, MANIFEST_NAME])
    assert reader.read_bundle(A1, B12) == b"x"
    writer.write_manifest(A1, b"changed")
    assert reader.read_manifest(A1) == b"changed"


def test_request_counts(storage: Storage) -> None:
    storage.write_manifest(A1, b"{}")
    storage.write_bundle(A1, B12, b"x")
    assert storage.requests == Counter({"put": 2})
    storage.requests.clear()
    authors, _ = storage.list_authors()
    for author in authors:
        storage.read_manifest(author)
    assert storage.requests == Counter({"ls": 1, "get": 1})
    storage.requests.clear()
    storage.read_bundles(A1, [B12, B33])
    storage.read_bundle(A1, B12)
    assert storage.requests == Counter({"get": 3})


# --------------------------------------------------------------------------- set-up


def test_from_remote_forms(tmp_path: Path) -> None:
    local = tmp_path / "a"
    assert Storage.from_remote(local).root == local.as_posix()
    assert Storage.from_remote(str(local) + "/").root == local.as_posix()
    assert Storage.from_remote(f"file://{local.as_posix()}").root == local.as_posix()
    name = f"dimpledb-test-{uuid.uuid4().hex}"
    mem = Storage.from_remote(f"memory://{name}/x")
    assert mem.root == f"/{name}/x"
    fs = fsspec.filesystem("memory")
    same = Storage.from_remote(fs, path=f"/{name}/x")
    assert same.root == mem.root and same.fs is fs
    same.write_manifest(A1, b"{}")
    assert mem.read_manifest(A1) == b"{}"
    fs.rm(f"/{name}", recursive=True)
    assert "MemoryFileSystem" in repr(mem)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("nosuchprotocol://x",), {}, "Protocol not known"),
        (("gcs://bucket/x",), {}, "install gcsfs"),
        (("",), {}, "empty"),
        (("memory://",), {}, "needs a path"),
        ((42,), {}, "must be a URL"),
        (("memory://x",), {"path": "/x"}, "path= applies only"),
        ((fsspec.filesystem("memory"),), {}, "needs path="),
        ((fsspec.filesystem("memory"), {"a": 1}), {"path": "/x"}, "storage_options="),
    ],
)
def test_from_remote_errors(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    if args[0] == "gcs://bucket/x" and importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed: no missing dependency to report")
    with pytest.raises(ConfigurationError, match=message):
        Storage.from_remote(*args, **kwargs)


def test_local_folders_are_created_on_first_write(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "remote"
    storage = Storage.from_remote(root)
    assert storage.list_authors() == ([], [])
    assert not root.exists()  # reading creates nothing
    storage.write_bundle(A1, B12, b"x")
    assert (root / A1 / B12).read_bytes() == b"x"
    assert sorted(p.name for p in (root / A1).iterdir()) == [B12]


def test_s3_missing_bucket_is_a_clear_error_and_is_not_created(s3_server: str) -> None:
    bucket = f"dimpledb-missing-{uuid.uuid4().hex[:12]}"
    storage = Storage.from_remote(f"s3://{bucket}/remote", s3_options(s3_server))
    with pytest.raises(FileNotFoundError, match=f"bucket '{bucket}' does not exist"):
        storage.list_authors()
    with pytest.raises(FileNotFoundError, match=f"bucket '{bucket}' does not exist"):
        storage.write_manifest(A1, b"{}")
    assert storage.read_manifest(A1) is None
    assert not storage.fs.exists(bucket)


def test_s3_root_at_bucket_top(s3_server: str, s3_bucket: str) -> None:
    storage = Storage.from_remote(f"s3://{s3_bucket}", s3_options(s3_server))
    assert storage.list_authors() == ([], [])
    storage.write_manifest(A1, b"{}")
    assert storage.list_authors() == ([A1], [])
    assert storage.read_manifest(A1) == b"{}"
