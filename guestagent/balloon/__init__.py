"""Self-ballooning: size the guest to its working set, driven by memory pressure.

Layers (see ``/work/shared/design.md``): :mod:`.signals` reads and validates the host's memory
signals into a :class:`~.signals.MemorySignals` snapshot; :mod:`.policy` holds pure policies
(``none``, ``classic``, ``pressure``) that turn a snapshot and the last state into a
:class:`~.policy.Decision`; :mod:`.actuator` writes the balloon target, logs it and can undo it;
:mod:`.trace` records snapshots to JSON lines and replays them through a policy.
"""

from __future__ import annotations
