"""A dead guest's RIP as a kernel symbol (tests/e2e/symbols.py), checked without a bed: Xen's
vCPU state dump as xl dmesg prints it, and the Dom0 script run by the host's awk (busybox's when
it is there, as in Dom0) on a kallsyms excerpt."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e import symbols

# The shape of Xen 4.17's dump of a triple-faulted HVM vCPU (issue 13's first death).
DMESG = """\
(XEN) d1v0 Triple fault - invoking HVM shutdown action 0
(XEN) *** Dumping Dom1 vcpu#0 state: ***
(XEN) ----[ Xen-4.17.7  x86_64  debug=n  Not tainted ]----
(XEN) CPU:    1
(XEN) RIP:    0010:[<ffffffff819d32b5>]
(XEN) RFLAGS: 0000000000000046   CONTEXT: hvm guest (d1v0)
(XEN) rax: 0000000080000000   rbx: 0000000000000000   rcx: 0000000000000000
(XEN) rdx: 0000000000000cfc   rsi: 0000000000000000   rdi: 0000000000000000
(XEN) *** Dumping Dom2 vcpu#3 state: ***
(XEN) ----[ Xen-4.17.7  x86_64  debug=n  Not tainted ]----
(XEN) CPU:    2
(XEN) RIP:    0010:[<ffffffff8107ee05>]
(XEN) *** Dumping Dom1 vcpu#1 state: ***
(XEN) ----[ Xen-4.17.7  x86_64  debug=n  Not tainted ]----
(XEN) CPU:    3
(XEN) RIP:    0033:[<00007f0011223344>]
"""

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff8107edc0 t pvclock_clocksource_read
ffffffff8107ef00 T pvclock_read_wallclock
ffffffff819d32a0 t read_pci_config
ffffffff819d3300 T read_pci_config_byte
ffffffff82000000 D some_data
0000000000000000 A fixed_percpu_data
"""


def test_the_rips_of_one_domains_dumps_are_found() -> None:
    assert symbols.dead_rips(DMESG, 1) == [(0, 0xFFFFFFFF819D32B5), (1, 0x00007F0011223344)]
    assert symbols.dead_rips(DMESG, 2) == [(3, 0xFFFFFFFF8107EE05)]
    assert symbols.dead_rips(DMESG, 3) == []


def run_script(script: str) -> str:
    awk = shutil.which("busybox")
    if awk is not None:
        script = script.replace("awk ", f"{awk} awk ")
    elif shutil.which("awk") is None:
        pytest.skip("no awk on this host")
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                          timeout=30).stdout


def test_dom0s_script_resolves_kernel_rips_and_skips_user_ones(tmp_path: Path) -> None:
    ks = tmp_path / "kallsyms"
    ks.write_text(KALLSYMS)
    rips = [rip for _v, rip in symbols.dead_rips(DMESG, 1) + symbols.dead_rips(DMESG, 2)]
    script = symbols.resolve_script(rips, kallsyms=str(ks))
    assert "00007f0011223344" not in script  # a user-space RIP is not the kernel's
    got = symbols.parse_resolved(run_script(script))
    assert got == {
        0xFFFFFFFF819D32B5: "read_pci_config+0x15",
        0xFFFFFFFF8107EE05: "pvclock_clocksource_read+0x45",
    }


def test_each_dump_is_one_line_with_its_symbol_or_bare() -> None:
    found = symbols.dead_rips(DMESG, 1)
    lines = symbols.describe(found, 1, {0xFFFFFFFF819D32B5: "read_pci_config+0x15"},
                             "Dom0's kallsyms, kernel 6.1.0-56-amd64")
    assert lines == [
        "d1v0 RIP ffffffff819d32b5 = read_pci_config+0x15 (Dom0's kallsyms, kernel 6.1.0-56-amd64)",
        "d1v1 RIP 00007f0011223344",
    ]


def test_hidden_or_far_addresses_are_not_resolved() -> None:
    # kptr_restrict shows zeros; a RIP 1 MiB past the last symbol is no function of it.
    assert symbols.parse_resolved("ffffffff819d32b5 0000000000000000 read_pci_config\n") == {}
    assert symbols.parse_resolved("ffffffff819d32b5 ffffffff81000000 _stext\n") == {}
    assert symbols.parse_resolved("ffffffff819d32b5  \n") == {}
