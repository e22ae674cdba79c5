"""The pure pieces of the real-Xen check of Dom0's backend threads
(tests/e2e/dom0_backend_threads.py), checked without a bed: the reader of ``xl debug-keys u``'s
dump, the reader of Dom0's thread listing and the blkback and netback hotplug scripts (run here
with stand-in xenstore tools)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.dom0_backend_threads import (
    HOTPLUG_SCRIPT,
    VIF_SCRIPT,
    cpu_lists,
    cpus_of_node,
    guest_threads_of,
    kinds,
    node_pages,
    parse_threads,
)

#: Xen 4.17's dump_numa (xen/arch/x86/numa.c) says ``Domain <id>``; 4.18's ``%pd``: ``d<id>``.
DUMP = """(XEN) 'u' pressed -> dumping numa info (now = 123)
(XEN) Memory location of each domain:
(XEN) Domain 0 (total: 262144):
(XEN)     Node 0: 262144
(XEN)     Node 1: 0
(XEN) Domain 15 (total: 131072):
(XEN)     Node 0: 12
(XEN)     Node 1: 131060
(XEN) Domain 5 (total: 9):
(XEN)     Node 0: 9
(XEN)     Node 1: 0
(XEN)      2 vnodes, 2 vcpus, guest physical layout:
"""


def test_a_guests_pages_per_node_come_from_its_last_dump() -> None:
    assert node_pages(DUMP, 15) == {0: 12, 1: 131060}
    assert node_pages(DUMP, 5) == {0: 9, 1: 0}  # the vNUMA lines after it are not nodes
    later = DUMP + "(XEN) [  99.1] d15 (total: 131072):\n(XEN) [  99.1]     Node 0: 0\n" \
        "(XEN) [  99.1]     Node 1: 131072\n"
    assert node_pages(later, 15) == {0: 0, 1: 131072}  # the last dump, timestamps or not
    with pytest.raises(AssertionError, match="no memory dump of d1 "):
        node_pages(DUMP, 1)  # Domain 15's lines are not domain 1's
    with pytest.raises(AssertionError, match="no memory dump of d1 "):
        node_pages(later, 1)  # nor are d15's


def test_a_nodes_pcpus_as_an_xl_list() -> None:
    cpu_nodes = {3: 1, 0: 0, 2: 1, 1: 0}
    assert (cpus_of_node(cpu_nodes, 1), cpus_of_node(cpu_nodes, 0)) == ("2,3", "0,1")
    assert cpus_of_node(cpu_nodes, 2) == ""


def test_only_the_guests_threads_are_taken() -> None:
    shown = {"backend_threads": [
        {"pid": 10, "comm": "blkback.5.xvdb-0", "domid": 5},
        {"pid": 11, "comm": "vif5.0-q0-guest-rx", "domid": 5},
        {"pid": 12, "comm": "blkback.6.xvdb-0", "domid": 6},
    ]}
    assert [t["pid"] for t in guest_threads_of(shown, 5)] == [10, 11]


def test_dom0s_thread_listing_is_read_by_pid_with_its_backend() -> None:
    out = ("101 blkback.5.xvdb-0 0-1\n102 vif5.0-q0-guest-rx 1\n"
           "sed: /proc/103/status: No such file or directory\n104 vif5.0-q0-dealloc\n\n")
    threads = parse_threads(out)
    assert threads == {101: ("blkback.5.xvdb-0", "0-1"), 102: ("vif5.0-q0-guest-rx", "1")}
    assert kinds(threads) == {"blkback", "netback"}
    assert kinds({101: threads[101]}) == {"blkback"}
    assert kinds({103: ("1.xvdb-0", "0-1")}) == {"blkback"}  # today's blkback (Dom0's 6.1)
    assert cpu_lists(threads) == {"0-1", "1"}


def run_hotplug(tmp_path: Path, action: str, target: str = "/dev/null",
                text: str = HOTPLUG_SCRIPT, *more: str) -> tuple[int, str]:
    """The script with stand-in xenstore-read (the backend's params) and xenstore-write (its
    arguments, one per line, into a file), called with ``action`` and ``more``; returns its exit
    status and what it wrote."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    written = tmp_path / "written"
    tools = {
        "xenstore-read": f'[ "$1" = "$XENBUS_PATH/params" ] && echo {target}',
        "xenstore-write": f'for a in "$@"; do echo "$a"; done >>{written}',
    }
    for name, body in tools.items():
        tool = bindir / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    script = tmp_path / "hotplug"
    script.write_text(text)
    script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
           "XENBUS_PATH": "backend/vbd/5/51728"}
    rc = subprocess.run([str(script), action, *more], env=env, check=False).returncode
    return rc, written.read_text() if written.exists() else ""


def test_the_hotplug_script_tells_blkback_the_devices_major_minor_in_hex(tmp_path: Path) -> None:
    rc, written = run_hotplug(tmp_path, "add", "/dev/null")
    dev = os.stat("/dev/null").st_rdev
    assert rc == 0
    assert written.splitlines() == [
        "backend/vbd/5/51728/physical-device", f"{os.major(dev):x}:{os.minor(dev):x}",
        "backend/vbd/5/51728/physical-device-path", "/dev/null",
        "backend/vbd/5/51728/hotplug-status", "connected"]


def test_the_hotplug_script_fails_on_a_missing_device_and_ignores_remove(tmp_path: Path) -> None:
    assert run_hotplug(tmp_path, "add", str(tmp_path / "absent"))[0] != 0
    assert run_hotplug(tmp_path, "remove", "/dev/null") == (0, "")


def test_the_vif_script_says_connected_when_the_vif_comes_online(tmp_path: Path) -> None:
    assert run_hotplug(tmp_path, "online", "/dev/null", VIF_SCRIPT, "type_if=vif") == (
        0, "backend/vbd/5/51728/hotplug-status\nconnected\n")
    (tmp_path / "written").unlink()
    assert run_hotplug(tmp_path, "offline", "/dev/null", VIF_SCRIPT, "type_if=vif") == (0, "")
