"""The remote: author folders of manifest and bundle files on any fsspec filesystem.

This module owns every call made to the storage backend. ``Storage`` maps the remote
layout (``root/{author}/dimple_db.json`` and ``root/{author}/{first}_{last}.json``) onto an
``fsspec.AbstractFileSystem`` built from a URL or plain path (``memory://``, ``file://``,
``s3://`` with ``storage_options``) or handed in by the caller; it builds no backend registry
of its own. Every author and file name is validated before the backend is touched, so no
path can leave the root (:class:`~dimpledb_sa.core.errors.RemoteFormatError` otherwise); listings
are always fresh (fsspec's directory cache is dropped first); and ``requests`` counts the
calls made, by kind. On folder backends a write goes through a hidden temporary file
named with the time it began (:func:`temporary_name`), and
:meth:`Storage.remove_stale_temporaries` removes those of writes that died. Backend
failures propagate as the built-in exceptions fsspec raises (``FileNotFoundError``,
``PermissionError``, other ``OSError``). Every read is bounded: a file larger than its
limit (``max_bundle_bytes``, ``max_manifest_bytes``, ``max_notes_bytes``) is refused with
:class:`TooLargeError` after reading at most one byte more than the limit (a ranged read:
the rest is never downloaded). Contents are opaque bytes:
encoding and encryption happen elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from ..core._compat import strip_protocol
from ..core.errors import ConfigurationError, RemoteFormatError
from .signing import MAX_SIGNATURE, signature_name
from .wire import (
    MANIFEST_NAME,
    MAX_BUNDLE_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_NOTES_BYTES,
    MAX_STORED_BUNDLE_BYTES,
    NOTES_NAME,
    is_bundle_name,
    is_uuid,
)

__all__ = ["STALE_TEMPORARY_SECONDS", "Storage", "TooLargeError", "temporary_name"]


class TooLargeError(RemoteFormatError):
    """A remote file is larger than the limit for its kind; it was not downloaded whole."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} is larger than the limit of {limit} bytes: not read")
        self.limit = limit


_SIGNED_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,250}")


def _check_author(author: str) -> str:
    if not is_uuid(author):
        raise RemoteFormatError(f"unsafe or malformed author folder name: {author!r:.80}")
    return author


def _check_bundle(name: str) -> str:
    if not is_bundle_name(name):
        raise RemoteFormatError(f"unsafe or malformed bundle file name: {name!r:.120}")
    return name


def _check_signed(name: str) -> str:
    """A file name whose signature may be read or written: the manifest, a bundle or
    another plain lowercase name (a snapshot), never a path and never a signature."""
    if (not isinstance(name, str) or _SIGNED_NAME.fullmatch(name) is None or ".." in name
            or name.endswith(signature_name(""))):
        raise RemoteFormatError(f"unsafe or malformed name of a signed file: {name!r:.120}")
    return name


_TEMPORARY = re.compile(r"\.(.+)\.(\d{13})\.[0-9a-f]{16}\.tmp")
_OLD_TEMPORARY = re.compile(r"\.(.+)\.[0-9a-f]{32}\.tmp")  # before the time was in the name

STALE_TEMPORARY_SECONDS = 3600.0
"""A temporary file older than this (by the time in its name) belongs to a write that
died: a push removes it from its own folder."""


def temporary_name(name: str, now: float | None = None) -> str:
    """The hidden temporary file a write of ``name`` goes through on folder backends:
    ``.{name}.{unix time in ms, 13 digits}.{16 random hex digits}.tmp``."""
    ms = int((time.time() if now is None else now) * 1000)
    return f".{name}.{ms:013d}.{uuid.uuid4().hex[:16]}.tmp"


def _temporary_age(entry: Mapping[str, Any], name: str, now: float) -> float | None:
    """How old a temporary file is, or ``None`` when ``name`` is not one of ours."""
    m = _TEMPORARY.fullmatch(name)
    if m is not None:
        return now - int(m.group(2)) / 1000
    if _OLD_TEMPORARY.fullmatch(name) is None:
        return None
    stamp = entry.get("mtime", entry.get("created"))
    if isinstance(stamp, datetime):
        stamp = stamp.timestamp()
    return now - float(stamp) if isinstance(stamp, int | float) else None


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class Storage:
    """One remote location: a filesystem and the root folder holding the author folders."""

    def __init__(self, fs: AbstractFileSystem, root: str) -> None:
        if not isinstance(fs, AbstractFileSystem):
            raise ConfigurationError(f"not an fsspec filesystem: {fs!r}")
        root = strip_protocol(fs, root) if isinstance(root, str) and root else ""
        root = root.rstrip("/") or ("/" if root.startswith("/") else "")
        if not root:
            raise ConfigurationError("the remote needs a path (a folder, or bucket/prefix)")
        self.fs = fs
        self.root: str = root
        self.requests: Counter[str] = Counter()
        """Calls made to the backend, by kind: ``"ls"``, ``"get"``, ``"put"``."""
        self.transferred: Counter[str] = Counter()
        """Bytes moved: ``"down"`` (files read), ``"up"`` (files written)."""
        self.max_bundle_bytes: int = MAX_BUNDLE_BYTES
        """The largest bundle file read; a larger one is refused, never decrypted."""
        self.max_stored_bundle_bytes: int = MAX_STORED_BUNDLE_BYTES
        """The largest bundle file a push writes (16 MiB): a longer run of transactions is
        pushed as several bundles; a single larger transaction is a bundle on its own."""
        self.bundle_format: int = 3
        """The bundle format a push writes: 3 (packed runs), or 2 (one record per change)
        while devices of earlier releases, which read formats 1 and 2 only, share the
        remote (docs/FORMAT.md, *Bundle*). Readers read all three either way."""
        self.max_manifest_bytes: int = MAX_MANIFEST_BYTES
        """The largest manifest read."""
        self.max_notes_bytes: int = MAX_NOTES_BYTES
        """The largest notes file (``dimple_unreadable.json``) read."""

    @classmethod
    def from_remote(
        cls,
        remote: str | os.PathLike[str] | AbstractFileSystem,
        storage_options: Mapping[str, Any] | None = None,
        *,
        path: str | None = None,
    ) -> Storage:
        """A ``Storage`` for a URL or local path (with fsspec ``storage_options``), or for a
        filesystem object plus ``path=``. ``ConfigurationError`` for what fsspec cannot open.
        """
        if isinstance(remote, AbstractFileSystem):
            if path is None:
                raise ConfigurationError("a filesystem object as remote needs path= (its root)")
            if storage_options:
                raise ConfigurationError(
                    "storage_options= applies to a remote URL, not to a filesystem object"
                )
            return cls(remote, path)
        if path is not None:
            raise ConfigurationError("path= applies only to a filesystem object as remote")
        if not isinstance(remote, str | os.PathLike):
            raise ConfigurationError(
                f"remote= must be a URL, a path or an fsspec filesystem, not {remote!r:.80}"
            )
        url = os.fspath(remote)
        if not url:
            raise ConfigurationError("remote= is empty")
        try:
            fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        except ImportError as e:
            raise ConfigurationError(f"cannot open remote {url!r}: {e}") from e
        except (ValueError, TypeError) as e:
            raise ConfigurationError(f"cannot open remote {url!r}: {e}") from e
        return cls(fs, root)

    def __repr__(self) -> str:
        return f"Storage({type(self.fs).__name__}, {self.root!r})"

    # ----------------------------------------------------------------------- paths

    def _join(self, *parts: str) -> str:
        return "/".join((self.root.rstrip("/"), *parts))

    def _missing_bucket(self) -> str | None:
        """The root's bucket when the backend has buckets and that one does not exist."""
        split = getattr(self.fs, "split_path", None)
        if split is None:
            return None
        bucket = split(self.root)[0]
        self.requests["ls"] += 1
        return None if self.fs.exists(bucket) else str(bucket)

    def _no_bucket_error(self, bucket: str, e: FileNotFoundError) -> FileNotFoundError:
        return FileNotFoundError(
            f"the remote's bucket {bucket!r} does not exist (buckets are not created "
            f"automatically; create it first): {e}"
        )

    # ----------------------------------------------------------------------- listing

    def _ls(self, path: str) -> list[dict[str, Any]]:
        self.fs.invalidate_cache(path)  # always fresh: s3fs caches listings
        self.requests["ls"] += 1
        return list(self.fs.ls(path, detail=True))

    def list_authors(self) -> tuple[list[str], list[str]]:
        """One fresh listing of the root: (author folders, sorted; every other name found).

        A root that does not exist yet has no authors. A missing bucket raises
        ``FileNotFoundError``.
        """
        try:
            entries = self._ls(self.root)
        except FileNotFoundError as e:
            bucket = self._missing_bucket()
            if bucket is not None:
                raise self._no_bucket_error(bucket, e) from e
            return [], []
        authors: set[str] = set()
        bad: set[str] = set()
        for entry in entries:
            full = str(entry["name"]).rstrip("/")
            if full == self.root.rstrip("/"):
                continue  # the folder itself (a directory marker object on S3)
            name = _basename(full)
            if entry.get("type") == "directory" and is_uuid(name):
                authors.add(name)
            else:
                bad.add(name)
        return sorted(authors), sorted(bad)

    def list_files(self, author: str) -> list[str]:
        """The names of the files in ``author``'s folder, sorted (for verify/inspect tools)."""
        try:
            entries = self._ls(self._join(_check_author(author)))
        except FileNotFoundError:
            return []
        folder = self._join(author).rstrip("/")
        return sorted(
            _basename(str(e["name"]))
            for e in entries
            if e.get("type") != "directory" and str(e["name"]).rstrip("/") != folder
        )

    # ----------------------------------------------------------------------- reading

    def _get(self, path: str, limit: int, what: str) -> bytes:
        """The file at ``path``, read with one ranged GET of at most ``limit + 1`` bytes."""
        self.requests["get"] += 1
        try:
            data = bytes(self.fs.cat_file(path, start=0, end=limit + 1))
        except FileNotFoundError:
            raise
        except OSError as e:
            data = self._empty_or_raise(path, e)
        self.transferred["down"] += len(data)
        if len(data) > limit:
            raise TooLargeError(what, limit)
        return data

    def _empty_or_raise(self, path: str, e: OSError) -> bytes:
        """An S3 ranged GET of an empty object fails with "range not satisfiable": that file
        reads as empty; any other failure is raised."""
        if e.errno != errno.EINVAL or "range" not in str(e).lower():
            raise e
        self.requests["get"] += 1
        if self.fs.size(path) != 0:
            raise e
        return b""

    def read_manifest(self, author: str) -> bytes | None:
        """``author``'s manifest, or ``None`` when it has none; :class:`TooLargeError` when it
        is larger than ``max_manifest_bytes``."""
        path = self._join(_check_author(author), MANIFEST_NAME)
        try:
            return self._get(path, self.max_manifest_bytes, f"{author}/{MANIFEST_NAME}")
        except FileNotFoundError:
            return None

    def read_notes(self, author: str) -> bytes | None:
        """``author``'s notes file (``dimple_unreadable.json``), or ``None`` when it has
        none; :class:`TooLargeError` when it is larger than ``max_notes_bytes``."""
        path = self._join(_check_author(author), NOTES_NAME)
        try:
            return self._get(path, self.max_notes_bytes, f"{author}/{NOTES_NAME}")
        except FileNotFoundError:
            return None

    def read_bundle(self, author: str, name: str) -> bytes:
        """One bundle file; ``FileNotFoundError`` when it is missing, :class:`TooLargeError`
        when it is larger than ``max_bundle_bytes``."""
        path = self._join(_check_author(author), _check_bundle(name))
        return self._get(path, self.max_bundle_bytes, f"bundle {name}")

    def read_bundles(self, author: str, names: Sequence[str]) -> dict[str, bytes | Exception]:
        """Several bundles of one author in one backend call (concurrent on S3), each read
        with a ranged GET of at most ``max_bundle_bytes + 1`` bytes.

        Returns name -> contents, or the exception that reading that file raised
        (``FileNotFoundError`` for a missing one, :class:`TooLargeError` for one larger than
        ``max_bundle_bytes``).
        """
        folder = _check_author(author)
        unique = list(dict.fromkeys(_check_bundle(n) for n in names))
        if not unique:
            return {}
        paths = [self._join(folder, n) for n in unique]
        limit = self.max_bundle_bytes
        self.requests["get"] += len(paths)
        got = self.fs.cat_ranges(paths, 0, limit + 1, on_error="return")
        out: dict[str, bytes | Exception] = {}
        for name, path, value in zip(unique, paths, got, strict=True):
            if isinstance(value, OSError) and not isinstance(value, FileNotFoundError):
                try:
                    value = self._empty_or_raise(path, value)
                except OSError as e:
                    value = e
            if isinstance(value, Exception):
                out[name] = value
            elif value is None:
                out[name] = FileNotFoundError(path)
            elif len(value) > limit:
                out[name] = TooLargeError(f"bundle {name}", limit)
            else:
                out[name] = bytes(value)
                self.transferred["down"] += len(value)
        return out

    def read_signature(self, author: str, name: str) -> bytes | None:
        """The signature file ``{name}.sig`` of ``author``'s file ``name`` (at most
        ``MAX_SIGNATURE + 1`` bytes of it, so a hostile one cannot fill memory), or
        ``None`` when it has none."""
        path = self._join(_check_author(author), signature_name(_check_signed(name)))
        self.requests["get"] += 1
        try:
            return bytes(self.fs.cat_file(path, start=0, end=MAX_SIGNATURE + 1))
        except FileNotFoundError:
            return None

    def read_signatures(self, author: str, names: Sequence[str]
                        ) -> dict[str, bytes | Exception | None]:
        """The signatures of several of ``author``'s files in one backend call (bounded
        like :meth:`read_signature`): name -> contents, ``None`` when it has none, or the
        exception reading it raised."""
        folder = _check_author(author)
        unique = list(dict.fromkeys(_check_signed(n) for n in names))
        if not unique:
            return {}
        paths = [self._join(folder, signature_name(n)) for n in unique]
        self.requests["get"] += len(paths)
        got = self.fs.cat_ranges(paths, [0] * len(paths), [MAX_SIGNATURE + 1] * len(paths),
                                 on_error="return")
        out: dict[str, bytes | Exception | None] = {}
        for name, value in zip(unique, got, strict=True):
            if isinstance(value, FileNotFoundError):
                out[name] = None
            elif isinstance(value, Exception):
                out[name] = value
            else:
                out[name] = bytes(value)
                self.transferred["down"] += len(value)
        return out

    # ----------------------------------------------------------------------- writing

    def _put(self, folder: str, name: str, data: bytes) -> None:
        path = self._join(folder, name)
        self.requests["put"] += 1
        self.transferred["up"] += len(data)
        if not self.uses_temporaries:
            # An object store: a PUT replaces the object atomically; buckets are not created.
            try:
                self.fs.pipe_file(path, bytes(data))
            except FileNotFoundError as e:
                bucket = self._missing_bucket()
                if bucket is not None:
                    raise self._no_bucket_error(bucket, e) from e
                raise
            return
        # A folder (local, memory, ...): write a hidden temporary file next to the target,
        # creating the folders on first use, then rename it, so that readers never see a
        # partly written manifest or bundle.
        parent = self._join(folder)
        tmp = self._join(folder, temporary_name(name))
        try:
            self.fs.pipe_file(tmp, bytes(data))
        except FileNotFoundError:
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(tmp, bytes(data))
        try:
            self.fs.mv(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.rm_file(tmp)
            raise

    @property
    def uses_temporaries(self) -> bool:
        """True on folder-like backends (local, memory), where writes go through a
        temporary file; object stores (with buckets) replace objects atomically."""
        return getattr(self.fs, "split_path", None) is None

    def remove_stale_temporaries(self, author: str,
                                 older_than: float = STALE_TEMPORARY_SECONDS) -> list[str]:
        """Remove the temporary files of writes that died (older than ``older_than``
        seconds) from ``author``'s folder; returns their names. One listing; nothing on
        object stores (they have none)."""
        if not self.uses_temporaries:
            return []
        try:
            entries = self._ls(self._join(_check_author(author)))
        except FileNotFoundError:
            return []
        now = time.time()
        removed = []
        for entry in entries:
            name = _basename(str(entry["name"]))
            age = _temporary_age(entry, name, now)
            if entry.get("type") == "directory" or age is None or age < older_than:
                continue
            with contextlib.suppress(FileNotFoundError):  # another push removed it first
                self.fs.rm_file(self._join(author, name))
                removed.append(name)
        return removed

    def write_bundle(self, author: str, name: str, data: bytes) -> None:
        """Write (or overwrite) a bundle file in ``author``'s folder."""
        self._put(_check_author(author), _check_bundle(name), data)

    def write_manifest(self, author: str, data: bytes) -> None:
        """Write (or overwrite) ``author``'s manifest."""
        self._put(_check_author(author), MANIFEST_NAME, data)

    def write_notes(self, author: str, data: bytes) -> None:
        """Write (or overwrite) ``author``'s notes file."""
        self._put(_check_author(author), NOTES_NAME, data)

    def write_signature(self, author: str, name: str, data: bytes) -> None:
        """Write (or overwrite) the signature ``{name}.sig`` of ``author``'s file ``name``."""
        self._put(_check_author(author), signature_name(_check_signed(name)), data)

    # --------------------------------------------- snapshots and compaction (sync.compact)

    def read_snapshot(self, author: str, name: str) -> bytes:
        """One snapshot file (``snapshot_{id}.json``), at most ``max_bundle_bytes``."""
        path = self._join(_check_author(author), _check_signed(name))
        return self._get(path, self.max_bundle_bytes, f"snapshot {name}")

    def write_snapshot(self, author: str, name: str, data: bytes) -> None:
        """Write (or overwrite) a snapshot file in ``author``'s folder."""
        self._put(_check_author(author), _check_signed(name), data)

    def remove_file(self, author: str, name: str) -> None:
        """Remove a bundle or snapshot of ``author`` and its signature; a missing one is
        fine."""
        folder = _check_author(author)
        for n in (_check_signed(name), signature_name(name)):
            self.requests["delete"] += 1
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._join(folder, n))
