"""Syncing a published subtree: pure diff, then against the wire-protocol server as a guest."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestagent.errors import InputError
from guestagent.xen.xs_sync import TreeChanges, diff_tree, sync_tree
from tests.xenstore_server import XenstoreServer


def test_diff_writes_changed_and_removes_stale_subtrees_once() -> None:
    present = {
        "version": b"1",
        "vnuma": b"",
        "vnuma/node": b"",
        "vnuma/node/0": b"",
        "vnuma/node/0/cpus": b"0-1",
        "vnuma/node/3": b"",
        "vnuma/node/3/cpus": b"4",
        "old": b"x",
    }
    desired = {"version": "1", "vnuma/node/0/cpus": "0-3"}
    assert diff_tree(desired, present) == TreeChanges(
        writes={"vnuma/node/0/cpus": "0-3"}, removes=["old", "vnuma/node/3"]
    )
    assert diff_tree({"version": "1"}, {"version": b"1"}).empty


keys = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map("/".join)


@given(
    st.dictionaries(keys, st.text("xyz", max_size=3)), st.dictionaries(keys, st.binary(max_size=3))
)
def test_diff_then_apply_reaches_desired(
    desired: dict[str, str], present: dict[str, bytes]
) -> None:
    changes = diff_tree(desired, present)
    tree = dict(present)
    for top in changes.removes:
        for path in [p for p in tree if p == top or p.startswith(top + "/")]:
            del tree[path]
    tree.update({k: v.encode() for k, v in changes.writes.items()})
    # a xenstore node may hold a value and children at once
    assert {k: tree[k].decode() for k in desired} == desired
    # nothing but desired keys and their ancestors survives
    for path in tree:
        assert any(k == path or k.startswith(path + "/") for k in desired)


def test_sync_as_a_guest_replaces_stale_keys(
    xs_server: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    guest = xs_connect(5)
    first = sync_tree(guest, "data/guestagent", {"version": "1", "vnuma/nr-nodes": "3"})
    assert set(first.writes) == {"version", "vnuma/nr-nodes"}
    second = sync_tree(guest, "data/guestagent", {"version": "1", "balloon/target-kb": "1024"})
    assert second == TreeChanges({"balloon/target-kb": "1024"}, ["vnuma"])
    assert xs_server.get_node("/local/domain/5/data/guestagent/vnuma") is None
    node = xs_server.get_node("/local/domain/5/data/guestagent/balloon/target-kb")
    assert node is not None and node.value == b"1024"
    assert sync_tree(guest, "data/guestagent", {"version": "1", "balloon/target-kb": "1024"}).empty


def test_sync_outside_the_guests_tree_is_refused_by_xenstore(
    xs_connect: Callable[[int], Any],
) -> None:
    from guestagent.xen.xenstore import XenstoreError

    guest = xs_connect(5)
    with pytest.raises(XenstoreError) as caught:
        sync_tree(guest, "/local/domain/0/data/guestagent", {"version": "1"})
    assert caught.value.errno == 13


@pytest.mark.parametrize(
    ("desired", "text"),
    [
        ({"a/../b": "1"}, "invalid relative key"),
        ({"a//b": "1"}, "invalid relative key"),
        ({"a": "line\nbreak"}, "not short printable ASCII"),
        ({"a": "x" * 2000}, "not short printable ASCII"),
        ({f"k{i}": "1" for i in range(500)}, "exceed the limit"),
    ],
)
def test_bad_desired_trees_are_refused_before_sending(desired: dict[str, str], text: str) -> None:
    with pytest.raises(InputError, match=text):
        sync_tree(None, "data/guestagent", desired)  # type: ignore[arg-type]


def test_sync_leaves_another_publishers_section_alone(
    xs_server: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    """data/guestagent has two publishers (schema.SECTIONS): the topology's sync must neither
    read nor remove the numa job's section, and may not write into it."""
    client = xs_connect(5)
    sync_tree(client, "data/guestagent", {"version": "1", "numa/nr-vnodes": "2"})
    changes = sync_tree(client, "data/guestagent", {"version": "1", "vnuma/nr-nodes": "2"},
                        leave=("numa",))
    assert changes.removes == []
    node = xs_server.get_node("/local/domain/5/data/guestagent/numa/nr-vnodes")
    assert node is not None and node.value == b"2"
    with pytest.raises(InputError, match="left to another publisher"):
        sync_tree(client, "data/guestagent", {"numa/x": "1"}, leave=("numa",))


def test_update_writes_only_what_changed_and_never_reads(
    xs_server: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    from guestagent.xen.xs_sync import update_tree

    client = xs_connect(5)
    first = {"version": "1", "numa/a": "1", "numa/b": "2"}
    sync_tree(client, "data/guestagent", first)
    before = len(xs_server.requests)
    second = {"version": "1", "numa/a": "1", "numa/b": "3"}
    assert update_tree(client, "data/guestagent", first, second) == TreeChanges({"numa/b": "3"})
    kinds = [r.type for r in xs_server.requests[before:]]
    assert len(kinds) == 3, kinds  # start, one write, end
    node = xs_server.get_node("/local/domain/5/data/guestagent/numa/b")
    assert node is not None and node.value == b"3"
    assert update_tree(client, "data/guestagent", second, second) == TreeChanges()
    assert update_tree(client, "data/guestagent", second, {"version": "1"}) is None
