"""``core``: the replica's state, shared by every layer above it.

Owns: the tracked tables and their value codecs (:mod:`.tracking`, :mod:`.values`), the
hybrid clock and ids (:mod:`.clock`) and the clock floor a local commit starts from
(:mod:`.floor`), the bookkeeping tables (:mod:`.schema`), the one owner
of ``dimple_meta`` (:mod:`.meta`) and of the keyring tables (:mod:`.keyring`), the change
log (:mod:`.changelog`), change records (:mod:`.changes`), the constraints the metadata
declares (:mod:`.constraints`), the stored conflicts (:mod:`.conflicts`), the signals
(:mod:`.signals`), row helpers (:mod:`.rows`), the :class:`~.replica.Replica` the layers
above receive, the error tree (:mod:`.errors`) and the sync report (:mod:`.report`); every
use of SQLAlchemy's or fsspec's private API is in :mod:`._compat`.

May import: only ``core`` (and third-party libraries). Nothing here imports ``capture``,
``sync``, ``live`` or the facade, not even for typing (``tests/test_layers.py`` checks).
"""
