"""Every struct and constant in csrc/guestagent_xen.h against Xen's own headers (libxen-dev).

The field list is walked from cffi's view of our header, so a field added there is checked
automatically; the C side is compiled here against /usr/include/xen and asked for offsetof and
sizeof of the same member path. A wrong field can never ship.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_xenc = pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
ffi: Any = _xenc.ffi
lib: Any = _xenc.lib

XEN_INCLUDE = Path("/usr/include/xen/memory.h")

# (our struct, Xen's struct, compilation unit)
STRUCTS: list[tuple[str, str, str]] = [
    ("ga_privcmd_hypercall", "privcmd_hypercall", "tools"),
    ("ga_xen_vmemrange", "xen_vmemrange", "tools"),
    ("ga_xen_vnuma_topology_info", "xen_vnuma_topology_info", "tools"),
    ("ga_xsd_sockmsg", "xsd_sockmsg", "tools"),
    ("ga_xen_sysctl_meminfo", "xen_sysctl_meminfo", "tools"),
    ("ga_xen_sysctl_numainfo", "xen_sysctl_numainfo", "tools"),
    ("ga_xen_sysctl_cputopo", "xen_sysctl_cputopo", "tools"),
    ("ga_xen_sysctl_cputopoinfo", "xen_sysctl_cputopoinfo", "tools"),
    ("ga_physdev_pci_device", "physdev_pci_device", "tools"),
    ("ga_xen_sysctl_pcitopoinfo", "xen_sysctl_pcitopoinfo", "tools"),
    ("ga_xen_sysctl_physinfo", "xen_sysctl_physinfo", "tools"),
    ("ga_xen_sysctl", "xen_sysctl", "tools"),
    ("ga_xen_domctl_getvcpuinfo", "xen_domctl_getvcpuinfo", "tools"),
    ("ga_xenctl_bitmap", "xenctl_bitmap", "tools"),
    ("ga_xen_domctl_vcpuaffinity", "xen_domctl_vcpuaffinity", "tools"),
    ("ga_xen_domctl", "xen_domctl", "tools"),
    # tmem is only visible to guests built for an interface version before 4.13 (reference 6.1).
    ("ga_tmem_op", "tmem_op", "tmem"),
]

# our constant -> Xen's expression, compilation unit
CONSTANTS: list[tuple[str, str, str]] = [
    ("GA_IOCTL_PRIVCMD_HYPERCALL", "IOCTL_PRIVCMD_HYPERCALL", "tools"),
    ("GA_HYPERVISOR_memory_op", "__HYPERVISOR_memory_op", "tools"),
    ("GA_HYPERVISOR_xen_version", "__HYPERVISOR_xen_version", "tools"),
    ("GA_HYPERVISOR_sysctl", "__HYPERVISOR_sysctl", "tools"),
    ("GA_HYPERVISOR_domctl", "__HYPERVISOR_domctl", "tools"),
    ("GA_XEN_DOMCTL_getvcpuinfo", "XEN_DOMCTL_getvcpuinfo", "tools"),
    ("GA_XEN_DOMCTL_getvcpuaffinity", "XEN_DOMCTL_getvcpuaffinity", "tools"),
    ("GA_XEN_VCPUAFFINITY_HARD", "XEN_VCPUAFFINITY_HARD", "tools"),
    ("GA_XEN_VCPUAFFINITY_SOFT", "XEN_VCPUAFFINITY_SOFT", "tools"),
    ("GA_HYPERVISOR_tmem_op", "__HYPERVISOR_tmem_op", "tools"),
    ("GA_XENVER_version", "XENVER_version", "tools"),
    ("GA_DOMID_SELF", "DOMID_SELF", "tools"),
    ("GA_XENMEM_get_vnumainfo", "XENMEM_get_vnumainfo", "tools"),
    ("GA_XENSTORE_PAYLOAD_MAX", "XENSTORE_PAYLOAD_MAX", "tools"),
    ("GA_XEN_SYSCTL_physinfo", "XEN_SYSCTL_physinfo", "tools"),
    ("GA_XEN_SYSCTL_cputopoinfo", "XEN_SYSCTL_cputopoinfo", "tools"),
    ("GA_XEN_SYSCTL_numainfo", "XEN_SYSCTL_numainfo", "tools"),
    ("GA_XEN_SYSCTL_pcitopoinfo", "XEN_SYSCTL_pcitopoinfo", "tools"),
]

PRELUDE = {
    "tools": """
#define __XEN_TOOLS__ 1
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <linux/types.h>
#include <sys/ioctl.h>
#include <xen/xen.h>
#include <xen/version.h>
#include <xen/memory.h>
#include <xen/physdev.h>
#include <xen/sysctl.h>
#include <xen/domctl.h>
#include <xen/io/xs_wire.h>
#include <xen/sys/privcmd.h>
""",
    "tmem": """
#define __XEN_INTERFACE_VERSION__ 0x00040600
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <xen/xen.h>
#include <xen/tmem.h>
""",
}


def member_paths(ctype: Any, prefix: str = "") -> Iterator[tuple[str, int, int]]:
    """(member path, offset, size) for every member of a cffi struct, descending into nested
    structs and unions (arrays are compared whole)."""
    for name, field in ctype.fields:
        path = f"{prefix}{name}"
        yield path, field.offset, ffi.sizeof(field.type)
        if field.type.kind in ("struct", "union"):
            for sub, off, size in member_paths(field.type, path + "."):
                yield sub, field.offset + off, size


def expected_layout() -> dict[str, list[tuple[str, str, int, int]]]:
    """Per compilation unit: (key, C expression, our value) lines to compare."""
    units: dict[str, list[tuple[str, str, int, int]]] = {"tools": [], "tmem": []}
    for ours, theirs, unit in STRUCTS:
        ctype = ffi.typeof(f"struct {ours}")
        units[unit].append((f"sizeof {ours}", f"sizeof(struct {theirs})", ffi.sizeof(ctype), 0))
        for path, off, size in member_paths(ctype):
            units[unit].append(
                (f"{ours}.{path} offset", f"offsetof(struct {theirs}, {path})", off, 0)
            )
            units[unit].append(
                (f"{ours}.{path} size", f"sizeof(((struct {theirs} *)0)->{path})", size, 0)
            )
    for ours, theirs, unit in CONSTANTS:
        units[unit].append((ours, f"(unsigned long long)({theirs})", int(getattr(lib, ours)), 0))
    return units


def compile_and_run(tmp_path: Path, unit: str, lines: list[tuple[str, str, int, int]]) -> list[int]:
    body = "\n".join(
        f'    printf("%llu\\n", (unsigned long long)({expr}));' for _, expr, _, _ in lines
    )
    src = tmp_path / f"layout_{unit}.c"
    src.write_text(PRELUDE[unit] + "\nint main(void)\n{\n" + body + "\n    return 0;\n}\n")
    exe = tmp_path / f"layout_{unit}"
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return [int(v) for v in out.split()]


def test_headers_are_installed() -> None:
    """CI installs libxen-dev; elsewhere a missing header only skips the comparison."""
    if not XEN_INCLUDE.exists():
        if os.environ.get("CI"):
            pytest.fail("libxen-dev headers missing in CI: .ci/run must apt-get install libxen-dev")
        pytest.skip("Xen headers not installed (apt-get install libxen-dev)")
    assert shutil.which(os.environ.get("CC", "cc")), "a C compiler is needed for the layout test"


@pytest.mark.parametrize("unit", ["tools", "tmem"])
def test_layout_matches_xen_headers(tmp_path: Path, unit: str) -> None:
    if not XEN_INCLUDE.exists():
        pytest.skip("Xen headers not installed (apt-get install libxen-dev)")
    lines = expected_layout()[unit]
    assert lines, "nothing to compare"
    actual = compile_and_run(tmp_path, unit, lines)
    wrong = [
        f"{key}: ours {ours}, Xen's {theirs}"
        for (key, _, ours, _), theirs in zip(lines, actual)
        if ours != theirs
    ]
    assert len(actual) == len(lines)
    assert wrong == []


def test_reference_sizes() -> None:
    """The sizes reference section 0-7 measured on Xen 4.17 headers."""
    sizes = {
        "ga_privcmd_hypercall": 48,
        "ga_xen_vnuma_topology_info": 40,
        "ga_xen_vmemrange": 24,
        "ga_xsd_sockmsg": 16,
        "ga_tmem_op": 56,
        "ga_xen_sysctl": 136,
        "ga_xen_sysctl_numainfo": 24,
        "ga_xen_sysctl_pcitopoinfo": 24,
        "ga_xen_sysctl_physinfo": 112,
        "ga_xen_domctl_getvcpuinfo": 24,
        "ga_xenctl_bitmap": 16,
        "ga_xen_domctl_vcpuaffinity": 40,
        "ga_xen_domctl": 144,
    }
    assert {name: ffi.sizeof(f"struct {name}") for name in sizes} == sizes
