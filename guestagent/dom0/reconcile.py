"""The Dom0 job's decisions (pure: no I/O): what to change in one guest's hint tree, which
guests a full pass visits, and which pass a burst of watch events becomes.

The desired tree comes from :func:`guestagent.dom0.schema.desired_tree`; the present one is what
xenstore holds under the base (``None`` when the base does not exist) with the base's
permissions. Values are diffed by :func:`guestagent.xen.xs_sync.diff_tree` (writes for missing or
different keys, removals collapsed to their top-most node). A base with other permissions than
``n0 r<domid>`` is not trusted: it is removed and written again from scratch, and so is a tree
that does not read as one this agent writes (:class:`DomainTree` ``present={}`` with no
permissions). A domain whose home node is gone gets no plan: writing would re-create it.

The job's read -> decide -> apply: the publisher reads the backend, the guest's configuration,
the host topology (hints: :func:`guestagent.dom0.hints.compute_hints`, pure) and, in the
transaction, the :class:`DomainTree`; :func:`decide_domain` plans; the same transaction writes
the plan. :func:`pass_targets` picks a full pass's guests, :func:`note_event` and
:func:`plan_flush` turn watch events into one pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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


@dataclass(frozen=True)
class DomainTree:
    """One guest's hint tree as read inside the transaction that will change it."""

    #: ``/local/domain/<domid>`` exists (the domain is still there).
    home: bool
    #: The nodes under the base (relative path -> value); None: no base node; ``{}`` with
    #: ``base_perms=[]`` also for a tree that is not one this agent writes.
    present: Mapping[str, bytes] | None = None
    base_perms: Sequence[Permission] | None = None


def decide_domain(domid: int, desired: Mapping[str, str], tree: DomainTree) -> DomainPlan | None:
    """The plan for one guest's tree (module docstring); None when the domain is gone."""
    if not tree.home:
        return None
    return plan_domain(domid, desired, tree.present, tree.base_perms)


def pass_targets(live: Iterable[int], with_backend: Iterable[int],
                 published: Iterable[int]) -> list[int]:
    """The guests a full pass visits, sorted: every live one with a PCI backend (its hints are
    made true), and every one with a published tree (a guest whose last device went loses its
    tree). A backend of a domain that is gone is left for its release."""
    return sorted((set(with_backend) & set(live)) | set(published))


@dataclass(frozen=True)
class Pending:
    """Watch events not handled yet: a full pass asked for, and the domains whose backend
    changed."""

    full: bool = False
    domids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class PassPlan:
    """One pass: every guest (``full``), or only ``domids``."""

    full: bool
    domids: tuple[int, ...] = ()


def note_event(pending: Pending, domid: int | None) -> Pending:
    """One more event: about a domain's backend (``domid``), or anything else (None: a domain
    came or went, the backend root itself changed), which needs a full pass."""
    if domid is None:
        return Pending(True, pending.domids)
    return Pending(pending.full, pending.domids | {domid})


def plan_flush(pending: Pending) -> PassPlan | None:
    """The one pass a burst of events becomes: a full pass covers every domain, so the domains
    named as well are not visited twice; None when nothing is pending."""
    if pending.full:
        return PassPlan(True)
    if pending.domids:
        return PassPlan(False, tuple(sorted(pending.domids)))
    return None
