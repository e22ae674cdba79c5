"""What to change in one guest's hint tree (pure: no I/O).

The desired tree comes from :func:`guestagent.dom0.schema.desired_tree`; the present one is what
xenstore holds under the base (``None`` when the base does not exist) with the base's
permissions. Values are diffed by :func:`guestagent.xen.xs_sync.diff_tree` (writes for missing or
different keys, removals collapsed to their top-most node). A base with other permissions than
``n0 r<domid>`` is not trusted: it is removed and written again from scratch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from guestagent.dom0.schema import perms
from guestagent.xen.xs_sync import TreeChanges, diff_tree
from guestagent.xen.xs_wire import Permission


@dataclass(frozen=True)
class DomainPlan:
    domid: int
    remove_base: bool = False  # remove the whole tree first (or only, when nothing is desired)
    create_base: bool = False  # write the base node and set its permissions
    changes: TreeChanges = field(default_factory=TreeChanges)

    @property
    def empty(self) -> bool:
        return not self.remove_base and not self.create_base and self.changes.empty


def plan_domain(
    domid: int,
    desired: Mapping[str, str],
    present: Mapping[str, bytes] | None,
    base_perms: Sequence[Permission] | None,
) -> DomainPlan:
    if not desired:
        return DomainPlan(domid, remove_base=present is not None)
    if present is None:
        return DomainPlan(domid, create_base=True, changes=diff_tree(desired, {}))
    if list(base_perms or []) != perms(domid):
        return DomainPlan(domid, remove_base=True, create_base=True, changes=diff_tree(desired, {}))
    return DomainPlan(domid, changes=diff_tree(desired, present))
