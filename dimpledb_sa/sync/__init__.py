"""``sync``: the change log <-> remote files, and pulled changes -> local rows.

Owns, in the order the data flows: the wire format of bundles and manifests
(:mod:`.wire`), age encryption (:mod:`.crypto`), fsspec storage (:mod:`.storage`), the
remote those make (:mod:`.remote`), then the push/pull run (:mod:`.run`), the merge
(:mod:`.merge`, which never sees files), background sync (:mod:`.background`) and the
remote checks the command line shares (:mod:`.verify`).

May import: ``core`` and ``sync``. Never ``capture``, ``live`` or the facade.
"""
