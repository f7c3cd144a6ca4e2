"""``python -m dimpledb_sa.cli``: run the ``dimpledb`` command and exit with its code."""

from __future__ import annotations

import sys

from .app import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
