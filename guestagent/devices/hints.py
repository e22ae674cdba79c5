"""Where a device's node comes from when the kernel does not know it: Dom0, or the operator.

A :class:`HintSource` is anything with ``hints() -> list[DeviceHint]``. Three are here:

* :class:`ConfigHintSource`: the operator's override, ``{"0000:00:05.0": 1}`` (guest BDF -> vnode);
* :class:`StaticHintSource`: a fixed list (tests, or a caller that already read its hints);
* :class:`XenstoreHintSource`: what the Dom0 agent publishes under the Dom0-owned, guest-readable
  ``/local/domain/<domid>/guestagent-dom0`` (schema: :mod:`guestagent.dom0.schema`), read through
  any object with ``read(path)`` and ``directory(path)`` (the xenstore client).

Every hint is validated against the guest before use (:func:`validate_hints`): a hint naming a node
the guest does not have online is one log line and is ignored.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.
# ruff: noqa: UP007, UP045

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Optional, Protocol, Union

from guestagent.devices.model import DeviceHint, NodeInfo, is_bdf
from guestagent.errors import InputError
from guestagent.log import get_logger

#: Below the guest's own xenstore home: ``/local/domain/<domid>/<DOM0_HINT_DIR>``
#: (``guestagent.dom0.schema.BASE_NAME``, not imported here to keep this module light).
DOM0_HINT_DIR = "guestagent-dom0"


class HintSource(Protocol):
    """A supplier of device hints; ``name`` appears in log lines and in ``devices`` output."""

    name: str

    def hints(self) -> list[DeviceHint]: ...


class XenstoreReader(Protocol):
    """The part of the xenstore client a hint source needs (``get_perms`` is used if present)."""

    def read(self, path: str) -> bytes: ...

    def directory(self, path: str) -> list[str]: ...


class _ReadOnlyOps:
    """A reader as ``xs_sync.TreeOps``: the guest only ever reads Dom0's tree."""

    def __init__(self, reader: XenstoreReader) -> None:
        self._reader = reader

    def directory(self, path: str) -> list[str]:
        return self._reader.directory(path)

    def read(self, path: str) -> bytes:
        return self._reader.read(path)

    def write(self, path: str, value: Union[bytes, str]) -> None:
        raise PermissionError(f"{path}: the guest never writes Dom0's hints")

    def rm(self, path: str) -> None:
        raise PermissionError(f"{path}: the guest never removes Dom0's hints")


class StaticHintSource:
    """A fixed list of hints."""

    def __init__(self, hints: Iterable[DeviceHint], name: str = "dom0") -> None:
        self.name = name
        self._hints = list(hints)

    def hints(self) -> list[DeviceHint]:
        return list(self._hints)


class ConfigHintSource:
    """The configuration override: guest BDF -> vnode, e.g. ``{"0000:00:05.0": 1}``."""

    name = "config"

    def __init__(self, overrides: Mapping[str, object]) -> None:
        self._overrides = dict(overrides)

    def hints(self) -> list[DeviceHint]:
        out: list[DeviceHint] = []
        for bdf, node in self._overrides.items():
            source = f"devices config node_overrides[{bdf!r}]"
            if not isinstance(bdf, str) or not is_bdf(bdf):
                get_logger("devices").warning(
                    "hint_ignored", source=source, reason="not a PCI address like 0000:00:05.0"
                )
                continue
            if isinstance(node, bool) or not isinstance(node, int):
                get_logger("devices").warning(
                    "hint_ignored", source=source, reason="node must be an integer", value=node
                )
                continue
            out.append(DeviceHint(guest_bdf=bdf, vnode=node, host_node=None))
        return out


class XenstoreHintSource:
    """Hints the Dom0 agent published for this guest, in :mod:`guestagent.dom0.schema` version 1.

    Read with :func:`guestagent.xen.xs_sync.read_tree` and parsed by the schema's own strict
    :func:`~guestagent.dom0.schema.parse_tree`, so reader and publisher cannot drift apart. When
    the reader can tell permissions (``get_perms``, as the xenstore client can), a base node not
    owned by dom0 with read-only access for this guest is refused (``check_perms``): the hints
    must come from Dom0, not from something the guest could have written. Devices Dom0 has no
    guest address or no vnode for yet are skipped with one info line each.
    """

    name = "dom0"

    def __init__(self, reader: XenstoreReader, domid: int, base: Optional[str] = None) -> None:
        self.domid = domid
        self.base = (base or f"/local/domain/{domid}/{DOM0_HINT_DIR}").rstrip("/")
        self._reader = reader

    def hints(self) -> list[DeviceHint]:
        from guestagent.dom0.schema import check_perms, parse_tree
        from guestagent.xen.xs_sync import read_tree

        log = get_logger("devices")
        try:
            tree = read_tree(_ReadOnlyOps(self._reader), self.base)
            if not tree:
                log.info("dom0_hints_absent", path=self.base)
                return []
            get_perms = getattr(self._reader, "get_perms", None)
            if get_perms is not None:
                check_perms(self.base, get_perms(self.base), self.domid)
            published = parse_tree(tree, self.base)
        except (OSError, InputError) as e:
            log.warning("dom0_hints_ignored", path=self.base, reason=str(e))
            return []
        out: list[DeviceHint] = []
        for hint in published:
            if hint.guest is None or hint.vnode is None:
                log.info("dom0_hint_incomplete", host_bdf=str(hint.host),
                         reason="no guest address yet" if hint.guest is None else
                         "Dom0 could not choose a vnode")
                continue
            out.append(DeviceHint(guest_bdf=str(hint.guest), vnode=hint.vnode,
                                  host_node=hint.host_node, vnode_source=hint.vnode_source))
        return out


def validate_hints(
    hints: Iterable[DeviceHint], nodes: NodeInfo, source: str
) -> tuple[dict[str, DeviceHint], list[str]]:
    """The usable hints by guest BDF, and one line per hint ignored (and why). Pure."""
    good: dict[str, DeviceHint] = {}
    problems: list[str] = []
    online = set(nodes.online)
    for hint in hints:
        where = f"{source} hint for {hint.guest_bdf}"
        if not is_bdf(hint.guest_bdf):
            problems.append(f"{where}: not a PCI address, ignored")
        elif hint.vnode not in online:
            have = ",".join(str(n) for n in sorted(online)) or "none"
            problems.append(
                f"{where}: names node {hint.vnode}, which this guest does not have online "
                f"(online nodes: {have}), ignored"
            )
        elif hint.guest_bdf in good and good[hint.guest_bdf].vnode != hint.vnode:
            problems.append(
                f"{where}: names node {hint.vnode} after an earlier hint named node "
                f"{good[hint.guest_bdf].vnode}; the first is kept"
            )
        else:
            good.setdefault(hint.guest_bdf, hint)
    return good, problems
