"""Where a device's node comes from when the kernel does not know it: Dom0, or the operator.

A :class:`HintSource` is anything with ``hints() -> list[DeviceHint]``. Three are here:

* :class:`ConfigHintSource`: the operator's override, ``{"0000:00:05.0": 1}`` (guest BDF -> vnode);
* :class:`StaticHintSource`: a fixed list (tests, or a caller that already read its hints);
* :class:`XenstoreHintSource`: what the Dom0 agent publishes under a Dom0-owned, guest-readable
  path, read through any object with ``read_str(path)`` and ``directory(path)`` (the xenstore
  client). The schema it reads (``version`` = ``1``;
  ``devices/<bdf-with-dashes>/{guest-bdf,vnode,host-node}``) is the Dom0 engineer's to fix; only
  this class knows it.

Every hint is validated against the guest before use (:func:`validate_hints`): a hint naming a node
the guest does not have online is one log line and is ignored.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.
# ruff: noqa: UP045

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Optional, Protocol

from guestagent.devices.discovery import MAX_NODE_ID
from guestagent.devices.model import DeviceHint, NodeInfo, is_bdf
from guestagent.errors import InputError
from guestagent.log import get_logger

#: Schema version of the Dom0 hints this reader understands.
DOM0_HINT_VERSION = "1"
#: Below the guest's own xenstore home: ``/local/domain/<domid>/<DOM0_HINT_DIR>``.
DOM0_HINT_DIR = "guestagent-dom0"
#: Dom0-published text is untrusted input: bounded sizes and counts.
MAX_HINT_DEVICES = 256
MAX_HINT_VALUE = 32


class HintSource(Protocol):
    """A supplier of device hints; ``name`` appears in log lines and in ``devices`` output."""

    name: str

    def hints(self) -> list[DeviceHint]: ...


class XenstoreReader(Protocol):
    """The part of the xenstore client a hint source needs."""

    def read_str(self, path: str) -> str: ...

    def directory(self, path: str) -> list[str]: ...


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


def _bounded_int(text: str, source: str) -> int:
    if len(text) > MAX_HINT_VALUE or not re.fullmatch(r"\d{1,4}", text.strip()):
        raise InputError(source, "expected a node number", text)
    value = int(text.strip())
    if value > MAX_NODE_ID:
        raise InputError(source, f"above the maximum {MAX_NODE_ID}", text)
    return value


class XenstoreHintSource:
    """Hints the Dom0 agent published for this guest (schema version 1)."""

    name = "dom0"

    def __init__(self, reader: XenstoreReader, domid: Optional[int] = None,
                 base: Optional[str] = None) -> None:
        if base is None:
            if domid is None:
                raise ValueError("XenstoreHintSource needs a domid or a base path")
            base = f"/local/domain/{domid}/{DOM0_HINT_DIR}"
        self.base = base.rstrip("/")
        self._reader = reader

    def hints(self) -> list[DeviceHint]:
        log = get_logger("devices")
        try:
            version = self._reader.read_str(f"{self.base}/version").strip()
        except (OSError, InputError) as e:
            log.info("dom0_hints_absent", path=f"{self.base}/version", reason=str(e))
            return []
        if version != DOM0_HINT_VERSION:
            log.warning("dom0_hints_ignored", path=f"{self.base}/version",
                        reason=f"schema version {version[:MAX_HINT_VALUE]!r} is not "
                        f"{DOM0_HINT_VERSION}")
            return []
        try:
            entries = self._reader.directory(f"{self.base}/devices")
        except (OSError, InputError):
            return []
        out: list[DeviceHint] = []
        for entry in entries[:MAX_HINT_DEVICES]:
            path = f"{self.base}/devices/{entry}"
            try:
                out.append(self._one(path, entry))
            except (OSError, InputError) as e:
                log.warning("hint_ignored", source=path, reason=str(e))
        if len(entries) > MAX_HINT_DEVICES:
            log.warning("hint_ignored", source=f"{self.base}/devices",
                        reason=f"more than {MAX_HINT_DEVICES} entries; the rest ignored")
        return out

    def _one(self, path: str, entry: str) -> DeviceHint:
        bdf = self._reader.read_str(f"{path}/guest-bdf").strip()
        if len(bdf) > MAX_HINT_VALUE or not is_bdf(bdf):
            raise InputError(f"{path}/guest-bdf", "not a PCI address", bdf)
        if entry != bdf.replace(":", "-").replace(".", "-") and entry != bdf.replace(":", "-"):
            # The entry name is Dom0's business; a mismatch is worth one line but not fatal.
            get_logger("devices").info("hint_entry_name", source=path, guest_bdf=bdf)
        vnode = _bounded_int(self._reader.read_str(f"{path}/vnode"), f"{path}/vnode")
        host_node: Optional[int] = None
        try:
            host_node = _bounded_int(self._reader.read_str(f"{path}/host-node"),
                                     f"{path}/host-node")
        except (OSError, InputError):
            host_node = None
        return DeviceHint(guest_bdf=bdf, vnode=vnode, host_node=host_node)


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
