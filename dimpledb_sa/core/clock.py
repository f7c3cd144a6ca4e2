"""Ids: the hybrid logical clock that issues UUIDv7 change and transaction ids, and `new_id`.

An id is a UUIDv7 whose 48-bit millisecond field is the clock's physical part and whose
next 38 bits (the 12 ``rand_a`` bits and the top 26 ``rand_b`` bits) hold the logical
counter; the last 36 bits are random, drawn once per batch. Ids therefore sort, as integers
and as lowercase strings alike, by (milliseconds, counter, random). The clock never issues
an id below one it issued or observed: when the wall clock steps back, or a pulled id lies
in the future, it keeps the larger millisecond value and counts up. Its state is the last id
it issued, which the caller persists in the same transaction as the ids it used.

The ``uuid6`` package reads and checks ids here (:func:`id_datetime`, :func:`is_uuid7`).
It does not issue them: its ``uuid7()`` keeps order within a process by moving the
millisecond field one step ahead per id issued in the same millisecond (so 10,000 ids
made in one burst end 10 s in the future, and those times would win last-write-wins
merges they should not), it has no counter field to pack one transaction's changes as
consecutive ids (what :mod:`.changelog` relies on), it cannot observe pulled ids (the
hybrid part: every id made after a pull sorts after it), and it is not thread-safe. So
change and transaction ids come from :class:`HybridClock`, and :func:`new_id` (entity ids)
uses the same layout with a per-process sequence that never leaves the wall clock's
millisecond by more than one step per 4,096 ids.

Ids from elsewhere are checked before they are believed (:func:`id_problem`,
:func:`is_sane_id`): a canonical UUIDv7 (version 7, RFC 4122 variant) whose time is not
before 2020-01-01 and not more than :data:`MAX_ID_AHEAD` ahead of the wall clock (so the
maximum id ``ffffffff-ffff-7fff-bfff-ffffffffffff`` is refused). The clock never believes
an absurd id either: :meth:`HybridClock.observe` ignores one, and with ``max_ahead`` it moves
at most that far past the wall clock (a pull's bound, ``max_drift``, default
:data:`DEFAULT_MAX_DRIFT`); :meth:`HybridClock.horizon` is the largest id that is not
ahead by more than a bound. So the ids it issues stay canonical 36-character UUIDv7s.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import uuid6

__all__ = [
    "DEFAULT_MAX_DRIFT",
    "ID_EPOCH",
    "ID_FLOOR",
    "MAX_ID_AHEAD",
    "HybridClock",
    "id_datetime",
    "id_millis",
    "id_problem",
    "is_next_id",
    "is_sane_id",
    "is_uuid7",
    "new_id",
    "offset_id",
    "parse_id",
    "run_ids",
]

ID_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
"""No id from elsewhere is older than this (dimpledb did not exist before)."""
MAX_ID_AHEAD = timedelta(days=366)
"""No id from elsewhere is believed when it is further ahead of the wall clock than this."""
DEFAULT_MAX_DRIFT = timedelta(minutes=5)
"""``DimpleDb(max_drift=...)``'s default: how far ahead of local time a pulled change may
be and still be applied at once (further ahead, it is held until local time catches up)."""

_ID_EPOCH_MS = int(ID_EPOCH.timestamp() * 1000)
_MS_MAX = (1 << 48) - 1
_CANONICAL_V7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

_COUNTER_BITS = 38
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_LO_BITS = 26
_LO_MASK = (1 << _LO_BITS) - 1
_RAND_BITS = 36
_VERSION_VARIANT = (0x7 << 76) | (0x2 << 62)


def _format(value: int) -> str:
    h = "%032x" % value  # noqa: UP031 - the fastest spelling, this runs per change
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _compose(ms: int, counter: int, rand: int) -> int:
    return (
        (ms << 80)
        | _VERSION_VARIANT
        | ((counter >> _LO_BITS) << 64)
        | ((counter & _LO_MASK) << _RAND_BITS)
        | rand
    )


ID_FLOOR = _format(_compose(_ID_EPOCH_MS, 0, 0))
"""The smallest sane id (2020-01-01, counter and random bits 0): a sane id sorts at or
after it."""


def parse_id(value: str) -> tuple[int, int]:
    """Return the (milliseconds, counter) of a UUIDv7 id string (any UUIDv7 parses)."""
    n = int(value.replace("-", ""), 16)
    ms = n >> 80
    counter = (((n >> 64) & 0xFFF) << _LO_BITS) | ((n >> _RAND_BITS) & _LO_MASK)
    return ms, counter


def id_datetime(value: str) -> datetime:
    """The aware UTC datetime of a UUIDv7 id's millisecond field."""
    ms: int = uuid6.UUID(value).time
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _millis(delta: timedelta) -> int:
    return delta // timedelta(milliseconds=1)


def id_millis(value: str) -> int:
    """The 48-bit millisecond field of a (canonical) id."""
    return int(value[:8] + value[9:13], 16)


def id_problem(value: object, now_ms: int | None = None,
               max_ahead: timedelta = MAX_ID_AHEAD) -> str | None:
    """Why ``value`` is not an id to believe, or ``None`` when it is one: a canonical UUIDv7
    (version 7, RFC 4122 variant), its time not before 2020-01-01 and at most
    ``max_ahead`` ahead of ``now_ms`` (milliseconds since the epoch; default: the wall
    clock). Cheap (one regular expression and one integer), for every id of a bundle; a
    caller checking many ids against one bound can also compare them, as strings, with
    :data:`ID_FLOOR` and :meth:`HybridClock.horizon`."""
    if type(value) is not str or _CANONICAL_V7.fullmatch(value) is None:
        return "not a canonical UUIDv7"
    ms = id_millis(value)
    if ms < _ID_EPOCH_MS:
        return f"its time ({_when(ms)}) is before {ID_EPOCH:%Y-%m-%d}"
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if ms > now + _millis(max_ahead):
        return (f"its time ({_when(ms)}) is more than {max_ahead} ahead of this "
                f"device's clock ({_when(now)})")
    return None


def _when(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms"


def is_sane_id(value: object, now_ms: int | None = None,
               max_ahead: timedelta = MAX_ID_AHEAD) -> bool:
    """Whether ``value`` is an id to believe (see :func:`id_problem`)."""
    return id_problem(value, now_ms, max_ahead) is None


def is_uuid7(value: object) -> bool:
    """Whether ``value`` is a UUIDv7 in canonical (lowercase, hyphenated) form."""
    if type(value) is not str or len(value) != 36:
        return False
    try:
        parsed = uuid6.UUID(value)
    except ValueError:
        return False
    return parsed.version == 7 and str(parsed) == value


_id_lock = threading.Lock()
_id_state = [0, 0]  # last (ms, seq) used by new_id in this process, for monotonic order


def new_id() -> str:
    """A new UUIDv7 string: time-ordered within this process, 62 random bits."""
    ms = time.time_ns() // 1_000_000
    with _id_lock:
        last_ms, seq = _id_state
        if ms > last_ms:
            seq = int.from_bytes(os.urandom(2)) & 0x3FF  # random start, room to count up
        else:
            ms, seq = last_ms, seq + 1
            if seq > 0xFFF:
                ms, seq = ms + 1, 0
        _id_state[0], _id_state[1] = ms, seq
    rand = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    return _format((ms << 80) | (0x7 << 76) | (seq << 64) | (0x2 << 62) | rand)


class HybridClock:
    """A hybrid logical clock issuing UUIDv7 ids; thread-safe.

    ``last`` is the last id issued or observed; persist it and pass it back on restart.
    """

    def __init__(self, last: str | None = None, *, now_ns: Callable[[], int] = time.time_ns):
        self._now_ns = now_ns
        self._lock = threading.Lock()
        self._ms, self._counter = 0, -1
        if last:
            self.observe(last)

    @property
    def last(self) -> str | None:
        if self._counter < 0:
            return None
        return _format(_compose(self._ms, self._counter, (1 << _RAND_BITS) - 1))

    def observe(self, value: str, max_ahead: timedelta | None = None) -> bool:
        """Move the clock past ``value`` (an id pulled from elsewhere or read from storage);
        returns whether it moved.

        An id further ahead of the wall clock than :data:`MAX_ID_AHEAD` is ignored. With
        ``max_ahead`` the clock moves at most to that far past the wall clock, whatever
        ``value`` says (a pull passes ``max_drift``).
        """
        ms, counter = parse_id(value)
        now = self._now_ns() // 1_000_000
        if ms > now + _millis(MAX_ID_AHEAD) or ms > _MS_MAX:
            return False
        if max_ahead is not None and ms > now + _millis(max_ahead):
            ms, counter = now + _millis(max(max_ahead, timedelta(0))), 0
        with self._lock:
            if (ms, counter) > (self._ms, self._counter):
                self._ms, self._counter = ms, counter
                return True
        return False

    def horizon(self, max_ahead: timedelta) -> str:
        """The largest id whose time is at most ``max_ahead`` past the wall clock: a pulled
        id that sorts after it is further ahead than that."""
        ms = min(self._now_ns() // 1_000_000 + _millis(max_ahead), _MS_MAX)
        return _format(_compose(ms, _COUNTER_MAX, (1 << _RAND_BITS) - 1))

    def reserve(self, n: int) -> list[str]:
        """Issue ``n`` consecutive ids, each greater than every id issued or observed."""
        return self.reserve_runs([1] * n) if n > 0 else []

    def next(self) -> str:
        return self.reserve(1)[0]

    def reserve_runs(self, counts: list[int]) -> list[str]:
        """Issue one run of consecutive ids per count; return each run's first id.

        The ``k``-th id of a run is ``offset_id(first, k)``: runs cost one formatted id each.
        """
        total = sum(counts)
        if total <= 0:
            return []
        pt = self._now_ns() // 1_000_000
        with self._lock:
            if pt > self._ms:
                ms, start = pt, 0
            else:
                ms, start = self._ms, self._counter + 1
            if start + total - 1 > _COUNTER_MAX:
                ms, start = ms + 1, 0
            if ms > _MS_MAX:  # not before the year 10889: observe() ignores absurd ids
                raise OverflowError("the clock reached the end of UUIDv7 time")
            self._ms, self._counter = ms, start + total - 1
        return _run_ids(ms, start, counts)


def _run_ids(ms: int, start: int, counts: list[int]) -> list[str]:
    """The first id of each run, counting from ``start`` within millisecond ``ms``, with
    fresh random bits: the id text is assembled from fixed parts and three hex fields."""
    rand = int.from_bytes(os.urandom(5)) & ((1 << _RAND_BITS) - 1)
    msh = "%012x" % ms  # noqa: UP031 - the fastest spelling, this runs per change
    prefix = f"{msh[:8]}-{msh[8:]}-7"
    tail = "%09x" % rand  # noqa: UP031
    # counter: high 12 bits after the version digit; low 26 bits after the variant bits
    # (0b10), which makes 7 hex digits: 4 in the fourth group, 3 opening the fifth
    fmt = prefix + "%03x-%04x-%03x" + tail
    out: list[str] = []
    append = out.append
    c = start
    for n in counts:
        lo = 0x8000000 | (c & _LO_MASK)
        append(fmt % (c >> _LO_BITS, lo >> 12, lo & 0xFFF))
        c += n
    return out


def offset_id(first: str, k: int) -> str:
    """The id ``k`` counter steps after ``first`` (same milliseconds and random bits)."""
    if k == 0:
        return first
    n = int(first.replace("-", ""), 16)
    ms = n >> 80
    counter = (((n >> 64) & 0xFFF) << _LO_BITS) | ((n >> _RAND_BITS) & _LO_MASK)
    counter += k
    if counter > _COUNTER_MAX:
        raise ValueError(f"id run starting at {first} overflows its counter")
    return _format(_compose(ms, counter, n & ((1 << _RAND_BITS) - 1)))


_HEX3 = ["%03x" % i for i in range(0x1000)]  # noqa: UP031


def run_ids(first: str, count: int) -> list[str]:
    """``[offset_id(first, k) for k in range(count)]``, the ids of a packed run: for a
    canonical UUIDv7 ``first``, the counter's three hex fields are read and written in the
    text (the other digits stay as they are)."""
    if count <= 1:
        return [first] if count == 1 else []
    if not (len(first) == 36 and first[14] == "7" and first[19] in "89ab"
            and first.islower()):
        return [offset_id(first, k) for k in range(count)]
    # the counter: 12 bits after the version digit, 14 after the variant bits (0b10),
    # 12 opening the last group (before its 36 random bits)
    counter = ((int(first[15:18], 16) << _LO_BITS) | ((int(first[19:23], 16) & 0x3FFF) << 12)
               | int(first[24:27], 16))
    if counter + count - 1 > _COUNTER_MAX:
        raise ValueError(f"id run starting at {first} overflows its counter")
    tail = first[27:]
    low = counter & 0xFFF
    if low + count <= 0x1000:  # only the last field moves (the common case)
        head = first[:24]
        return [first] + [head + h + tail for h in _HEX3[low + 1 : low + count]]
    fmt = first[:15] + "%03x-%04x-"
    out = [first]
    c, end = counter + 1, counter + count
    while c < end:  # in blocks of ids whose other counter fields are the same
        stop = min(end, (c | 0xFFF) + 1)
        lo = 0x8000000 | (c & _LO_MASK)
        head = fmt % (c >> _LO_BITS, lo >> 12)
        out += [head + h + tail for h in _HEX3[c & 0xFFF : ((stop - 1) & 0xFFF) + 1]]
        c = stop
    return out


def is_next_id(prev: str, nxt: str) -> bool:
    """Whether ``nxt`` is the id one counter step after ``prev`` (runs pack together)."""
    a = int(prev.replace("-", ""), 16)
    b = int(nxt.replace("-", ""), 16)
    if (a >> 80) != (b >> 80) or (a & ((1 << _RAND_BITS) - 1)) != (b & ((1 << _RAND_BITS) - 1)):
        return False
    ca = (((a >> 64) & 0xFFF) << _LO_BITS) | ((a >> _RAND_BITS) & _LO_MASK)
    cb = (((b >> 64) & 0xFFF) << _LO_BITS) | ((b >> _RAND_BITS) & _LO_MASK)
    return cb == ca + 1 and (a >> 76) & 0xF == 7 and (b >> 76) & 0xF == 7
