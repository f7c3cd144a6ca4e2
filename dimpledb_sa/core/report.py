"""The result of one sync: :class:`SyncReport`."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SyncReport"]


@dataclass
class SyncReport:
    """What one sync did.

    ``pushed``: local transactions uploaded. ``pulled``: remote transactions downloaded and
    stored in the log. ``applied``: changes that changed local rows. ``held``: changes kept
    back: the (entity, attribute) pairs held after this sync because this schema lacks their
table or column, or a row they need (cumulative: still-held pairs count again). ``errors``:
    remote author id (or ``"push"``) -> message, for every author whose data could not be read.
    ``requests``: storage calls made, by kind (``"ls"``, ``"get"``, ``"put"``).
    ``push_skipped``: this sync did not push because another push of the same database
    (another process or ``DimpleDb``) held the push lease; that push or the next one takes
    this database's transactions (not an error).
    """

    pushed: int = 0
    pulled: int = 0
    applied: int = 0
    held: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    push_skipped: bool = False
    error_kinds: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors
