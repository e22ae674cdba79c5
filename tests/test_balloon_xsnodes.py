"""guestagent.balloon.xsnodes: the toolstack's nodes kept between their watch events, so a
decision a second does not cost two xenstore round trips a second."""

from __future__ import annotations

import errno

import pytest

from guestagent.balloon.signals import read_xenstore_kb
from guestagent.balloon.xsnodes import MAX_AGE_S, WatchedNodes


class Store:
    """A xenstore stand-in that counts reads; a missing node raises ENOENT as the client does."""

    def __init__(self) -> None:
        self.nodes = {"memory/target": b"524288", "memory/static-max": b"1048576"}
        self.reads: list[str] = []
        self.fail: OSError | None = None

    def read(self, path: str) -> bytes:
        self.reads.append(path)
        if self.fail is not None:
            raise self.fail
        if path not in self.nodes:
            raise OSError(errno.ENOENT, "no such node")
        return self.nodes[path]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watched(*paths: str) -> tuple[Store, Clock, WatchedNodes]:
    store, clock = Store(), Clock()
    nodes = WatchedNodes(store, clock)
    for path in paths:
        nodes.watching(path)
    return store, clock, nodes


def test_a_watched_node_is_read_once_until_its_watch_fires() -> None:
    store, clock, nodes = watched("memory/target")
    for _ in range(10):
        assert nodes.read("memory/target") == b"524288"
        clock.now += 1.0
    assert store.reads == ["memory/target"] and nodes.reads == 1
    store.nodes["memory/target"] = b"786432"
    assert nodes.read("memory/target") == b"524288"  # no event yet: the value read last
    nodes.changed()
    assert nodes.read("memory/target") == b"786432"
    assert nodes.reads == 2


def test_a_node_not_watched_is_read_every_time() -> None:
    store, _, nodes = watched("memory/target")
    for _ in range(3):
        nodes.read("memory/static-max")
    assert store.reads == ["memory/static-max"] * 3 and nodes.reads == 3


def test_a_kept_value_is_read_again_after_max_age_or_when_the_clock_steps_back() -> None:
    store, clock, nodes = watched("memory/target")
    nodes.read("memory/target")
    clock.now += MAX_AGE_S - 0.5
    nodes.read("memory/target")
    assert len(store.reads) == 1
    clock.now += 0.5
    nodes.read("memory/target")
    assert len(store.reads) == 2  # a lost event costs at most MAX_AGE_S
    clock.now -= 10.0
    nodes.read("memory/target")
    assert len(store.reads) == 3


def test_a_missing_node_or_a_failed_read_is_not_kept() -> None:
    store, _, nodes = watched("memory/target", "memory/videoram")
    assert read_xenstore_kb(nodes, "memory/videoram") is None
    assert read_xenstore_kb(nodes, "memory/videoram") is None
    assert store.reads == ["memory/videoram"] * 2
    store.fail = OSError(errno.EIO, "xenstore down")
    with pytest.raises(Exception, match="read failed"):
        read_xenstore_kb(nodes, "memory/target")
    store.fail = None
    assert read_xenstore_kb(nodes, "memory/target") == 524288
    assert read_xenstore_kb(nodes, "memory/target") == 524288
    assert store.reads.count("memory/target") == 2
