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
    ``quarantined``: remote files this sync could not use (a bundle that does not decrypt
    or decode, is too large, is missing, or whose changes cannot be applied here; a manifest
    or notes file that does not decode): each is named in ``errors`` and retried on the next
    sync, while everything else merges.
    ``requests``: storage calls made, by kind (``"ls"``, ``"get"``, ``"put"``).
    """

    pushed: int = 0
    pulled: int = 0
    applied: int = 0
    held: int = 0
    quarantined: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors
