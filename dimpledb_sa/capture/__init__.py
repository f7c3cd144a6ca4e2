"""``capture``: ORM and Core writes -> change groups -> the change log, in the same transaction.

Owns: the process-wide session and engine listeners (:mod:`.listeners`), the unit-of-work
capture of flushes (:mod:`.unit_of_work`), ORM-enabled DML statements (:mod:`.statements`),
the database's own ``ON DELETE`` actions on tracked children (:mod:`.cascades`), opt-in Core
DML (:mod:`.core_dml`) and adoption of rows that predate tracking (:mod:`.adopt`).

May import: ``core`` and ``capture``. Never ``sync``, ``live`` or the facade.
"""
