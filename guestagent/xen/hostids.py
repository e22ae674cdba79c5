"""Host identifiers shared by the sysctl reader (Dom0) and the Dom0 hints' schema: a PCI address
and the bound on node numbers.

They live apart from :mod:`guestagent.xen.sysctl` because every guest reads the Dom0 hints
(:mod:`guestagent.dom0.schema`) and has no use for the sysctl wrappers themselves (about 0.15 MiB
of the idle daemon; benchmarks/README.md, "What each MiB is").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guestagent.errors import InputError

#: Bound on what a sane hypervisor reports as a node number; larger is treated as corrupt.
MAX_NODES = 256  # Xen's MAX_NUMNODES is at most 64 on x86 (CONFIG_NR_NUMA_NODES)

_BDF_RE = re.compile(r"([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])")


@dataclass(frozen=True, order=True)
class PciAddress:
    """A PCI function: segment, bus, device (slot), function."""

    seg: int
    bus: int
    dev: int
    func: int

    def __post_init__(self) -> None:
        if not (
            0 <= self.seg <= 0xFFFF
            and 0 <= self.bus <= 0xFF
            and 0 <= self.dev <= 0x1F
            and 0 <= self.func <= 7
        ):
            raise ValueError(
                f"PCI address out of range: {self.seg}:{self.bus}:{self.dev}.{self.func}"
            )

    @property
    def devfn(self) -> int:
        return (self.dev << 3) | self.func

    def __str__(self) -> str:
        return f"{self.seg:04x}:{self.bus:02x}:{self.dev:02x}.{self.func:x}"

    @classmethod
    def parse(cls, text: str, source: str = "PCI address") -> PciAddress:
        """``DDDD:BB:DD.F`` exactly as Linux sysfs and libxl write it (lower-case hex)."""
        match = _BDF_RE.fullmatch(text) if len(text) == 12 else None
        if match is None:
            raise InputError(source, "expected a PCI address DDDD:BB:DD.F", text)
        seg, bus, dev, func = (int(g, 16) for g in match.groups())
        if dev > 0x1F:
            raise InputError(source, "PCI device number above 0x1f", text)
        return cls(seg, bus, dev, func)
