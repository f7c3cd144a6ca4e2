"""Bundle formats 2 and 3 and snapshot format 2: the JSON compressed with gzip (RFC 1952),
inside the age envelope.

``age -d -i KEY FILE | gunzip`` prints such a file's JSON. A reader tells the formats
apart by the first two bytes after decryption: the gzip magic ``1f 8b`` means a gzipped
format (for a bundle, the JSON then tells format 2, an array, from format 3, an object); a
format-1 file is JSON text, which can never start with byte ``0x1f`` (a control character
JSON does not allow, not even as whitespace). Decompression is bounded: at most
:data:`MAX_JSON_BYTES` of JSON come out of one file (a decompression bomb is refused after
producing that much, never held whole), and exactly one gzip member with nothing after it is
accepted.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

from ..core.errors import RemoteFormatError

__all__ = ["COMPRESS_LEVEL", "GZIP_MAGIC", "MAX_JSON_BYTES", "gunzip_bounded", "gunzip_chunks",
           "gzip_bytes", "gzip_chunks", "is_gzip"]

GZIP_MAGIC = b"\x1f\x8b"
"""The first bytes of a gzip stream, hence of a decrypted format-2 file."""

COMPRESS_LEVEL = 6
"""The gzip level files are written with (zlib's default; see ``benchmarks/scale.py``)."""

MAX_JSON_BYTES = 1024 * 1024 * 1024
"""The most JSON one format-2 file may decompress to; a larger one is refused."""

_CHUNK = 4 * 1024 * 1024


def is_gzip(data: bytes) -> bool:
    """Whether decrypted bytes are format 2 (they start with the gzip magic)."""
    return bytes(data[:2]) == GZIP_MAGIC


def gzip_bytes(data: bytes, level: int = COMPRESS_LEVEL) -> bytes:
    """``data`` as one gzip member (no file name, modification time 0: the same input
    gives the same bytes)."""
    z = zlib.compressobj(level, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


def gzip_chunks(chunks: Iterable[bytes], level: int = COMPRESS_LEVEL) -> bytes:
    """:func:`gzip_bytes` of the concatenation of ``chunks``, compressed as they come (so
    that only the compressed bytes are ever held whole)."""
    z = zlib.compressobj(level, zlib.DEFLATED, 31)
    out = [z.compress(chunk) for chunk in chunks]
    out.append(z.flush())
    return b"".join(out)


def gunzip_bounded(data: bytes, what: str, limit: int = MAX_JSON_BYTES) -> bytes:
    """The single gzip member ``data`` decompressed, refusing more than ``limit`` bytes of
    output, a truncated or corrupt stream and anything after the member
    (``RemoteFormatError`` naming ``what``)."""
    return b"".join(gunzip_chunks(data, what, limit))


def gunzip_chunks(data: bytes, what: str, limit: int = MAX_JSON_BYTES) -> Iterator[bytes]:
    """:func:`gunzip_bounded` piece by piece (at most 4 MiB each), so that the whole
    output need never be held; the errors are raised when reached."""
    d = zlib.decompressobj(wbits=31)
    size = 0
    pending = bytes(data)
    try:
        while not d.eof:
            piece = d.decompress(pending, min(_CHUNK, limit + 1 - size))
            size += len(piece)
            if size > limit:
                raise RemoteFormatError(
                    f"{what} decompresses to more than {limit} bytes (the limit)")
            pending = d.unconsumed_tail
            if piece:
                yield piece
            elif not pending:
                break  # the input is used up
    except zlib.error as e:
        raise RemoteFormatError(f"{what} is not a valid gzip stream: {e}") from e
    if not d.eof:
        raise RemoteFormatError(f"{what} is a truncated gzip stream")
    if d.unused_data:
        raise RemoteFormatError(f"{what} has bytes after its gzip stream")
