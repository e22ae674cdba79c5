"""xl.cfg ``vnuma=`` specs for the tests (reference section 2.4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VNode:
    size_mb: int
    #: Empty for a memory-only vnode (xl then has no ``vcpus=`` for it; libxl only checks that
    #: every vCPU is in some vnode).
    vcpus: list[int]
    distances: list[int]
    pnode: int = 0


def cpus_text(cpus: list[int]) -> str:
    if len(cpus) > 1 and cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(str(c) for c in cpus)


def xl_vnuma(nodes: list[VNode]) -> str:
    """The xl.cfg list, e.g. ``[ ["pnode=0","size=512","vcpus=0-1","vdistances=10,20"], ... ]``."""
    specs = []
    for v in nodes:
        fields = [f"pnode={v.pnode}", f"size={v.size_mb}"]
        if v.vcpus:
            fields.append(f"vcpus={cpus_text(v.vcpus)}")
        fields.append("vdistances=" + ",".join(str(d) for d in v.distances))
        specs.append("[" + ",".join(f'"{f}"' for f in fields) + "]")
    return "[ " + ", ".join(specs) + " ]"
