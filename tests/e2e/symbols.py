"""A dead guest's RIP as a kernel symbol, from ``xl dmesg`` and Dom0's ``/proc/kallsyms``.

When an HVM vCPU triple-faults, Xen dumps its state (``*** Dumping Dom1 vcpu#0 state: ***``, then
``RIP:    0010:[<ffffffff819d32b5>]``). Debian's kernel packages ship no real System.map (a
one-line placeholder: "The real System.map is in the linux-image-<version>-dbg package"), but the
guests boot with ``nokaslr`` and Dom0 runs the same kernel build as the default guest kernel, as a
PV domain (never relocated): its ``/proc/kallsyms`` has the guest's addresses. So a RIP of a guest
on the default kernel is resolved in Dom0 (:func:`resolve_script`, awk comparing the 16-digit hex
addresses as strings), offline and in a second: ``read_pci_config+0x15``. A guest on another
kernel (a variant of versions.GUEST_KERNELS) keeps its bare RIP. A file and line need the ``-dbg``
package (850 MB to 1 GB per kernel), which the bed does not fetch: ``addr2line -f -i -e
/usr/lib/debug/boot/vmlinux-<abi> <RIP>`` on it by hand (tests/e2e/README.md).
"""

from __future__ import annotations

import re

_DUMP = re.compile(r"Dumping Dom(\d+) vcpu#(\d+) state")
_RIP = re.compile(r"RIP:\s+[0-9a-fA-F]{4}:\[<([0-9a-fA-F]{16})>\]")
#: The kernel's text mapping starts here (no KASLR): a lower RIP is not in the kernel's text.
KERNEL_TEXT = 0xFFFFFFFF80000000


def dead_rips(dmesg: str, domid: int) -> list[tuple[int, int]]:
    """(vCPU, RIP) of every state dump of domain ``domid`` in ``xl dmesg``'s text, in order (the
    RIP is looked for in the 6 lines after the dump's header)."""
    lines = dmesg.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = _DUMP.search(line)
        if not m or int(m.group(1)) != domid:
            continue
        for nxt in lines[i + 1:i + 7]:
            r = _RIP.search(nxt)
            if r:
                out.append((int(m.group(2)), int(r.group(1), 16)))
                break
    return out


def resolve_script(rips: list[int], kallsyms: str = "/proc/kallsyms") -> str:
    """A shell script (for Dom0's busybox) printing ``RIP START SYMBOL`` for each kernel RIP: the
    text symbol at or below it."""
    addrs = sorted({f"{r:016x}" for r in rips if r >= KERNEL_TEXT})
    return "; ".join(
        f"awk -v a={a} '($2==\"t\"||$2==\"T\"||$2==\"w\"||$2==\"W\") && $1<=a && $1>=b "
        f"{{b=$1; n=$3}} END {{print a, b, n}}' {kallsyms}"
        for a in addrs
    )


def parse_resolved(out: str) -> dict[int, str]:
    """RIP -> ``symbol+0xoffset`` from :func:`resolve_script`'s output (lines it could not resolve,
    e.g. with hidden addresses, are left out)."""
    got = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        try:
            rip, start = int(fields[0], 16), int(fields[1], 16)
        except ValueError:
            continue
        if start and 0 <= rip - start < 1 << 20:
            got[rip] = f"{fields[2]}+{rip - start:#x}"
    return got


def describe(found: list[tuple[int, int]], domid: int, symbols: dict[int, str],
             source: str) -> list[str]:
    """One line per dump: ``d1v0 RIP ffffffff819d32b5 = read_pci_config+0x15 (Dom0's kallsyms,
    kernel 6.1.0-56-amd64)``, or the bare RIP when it has no symbol."""
    out = []
    for vcpu, rip in found:
        sym = symbols.get(rip)
        out.append(f"d{domid}v{vcpu} RIP {rip:016x}" + (f" = {sym} ({source})" if sym else ""))
    return out
