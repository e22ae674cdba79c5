"""The toolstack's view of a guest: its type and its vnode -> pnode map (reference 2.1, 7.6).

Xen never tells anybody which physical node a vnode sits on; only the toolstack knows. libxl
keeps each domain's ``libxl_domain_config`` as JSON in its userdata file (verified in Xen's
``tools/libs/light``: ``libxl__userdata_path`` builds ``XEN_LIB_DIR "/userdata-%s.%u.%s.%s"`` from
"d", the domid, the uuid and the userid; ``libxl__get_domain_configuration`` retrieves userid
``libxl-json``; writers store the string with its terminating NUL): so
``/var/lib/xen/userdata-d.<domid>.<uuid>.libxl-json``. ``xl list -l <domid>`` prints
the same object wrapped as ``[{"domid": <id>, "config": {...}}]`` (``printf_info_one_json``).

Used from the config (``libxl_types.idl``): ``c_info.type`` (``"hvm"``, ``"pv"``, ``"pvh"``) and
``b_info.vnuma_nodes[]`` with ``pnode`` (uint32), ``memkb``, ``distances``, ``vcpus``; vnode i is
the i-th entry. A missing ``pnode`` is read as 0: libxl's JSON generator emits a plain integer
field only when it is non-zero (``get_default_expr`` in ``tools/libs/light/gentypes.py``).
Everything else is ignored. The file is Dom0's own (root-owned), yet parsed strictly: size
bounded, types and ranges checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Callable

from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS
from guestagent.xen.sysctl import MAX_NODES

LIBXL_DIR = "/var/lib/xen"
MAX_CONFIG_BYTES = 4 << 20
MAX_VNODES = 64
GUEST_TYPES = ("hvm", "pv", "pvh")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class GuestConfig:
    domid: int
    type: str | None  # "hvm" | "pv" | "pvh" | None (not stated)
    vnode_pnodes: list[int]  # pnode of each vnode; [] when the guest has no vNUMA
    source: str


def userdata_name(domid: int, uuid: str) -> str:
    return f"userdata-d.{domid}.{uuid}.libxl-json"


def parse_uuid(text: str, source: str) -> str:
    if not _UUID_RE.fullmatch(text):
        raise InputError(source, "expected a lower-case UUID", text)
    return text


def _load_json(data: bytes, source: str) -> Any:
    if len(data) > MAX_CONFIG_BYTES:
        raise InputError(source, f"larger than {MAX_CONFIG_BYTES} bytes", len(data))
    if data.endswith(b"\0"):
        data = data[:-1]
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(source, "not UTF-8", data[:40]) from None
    except (ValueError, RecursionError) as e:
        raise InputError(source, f"not JSON: {str(e)[:80]}") from None


def parse_domain_config(data: bytes, domid: int, source: str) -> GuestConfig:
    """A ``libxl_domain_config`` object, or ``xl list -l``'s list holding one for ``domid``."""
    return guest_config(load_domain_config(data, domid, source), domid, source)


def load_domain_config(data: bytes, domid: int, source: str) -> dict[str, Any]:
    """The ``libxl_domain_config`` JSON object (unwrapped from ``xl list -l``'s list)."""
    doc = _load_json(data, source)
    if isinstance(doc, list):
        matches = [
            e for e in doc if isinstance(e, dict) and e.get("domid") == domid and "config" in e
        ]
        if len(matches) != 1:
            raise InputError(source, f"expected exactly one entry for domain {domid}", len(matches))
        doc = matches[0]["config"]
    if not isinstance(doc, dict):
        raise InputError(source, "the domain configuration is not a JSON object")
    return doc


def guest_config(doc: dict[str, Any], domid: int, source: str) -> GuestConfig:
    """The type and vnode -> pnode map of one loaded ``libxl_domain_config``."""
    c_info = doc.get("c_info", {})
    b_info = doc.get("b_info", {})
    if not isinstance(c_info, dict) or not isinstance(b_info, dict):
        raise InputError(source, "c_info or b_info is not an object")
    guest_type = c_info.get("type")
    if guest_type is not None and guest_type not in GUEST_TYPES:
        raise InputError(f"{source}: c_info.type", f"not one of {GUEST_TYPES}", guest_type)
    vnodes = b_info.get("vnuma_nodes") or []
    if not isinstance(vnodes, list) or len(vnodes) > MAX_VNODES:
        raise InputError(
            f"{source}: b_info.vnuma_nodes", f"expected a list of at most {MAX_VNODES}", vnodes
        )
    pnodes: list[int] = []
    for i, vnode in enumerate(vnodes):
        pnode = vnode.get("pnode", 0) if isinstance(vnode, dict) else None
        # libxl omits a field at its default (0), so a missing pnode means node 0.
        if not isinstance(pnode, int) or isinstance(pnode, bool) or not 0 <= pnode < MAX_NODES:
            raise InputError(
                f"{source}: b_info.vnuma_nodes[{i}].pnode", f"expected 0..{MAX_NODES - 1}", pnode
            )
        pnodes.append(pnode)
    return GuestConfig(domid, guest_type, pnodes, source)


def find_userdata(hostfs: HostFS, domid: int, uuid: str | None) -> str | None:
    """The host path of the domain's libxl-json file, or None.

    With the uuid (from xenstore ``/local/domain/<domid>/vm``) the name is exact; without it the
    only ``userdata-d.<domid>.*.libxl-json`` is used, and several (leftovers of a crash) are an
    error rather than a guess.
    """
    if uuid is not None:
        path = f"{LIBXL_DIR}/{userdata_name(domid, uuid)}"
        return path if hostfs.exists(path) else None
    try:
        names = hostfs.listdir(LIBXL_DIR)
    except MissingInputError:
        return None
    pattern = re.compile(rf"userdata-d\.{domid}\.({_UUID_RE.pattern})\.libxl-json")
    found = [n for n in names if pattern.fullmatch(n)]
    if len(found) > 1:
        raise InputError(LIBXL_DIR, f"several libxl-json files for domain {domid}", found)
    return f"{LIBXL_DIR}/{found[0]}" if found else None


def read_bytes(hostfs: HostFS, host_path: str) -> bytes:
    try:
        with open(hostfs.path(host_path), "rb") as f:
            return f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise MissingInputError(host_path) from None
    except OSError as e:
        raise InputError(host_path, f"read failed: {e.strerror or e}") from None


def xl_list(domid: int) -> bytes | None:
    """``xl list -l <domid>``'s output, or None when xl is not installed."""
    xl = shutil.which("xl")
    if xl is None:
        return None
    try:
        done = subprocess.run(
            [xl, "list", "-l", str(domid)], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InputError(f"xl list -l {domid}", f"could not run: {e}") from None
    if done.returncode != 0:
        err = done.stderr.decode("ascii", "replace").strip()[:120]
        raise InputError(f"xl list -l {domid}", f"exit status {done.returncode}", err)
    return done.stdout


def read_domain_config(
    hostfs: HostFS,
    domid: int,
    uuid: str | None,
    xl: Callable[[int], bytes | None] | None = None,
) -> tuple[dict[str, Any], str] | None:
    """(the loaded config, its source): libxl's JSON file, else ``xl list -l`` (only on the
    real host), else None (unknown)."""
    path = find_userdata(hostfs, domid, uuid)
    if path is not None:
        return load_domain_config(read_bytes(hostfs, path), domid, path), path
    runner = xl if xl is not None else (xl_list if hostfs.is_real_host else None)
    if runner is None:
        return None
    output = runner(domid)
    if output is None:
        return None
    source = f"xl list -l {domid}"
    return load_domain_config(output, domid, source), source


def read_guest_config(
    hostfs: HostFS,
    domid: int,
    uuid: str | None,
    xl: Callable[[int], bytes | None] | None = None,
) -> GuestConfig | None:
    """libxl's JSON file, else ``xl list -l`` (only on the real host), else None (unknown)."""
    found = read_domain_config(hostfs, domid, uuid, xl)
    return None if found is None else guest_config(found[0], domid, found[1])
