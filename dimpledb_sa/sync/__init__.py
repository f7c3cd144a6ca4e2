"""``sync``: the change log <-> remote files, and pulled changes -> local rows.

Owns, in the order the data flows: the wire format of bundles and manifests
(:mod:`.wire`), age encryption (:mod:`.crypto`), device keys and SSH signatures
(:mod:`.keys`, :mod:`.signing`) and what a replica trusts (:mod:`.trust`), fsspec storage
(:mod:`.storage`), the remote those make (:mod:`.remote`), then one sync (:mod:`.run`):
the push (:mod:`.push`), the pull (:mod:`.pull`) and the merge (:mod:`.merge`, which never
sees files), with failures recorded per author (:mod:`.report_errors`); background sync
(:mod:`.background`) and the remote checks the command line shares (:mod:`.verify`).

May import: ``core`` and ``sync``. Never ``capture``, ``live`` or the facade.
"""
