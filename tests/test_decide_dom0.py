"""The Dom0 job's decide steps on plain data: each guest's tree, a pass's guests, the events."""

from __future__ import annotations

from guestagent.dom0.reconcile import (
    DomainTree,
    PassPlan,
    Pending,
    decide_domain,
    note_event,
    pass_targets,
    plan_flush,
)
from guestagent.dom0.schema import perms
from guestagent.xen.xs_wire import Permission

DESIRED = {"version": "1", "devices": "", "devices/0000-03-00-0": "node=1"}


def test_a_gone_domain_gets_no_plan() -> None:
    assert decide_domain(5, DESIRED, DomainTree(home=False)) is None


def test_no_base_creates_it_with_every_key() -> None:
    plan = decide_domain(5, DESIRED, DomainTree(home=True))
    assert plan is not None
    assert plan.create_base and not plan.remove_base
    assert plan.changes.writes == DESIRED


def test_a_tree_as_written_gets_only_the_changed_key() -> None:
    present = {"version": b"1", "devices": b"", "devices/0000-03-00-0": b"node=0",
               "devices/0000-04-00-0": b"node=0"}
    plan = decide_domain(5, DESIRED, DomainTree(True, present, perms(5)))
    assert plan is not None
    assert not plan.create_base and not plan.remove_base
    assert plan.changes.writes == {"devices/0000-03-00-0": "node=1"}
    assert plan.changes.removes == ["devices/0000-04-00-0"]


def test_a_tree_already_true_is_left_alone() -> None:
    present = {k: v.encode() for k, v in DESIRED.items()}
    plan = decide_domain(5, DESIRED, DomainTree(True, present, perms(5)))
    assert plan is not None and plan.empty


def test_other_permissions_are_not_trusted_the_tree_is_written_again() -> None:
    present = {k: v.encode() for k, v in DESIRED.items()}
    writable = [Permission("n", 0), Permission("b", 5)]  # the guest could have written it
    plan = decide_domain(5, DESIRED, DomainTree(True, present, writable))
    assert plan is not None
    assert plan.remove_base and plan.create_base
    assert plan.changes.writes == DESIRED


def test_a_tree_not_ours_is_written_again() -> None:
    plan = decide_domain(5, DESIRED, DomainTree(True, {}, []))
    assert plan is not None and plan.remove_base and plan.create_base


def test_no_device_left_removes_the_tree_and_no_tree_needs_nothing() -> None:
    present = {k: v.encode() for k, v in DESIRED.items()}
    plan = decide_domain(5, {}, DomainTree(True, present, perms(5)))
    assert plan is not None and plan.remove_base and not plan.create_base
    plan = decide_domain(5, {}, DomainTree(home=True))
    assert plan is not None and plan.empty


def test_a_full_pass_visits_live_guests_with_a_backend_and_every_published_tree() -> None:
    live = [1, 2, 3, 7]
    with_backend = [2, 3, 9]  # 9's backend lingers after the domain went: not visited
    published = [7]  # its last device went: its tree is removed
    assert pass_targets(live, with_backend, published) == [2, 3, 7]
    assert pass_targets(live, [], []) == []


def test_events_become_one_pass() -> None:
    pending = Pending()
    assert plan_flush(pending) is None
    pending = note_event(note_event(note_event(pending, 7), 3), 7)
    assert plan_flush(pending) == PassPlan(False, (3, 7))
    pending = note_event(pending, None)  # a domain came or went: everything
    assert plan_flush(pending) == PassPlan(True)
    assert plan_flush(note_event(Pending(), None)) == PassPlan(True)
