"""Hypervisor detection from the host tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestagent.hostfs import HostFS
from guestagent.xen.detect import Hypervisor, detect_hypervisor
from tests.fixtures.loader import tree


def _tree(tmp_path: Path, files: dict[str, bytes]) -> HostFS:
    for rel, data in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return HostFS(str(tmp_path))


@pytest.mark.parametrize("name", ["laptop", "two-socket", "four-node-sparse"])
def test_bare_metal_fixtures_are_not_xen(name: str) -> None:
    hv = detect_hypervisor(HostFS(str(tree(name))))
    assert hv == Hypervisor(kind="none")
    assert hv.describe() == "none"


@pytest.mark.parametrize(("name", "guest_type"), [("hvm-2vnode", "HVM"), ("pv-guest", "PV")])
def test_xen_guest_fixtures(name: str, guest_type: str) -> None:
    hv = detect_hypervisor(HostFS(str(tree(name))))
    assert hv.kind == "xen" and hv.is_xen
    assert hv.guest_type == guest_type
    assert not hv.is_dom0
    assert hv.privcmd == "/dev/xen/privcmd"
    assert hv.problems == []
    assert hv.describe() == f"xen ({guest_type} guest)"


def test_dom0_from_capabilities(tmp_path: Path) -> None:
    hv = detect_hypervisor(
        _tree(
            tmp_path,
            {
                "sys/hypervisor/type": b"xen\n",
                "sys/hypervisor/guest_type": b"PV\n",
                "proc/xen/capabilities": b"control_d\n",
                "dev/xen/privcmd": b"",
            },
        )
    )
    assert hv.is_dom0 and hv.guest_type == "PV"
    assert hv.describe() == "xen (Dom0, PV)"


def test_old_kernel_without_guest_type(tmp_path: Path) -> None:
    hv = detect_hypervisor(_tree(tmp_path, {"sys/hypervisor/type": b"xen\n"}))
    assert hv.kind == "xen" and hv.guest_type is None and hv.privcmd is None
    assert hv.describe() == "xen (guest, guest type unknown)"


def test_legacy_proc_privcmd_without_sys_hypervisor(tmp_path: Path) -> None:
    hv = detect_hypervisor(_tree(tmp_path, {"proc/xen/privcmd": b"", "proc/xen/capabilities": b""}))
    assert hv.kind == "xen" and hv.privcmd == "/proc/xen/privcmd" and not hv.is_dom0


def test_other_hypervisor_type_is_none(tmp_path: Path) -> None:
    assert detect_hypervisor(_tree(tmp_path, {"sys/hypervisor/type": b"zvm\n"})).kind == "none"


def test_garbage_type_is_reported_and_privcmd_decides(tmp_path: Path) -> None:
    hv = detect_hypervisor(
        _tree(tmp_path, {"sys/hypervisor/type": b"\xde\xad\xbe\xef", "dev/xen/privcmd": b""})
    )
    assert hv.kind == "xen"
    assert len(hv.problems) == 1
    assert hv.problems[0].startswith("/sys/hypervisor/type: not ASCII text")


def test_garbage_guest_type_is_unknown(tmp_path: Path) -> None:
    hv = detect_hypervisor(
        _tree(tmp_path, {"sys/hypervisor/type": b"xen\n", "sys/hypervisor/guest_type": b"H V M\n"})
    )
    assert hv.guest_type is None
    assert hv.problems == ["/sys/hypervisor/guest_type: expected one word (got 'H V M\\n')"]


def test_garbage_capabilities(tmp_path: Path) -> None:
    hv = detect_hypervisor(
        _tree(tmp_path, {"sys/hypervisor/type": b"xen\n", "proc/xen/capabilities": b"CONTROL!\n"})
    )
    assert hv.kind == "xen" and not hv.is_dom0
    assert hv.problems[0].startswith("/proc/xen/capabilities: expected capability words")
