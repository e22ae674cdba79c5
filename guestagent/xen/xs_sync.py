"""Make a xenstore subtree hold exactly a given set of keys.

Publishers (the guest's ``data/guestagent`` tree, the Dom0 hints) describe what should be there as a
flat ``{relative key: value}`` mapping; :func:`diff_tree` (pure) works out the writes and removals
against what is present, and :func:`sync_tree` applies them in one transaction, retried on EAGAIN,
so readers never see a half-written tree and stale keys never linger.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

from guestagent.errors import InputError

#: Bounds on what a published subtree may hold: far under xenstored's per-domain quotas
#: (1000 nodes, 2048-byte values; reference section 3.4).
MAX_TREE_NODES = 400
MAX_TREE_DEPTH = 8
MAX_VALUE_BYTES = 1024


class TreeOps(Protocol):
    """The operations of a xenstore client or transaction that syncing needs."""

    def directory(self, path: str) -> list[str]: ...
    def read(self, path: str) -> bytes: ...
    def write(self, path: str, value: bytes | str) -> None: ...
    def rm(self, path: str) -> None: ...


T = TypeVar("T")


class TransactionRunner(Protocol):
    """A xenstore client: runs ``fn`` in a transaction, retrying it on EAGAIN."""

    def run_transaction(self, fn: Callable[[Any], T], retries: int = ...) -> T: ...


@dataclass(frozen=True)
class TreeChanges:
    """The writes and removals that turn a xenstore tree into the desired one."""

    writes: dict[str, str] = field(default_factory=dict)
    removes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.writes and not self.removes


def diff_tree(desired: Mapping[str, str], present: Mapping[str, bytes]) -> TreeChanges:
    """Writes for keys missing or different; removals for present keys no desired key lives
    under, collapsed to their top-most node (removing a node removes its subtree)."""
    writes = {k: v for k, v in desired.items() if present.get(k) != v.encode("ascii")}
    keep: set[str] = set()
    for key in desired:
        parts = key.split("/")
        keep.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    stale = sorted(p for p in present if p not in keep)
    removes: list[str] = []
    for path in stale:
        if not any(path.startswith(top + "/") for top in removes):
            removes.append(path)
    return TreeChanges(writes, removes)


def check_desired(base: str, desired: Mapping[str, str]) -> None:
    """Refuse keys or values a publisher must never send (programming errors or hostile text)."""
    if len(desired) > MAX_TREE_NODES:
        raise InputError(base, f"{len(desired)} keys exceed the limit of {MAX_TREE_NODES}")
    for key, value in desired.items():
        parts = key.split("/")
        if not key or any(not p or p in (".", "..") for p in parts) or len(parts) > MAX_TREE_DEPTH:
            raise InputError(base, "invalid relative key", key)
        if len(value) > MAX_VALUE_BYTES or not all(32 <= ord(c) < 127 for c in value):
            raise InputError(f"{base}/{key}", "value is not short printable ASCII", value)


def read_tree(ops: TreeOps, base: str, leave: Collection[str] = ()) -> dict[str, bytes]:
    """Every node below ``base`` (not ``base`` itself) as ``{relative path: value}``; an absent
    ``base`` is an empty tree. Bounded in size and depth. The children of ``base`` named in
    ``leave`` (another publisher's sections) are not read."""
    from guestagent.xen.xenstore import XenstoreError

    tree: dict[str, bytes] = {}
    pending: list[tuple[str, int]] = [("", 0)]
    while pending:
        rel, depth = pending.pop()
        path = f"{base}/{rel}" if rel else base
        try:
            children = ops.directory(path)
        except XenstoreError as e:
            if e.errno == 2:  # ENOENT: gone, or never there
                continue
            raise
        for child in children:
            if not rel and child in leave:
                continue
            child_rel = f"{rel}/{child}" if rel else child
            if len(tree) >= MAX_TREE_NODES * 2 or depth >= MAX_TREE_DEPTH:
                raise InputError(base, "subtree is larger or deeper than guestagent ever writes")
            try:
                tree[child_rel] = ops.read(f"{base}/{child_rel}")
            except XenstoreError as e:
                if e.errno == 2:
                    continue
                raise
            pending.append((child_rel, depth + 1))
    return tree


def sync_tree(
    client: TransactionRunner, base: str, desired: Mapping[str, str], leave: Collection[str] = ()
) -> TreeChanges:
    """Make ``base`` hold exactly ``desired`` (keys relative to ``base``), atomically. The
    children of ``base`` named in ``leave`` belong to another publisher: they are neither read
    nor removed, and ``desired`` may not name them."""
    check_desired(base, desired)
    foreign = sorted({k.split("/")[0] for k in desired} & set(leave))
    if foreign:
        raise InputError(base, "keys in a section left to another publisher", foreign)

    def apply(tx: TreeOps) -> TreeChanges:
        changes = diff_tree(desired, read_tree(tx, base, leave))
        for path in changes.removes:
            tx.rm(f"{base}/{path}")
        for key, value in sorted(changes.writes.items()):
            tx.write(f"{base}/{key}", value)
        return changes

    return client.run_transaction(apply)


def update_tree(
    client: TransactionRunner, base: str, last: Mapping[str, str], desired: Mapping[str, str]
) -> TreeChanges | None:
    """Write the keys of ``desired`` whose value differs from ``last`` (what this publisher
    wrote under ``base`` last time, successfully), in one transaction, without reading the tree
    back: a periodic publisher's cheap path. None, and nothing sent, when the set of keys
    differs: then only :func:`sync_tree` can remove the stale ones."""
    if set(last) != set(desired):
        return None
    check_desired(base, desired)
    writes = {k: v for k, v in desired.items() if last[k] != v}
    if not writes:
        return TreeChanges()

    def apply(tx: TreeOps) -> TreeChanges:
        for key, value in sorted(writes.items()):
            tx.write(f"{base}/{key}", value)
        return TreeChanges(writes)

    return client.run_transaction(apply)
