"""Remote-node cold memory ("tiering"): keep local memory free by moving cold pages elsewhere.

* :mod:`~guestagent.tiering.model`: the plain dataclasses and the :class:`Backend` protocol.
* :mod:`~guestagent.tiering.policy`: the pure target and rate choice.
* :mod:`~guestagent.tiering.readers`: sysfs and procfs into the policy's inputs.
* :mod:`~guestagent.tiering.damon`: DAMOS ``migrate_cold`` with ``target_nid`` (Linux 6.11+).
* :mod:`~guestagent.tiering.tmem`: the Xen tmem hypercall ABI (Xen 4.0 ... 4.12 only).
* :mod:`~guestagent.tiering.commands`: ``guestagent tiering status|run``.
"""

from __future__ import annotations
